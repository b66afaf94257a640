"""Classification heads used for metric-learning training (spec §2.4).

Every head has the signature ``head(features [N, D], labels [N] or [N, 1] or None) -> logits [N, class_num]``.
:class:`FC` ignores the labels. The margin heads (:class:`ArcMargin`, :class:`CosMargin`, :class:`CircleMargin`)
apply their margin only in training with labels; in eval, or without labels, they return ``scale * cos`` — the
scaled cosine logits — so eval losses and argmax predictions are on the same scale as training.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn

__all__ = ["FC", "ArcMargin", "CosMargin", "CircleMargin"]


class FC(nn.Layer):
    """Linear classifier ``features @ W`` with ``W`` of Paddle layout ``[embedding_size, class_num]``.

    PP-ShiTuV2 uses no bias and Normal(0, 0.001) init (spec §1).
    """

    def __init__(self, embedding_size: int, class_num: int, bias: bool = False, init_std: float = 0.001) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.class_num = class_num
        self.fc = nn.Linear(embedding_size, class_num,
                            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, init_std)),
                            bias_attr=None if bias else False)

    def forward(self, features: paddle.Tensor, labels: paddle.Tensor | None = None) -> paddle.Tensor:
        return self.fc(features)


class _CosineHead(nn.Layer):
    """Shared part of the margin heads: a ``[embedding_size, class_num]`` weight and cosine logits."""

    def __init__(self, embedding_size: int, class_num: int, margin: float, scale: float) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.class_num = class_num
        self.margin = margin
        self.scale = scale
        self.weight = self.create_parameter([embedding_size, class_num],
                                            attr=paddle.ParamAttr(initializer=nn.initializer.XavierNormal()))

    def cosine(self, features: paddle.Tensor) -> paddle.Tensor:
        """Cosine similarity between each feature and each class weight: ``[N, class_num]``."""
        return paddle.matmul(F.normalize(features, axis=1), F.normalize(self.weight, axis=0))

    def one_hot(self, labels: paddle.Tensor) -> paddle.Tensor:
        return F.one_hot(labels.reshape([-1]).astype("int64"), self.class_num)

    def forward(self, features: paddle.Tensor, labels: paddle.Tensor | None = None) -> paddle.Tensor:
        cos = self.cosine(features)
        if not self.training or labels is None:
            return self.scale * cos
        return self.scale * self.apply_margin(cos, self.one_hot(labels))

    def apply_margin(self, cos: paddle.Tensor, one_hot: paddle.Tensor) -> paddle.Tensor:
        """Training logits before scaling from ``cos`` ``[N, class_num]`` and the float32 one-hot labels."""
        raise NotImplementedError


class ArcMargin(_CosineHead):
    """ArcFace: the target logit becomes ``cos(θ + m)`` (Deng et al. 2019), scaled by ``scale``.

    As in PaddleClas, when ``θ + m`` would pass π the target logit falls back to ``cos θ - m·sin m`` (or to ``cos θ``
    with ``easy_margin`` when ``cos θ <= 0``), keeping it monotonic.
    """

    def __init__(self, embedding_size: int, class_num: int, margin: float = 0.5, scale: float = 80.0,
                 easy_margin: bool = False) -> None:
        super().__init__(embedding_size, class_num, margin, scale)
        self.easy_margin = easy_margin

    def apply_margin(self, cos: paddle.Tensor, one_hot: paddle.Tensor) -> paddle.Tensor:
        sin = paddle.sqrt(1.0 - paddle.square(cos) + 1e-6)
        phi = cos * math.cos(self.margin) - sin * math.sin(self.margin)
        if self.easy_margin:
            phi = paddle.where(cos > 0, phi, cos)
        else:
            phi = paddle.where(cos > -math.cos(self.margin), phi, cos - math.sin(self.margin) * self.margin)
        return one_hot * phi + (1.0 - one_hot) * cos


class CosMargin(_CosineHead):
    """CosFace / AM-softmax: the target logit becomes ``cos θ - m`` (Wang et al. 2018), scaled by ``scale``."""

    def __init__(self, embedding_size: int, class_num: int, margin: float = 0.15, scale: float = 64.0) -> None:
        super().__init__(embedding_size, class_num, margin, scale)

    def apply_margin(self, cos: paddle.Tensor, one_hot: paddle.Tensor) -> paddle.Tensor:
        return cos - self.margin * one_hot


class CircleMargin(_CosineHead):
    """Circle loss logits (Sun et al. 2020) with self-paced weights ``α_p = [1 + m - s]+``, ``α_n = [s + m]+``.

    Target logits become ``α_p (s - (1 - m))``, the others ``α_n (s - m)``; the weights are not differentiated.
    """

    def __init__(self, embedding_size: int, class_num: int, margin: float = 0.25, scale: float = 256.0) -> None:
        super().__init__(embedding_size, class_num, margin, scale)

    def apply_margin(self, cos: paddle.Tensor, one_hot: paddle.Tensor) -> paddle.Tensor:
        alpha_p = paddle.clip(-cos.detach() + 1 + self.margin, min=0.0)
        alpha_n = paddle.clip(cos.detach() + self.margin, min=0.0)
        logits_p = alpha_p * (cos - (1 - self.margin))
        logits_n = alpha_n * (cos - self.margin)
        return logits_p * one_hot + logits_n * (1.0 - one_hot)
