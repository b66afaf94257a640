from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from shitu_features.models import HEADS, FC, ArcMargin, CircleMargin, CosMargin


def _cos(head, feats: paddle.Tensor) -> np.ndarray:
    f = feats.numpy() / np.linalg.norm(feats.numpy(), axis=1, keepdims=True)
    w = head.weight.numpy() / np.linalg.norm(head.weight.numpy(), axis=0, keepdims=True)
    return f @ w


@pytest.mark.parametrize("cls", [ArcMargin, CosMargin, CircleMargin])
def test_margin_heads_eval_is_scaled_cosine(cls) -> None:
    paddle.seed(1)
    head = cls(16, 5)
    head.eval()
    x = paddle.randn([3, 16])
    np.testing.assert_allclose(head(x, paddle.to_tensor([0, 1, 2])).numpy(), head.scale * _cos(head, x), atol=1e-4)


def test_margin_heads_penalise_only_the_target_in_training() -> None:
    paddle.seed(2)
    x, labels = paddle.randn([4, 16]), paddle.to_tensor([[0], [1], [2], [3]])
    for head in (ArcMargin(16, 5, margin=0.5, scale=10.0), CosMargin(16, 5, margin=0.2, scale=10.0)):
        head.train()
        cos = _cos(head, x)
        logits = head(x, labels).numpy() / head.scale
        target = np.eye(5, dtype=bool)[[0, 1, 2, 3]]
        np.testing.assert_allclose(logits[~target], cos[~target], atol=1e-5)
        if isinstance(head, CosMargin):
            np.testing.assert_allclose(logits[target], cos[target] - 0.2, atol=1e-5)
        else:
            theta = np.arccos(np.clip(cos[target], -1, 1))
            expected = np.where(cos[target] > -math.cos(0.5), np.cos(theta + 0.5), cos[target] - math.sin(0.5) * 0.5)
            np.testing.assert_allclose(logits[target], expected, atol=1e-3)


def test_circle_margin_training_formula() -> None:
    paddle.seed(3)
    head = CircleMargin(8, 3, margin=0.25, scale=2.0)
    head.train()
    x = paddle.randn([2, 8])
    cos = _cos(head, x)
    out = head(x, paddle.to_tensor([2, 0])).numpy()
    onehot = np.eye(3)[[2, 0]]
    ap, an = np.clip(1.25 - cos, 0, None), np.clip(cos + 0.25, 0, None)
    expected = 2.0 * (ap * (cos - 0.75) * onehot + an * (cos - 0.25) * (1 - onehot))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_fc_head_layout_and_no_bias() -> None:
    head = HEADS["FC"](512, 7)
    assert isinstance(head, FC)
    assert list(head.fc.weight.shape) == [512, 7] and head.fc.bias is None
    x = paddle.randn([2, 512])
    np.testing.assert_allclose(head(x).numpy(), x.numpy() @ head.fc.weight.numpy(), rtol=1e-5, atol=1e-6)
