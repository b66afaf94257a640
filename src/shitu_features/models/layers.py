"""Leaf building blocks of PP-LCNetV2 (spec §2.1).

Attribute names are the PaddleClas parameter names (``conv``, ``bn``, ``conv1``...), so state dicts load strictly.
"""

from __future__ import annotations

import paddle
from paddle import nn
from paddle.nn.initializer import KaimingNormal
from paddle.regularizer import L2Decay

__all__ = ["ConvBNLayer", "SEModule", "make_divisible"]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going down by more than 10%."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class ConvBNLayer(nn.Layer):
    """Conv2D (no bias, "same" padding) -> BatchNorm2D -> optional ReLU.

    The conv uses KaimingNormal init; BN γ/β carry ``L2Decay(0.0)``, so a global L2 regularizer skips them
    (spec §7.3). BN momentum 0.9 / eps 1e-5 are Paddle's defaults.

    Shape:
        ``[N, in_channels, H, W]`` -> ``[N, out_channels, ceil(H/stride), ceil(W/stride)]``, float32.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 use_act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2D(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                              groups=groups, weight_attr=paddle.ParamAttr(initializer=KaimingNormal()),
                              bias_attr=False)
        self.bn = nn.BatchNorm2D(out_channels, weight_attr=paddle.ParamAttr(regularizer=L2Decay(0.0)),
                                 bias_attr=paddle.ParamAttr(regularizer=L2Decay(0.0)))
        self.use_act = use_act
        self.act = nn.ReLU() if use_act else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class SEModule(nn.Layer):
    """Squeeze-and-excitation with reduction 4 and a true Sigmoid gate.

    The reference names the gate ``hardsigmoid`` but it is ``nn.Sigmoid`` (spec §2.1, §10); it has no parameters,
    so only the numerics matter.

    Shape:
        ``[N, C, H, W]`` -> ``[N, C, H, W]``.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.conv1 = nn.Conv2D(channels, channels // reduction, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2D(channels // reduction, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        gate = self.sigmoid(self.conv2(self.relu(self.conv1(self.avg_pool(x)))))
        return x * gate
