from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest

from shitu_features.errors import UnknownModelError
from shitu_features.models import RecModel, build_rec_model, list_models, load_checkpoint


def test_save_load_forward_is_bit_identical(ref_model: RecModel, tmp_path: Path) -> None:
    path = tmp_path / "model.pdparams"
    paddle.save(ref_model.state_dict(), str(path))
    other = build_rec_model(class_num=100)
    load_checkpoint(other, paddle.load(str(path)))
    other.eval()
    x = paddle.randn([2, 3, 96, 96])
    a, b = ref_model(x), other(x)
    for key in ("features", "backbone", "logits"):
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_train_forward_backward_reaches_every_trainable_parameter() -> None:
    paddle.seed(0)
    model = build_rec_model(class_num=10)
    model.train()
    out = model(paddle.randn([4, 3, 64, 64]), paddle.to_tensor([0, 1, 2, 3]))
    assert out["logits"].shape == [4, 10] and out["features"].shape == [4, 512]
    loss = out["logits"].square().mean() + out["features"].square().mean()
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    # the fused dw_conv of rep blocks is unused in the branch-sum (training) form, as in the reference
    no_grad = [n for n, p in trainable if p.grad is None or not np.any(p.grad.numpy())]
    assert all(n.endswith(("dw_conv.weight", "dw_conv.bias")) and "dw_conv_list" not in n for n in no_grad), no_grad
    assert len(no_grad) == 16  # 8 rep blocks x (weight, bias)
    # frozen at 0 by a 1e-20 learning-rate multiplier (spec §1), yet gamma still gets its gradient
    assert model.neck.feat_bn.bias.optimize_attr["learning_rate"] == pytest.approx(1e-20)
    assert np.any(model.neck.feat_bn.weight.grad.numpy())


def test_train_mode_dropout_has_no_rescale_and_eval_scales_by_0_8() -> None:
    model = build_rec_model()
    model.backbone.dropout.train()
    x = paddle.ones([1, 512, 1, 1])
    y = model.backbone.dropout(x).numpy()
    assert set(np.unique(y)) <= {0.0, 1.0}
    model.backbone.dropout.eval()
    np.testing.assert_allclose(model.backbone.dropout(x).numpy(), 0.8, rtol=1e-7)


def test_embedding_only_model_and_embed_equals_features() -> None:
    model = build_rec_model()
    model.eval()
    assert model.head is None
    x = paddle.randn([1, 3, 64, 64])
    out = model(x)
    assert "logits" not in out
    np.testing.assert_array_equal(model.embed(x).numpy(), out["features"].numpy())


def test_registries() -> None:
    assert "PPLCNetV2_base_ShiTu" in list_models()
    with pytest.raises(UnknownModelError, match="PPLCNetV2_base_ShiTu"):
        build_rec_model(backbone="PPLCNetV2_base_shitu")
    with pytest.raises(KeyError):
        build_rec_model(10, head="ArcFace")


def test_imagenet_backbone_forward_shape() -> None:
    model = build_rec_model(backbone="PPLCNetV2_base", embedding_size=1000, neck=None)
    model.eval()
    assert model(paddle.randn([1, 3, 64, 64]))["features"].shape == [1, 1000]
    sd = model.backbone.state_dict()
    assert list(sd["fc.weight"].shape) == [1280, 1000]
    assert len(model.backbone.stages[3][0].dw_conv_list) == 2  # stride 2: no 1x1 branch
