"""Necks: what sits between the backbone and the embedding (spec §2.4)."""

from __future__ import annotations

import paddle
from paddle import nn

__all__ = ["BNNeck"]


class BNNeck(nn.Layer):
    """Flatten -> BatchNorm1D. Its output is the retrieval embedding (``features``).

    Args:
        num_features: embedding width (512 for PP-ShiTuV2).
        freeze_bias: keep β at 0 by giving it a learning-rate multiplier of 1e-20, as the reference does (spec §1,
            §7.3). It stays a trainable parameter on purpose: with a ``trainable=False`` bias, Paddle 3.3's batch
            norm also drops the gradient of γ.

    Shape:
        ``[N, num_features, ...]`` -> ``[N, num_features]`` float32.
    """

    def __init__(self, num_features: int = 512, freeze_bias: bool = True) -> None:
        super().__init__()
        self.feat_bn = nn.BatchNorm1D(
            num_features, momentum=0.9, epsilon=1e-5,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(1.0)),
            bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0),
                                      learning_rate=1e-20 if freeze_bias else 1.0),
        )
        self.flatten = nn.Flatten()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.feat_bn(self.flatten(x))
