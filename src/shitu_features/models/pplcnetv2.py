"""PP-LCNetV2 backbone and its PP-ShiTuV2 variant.

Reimplements ``ppcls/arch/backbone/legendary_models/pp_lcnet_v2.py`` and the ``PPLCNetV2_base_ShiTu`` variant
(PaddleClas develop d178931) from ``../shared/spec/ppshitu_v2.md`` §2–§4. The reference builds the variant by
layer surgery after construction; here the differences are constructor arguments (``last_stride``,
``last_conv_bias``, ``last_act``, ``with_fc``), so weights load once into the final structure.
"""

from __future__ import annotations

from typing import Sequence

import paddle
import paddle.nn.functional as F
from paddle import nn

from shitu_features.models.layers import ConvBNLayer, SEModule, make_divisible

__all__ = ["RepDepthwiseSeparable", "PPLCNetV2", "pplcnetv2_base", "pplcnetv2_base_shitu", "STAGE_SPECS"]

# Per stage: (in_channels, dw_kernel, split_pw, use_rep, use_se, use_shortcut); out = 2 * in. (spec §2.2)
STAGE_SPECS: tuple[tuple[int, int, bool, bool, bool, bool], ...] = (
    (64, 3, False, False, False, False),
    (128, 3, False, False, False, False),
    (256, 5, True, True, True, False),
    (512, 5, False, True, False, True),
)


class RepDepthwiseSeparable(nn.Layer):
    """Depthwise-separable block with optional re-parameterizable multi-branch depthwise conv (spec §2.1, §3).

    With ``use_rep`` the depthwise part is a sum of depthwise ConvBN branches with kernels ``dw_size, dw_size-2, ...,
    1`` (the 1x1 branch only at stride 1), followed by ReLU. :meth:`reparameterize` folds every branch's BN into
    its kernel, zero-pads to ``dw_size`` and sums them into ``dw_conv`` (a biased depthwise conv), after which the
    forward uses ``dw_conv`` alone. ``dw_conv`` exists in both forms, as in the reference state dict, and the
    branches are kept, so the state-dict keys never change.

    Shape:
        ``[N, in_channels, H, W]`` -> ``[N, out_channels, ceil(H/stride), ceil(W/stride)]``, float32.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dw_size: int = 3, split_pw: bool = False,
                 use_rep: bool = False, use_se: bool = False, use_shortcut: bool = False) -> None:
        super().__init__()
        self.is_repped = False
        self.dw_size = dw_size
        self.split_pw = split_pw
        self.use_rep = use_rep
        self.use_se = use_se
        self.use_shortcut = use_shortcut and stride == 1 and in_channels == out_channels
        if use_rep:
            self.dw_conv_list = nn.LayerList([
                ConvBNLayer(in_channels, in_channels, k, stride, groups=in_channels, use_act=False)
                for k in range(dw_size, 0, -2) if not (k == 1 and stride != 1)
            ])
            # The fused inference conv; its stored value is stale until reparameterize() (spec §4).
            self.dw_conv = nn.Conv2D(in_channels, in_channels, dw_size, stride=stride, padding=(dw_size - 1) // 2,
                                     groups=in_channels)
        else:
            # Plain blocks keep the ReLU inside the ConvBN; self.act is unused on this path (spec §10).
            self.dw_conv = ConvBNLayer(in_channels, in_channels, dw_size, stride, groups=in_channels)
        self.act = nn.ReLU()
        if use_se:
            self.se = SEModule(in_channels)
        if split_pw:
            self.pw_conv_1 = ConvBNLayer(in_channels, out_channels // 2, 1, 1)
            self.pw_conv_2 = ConvBNLayer(out_channels // 2, out_channels, 1, 1)
        else:
            self.pw_conv = ConvBNLayer(in_channels, out_channels, 1, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        identity = x
        if not self.use_rep:
            x = self.dw_conv(x)
        elif self.is_repped:
            x = self.act(self.dw_conv(x))
        else:
            y = self.dw_conv_list[0](x)
            for branch in self.dw_conv_list[1:]:
                y = y + branch(x)
            x = self.act(y)
        if self.use_se:
            x = self.se(x)
        x = self.pw_conv_2(self.pw_conv_1(x)) if self.split_pw else self.pw_conv(x)
        # The pointwise output is already ReLU'd; no activation after the residual add (spec §2.1).
        return x + identity if self.use_shortcut else x

    @paddle.no_grad()
    def reparameterize(self) -> None:
        """Fuse the branches into ``dw_conv`` in place (exact up to fp32 rounding). Idempotent; no-op without rep."""
        if not self.use_rep or self.is_repped:
            return
        kernel_sum: paddle.Tensor | int = 0
        bias_sum: paddle.Tensor | int = 0
        for branch in self.dw_conv_list:
            bn = branch.bn
            std = (bn._variance + bn._epsilon).sqrt()
            t = (bn.weight / std).reshape((-1, 1, 1, 1))
            kernel = branch.conv.weight * t
            pad = (self.dw_size - kernel.shape[2]) // 2
            if pad:
                kernel = F.pad(kernel, [pad, pad, pad, pad])
            kernel_sum = kernel_sum + kernel
            bias_sum = bias_sum + (bn.bias - bn._mean * bn.weight / std)
        self.dw_conv.weight.set_value(kernel_sum)
        self.dw_conv.bias.set_value(bias_sum)
        self.is_repped = True


class PPLCNetV2(nn.Layer):
    """PP-LCNetV2 backbone (ImageNet classifier form by default).

    Args:
        scale: width multiplier (1.0 for "base").
        depths: blocks per stage.
        class_num: classifier classes (only with ``with_fc``).
        dropout_prob: dropout before the classifier, ``downscale_in_infer`` mode: at eval the activations are
            multiplied by ``1 - p`` (spec §2.2: the ×0.8 that is easy to miss).
        use_last_conv: add the 1x1 ``last_conv`` expansion after global pooling.
        class_expand: output channels of ``last_conv`` (1280 for ImageNet, 512 for ShiTu).
        last_stride: stride of the first block of the last stage (2 for ImageNet, 1 for ShiTu).
        last_conv_bias: give ``last_conv`` a bias (ShiTu).
        last_act: ReLU after ``last_conv`` (ImageNet) or none (ShiTu).
        with_fc: keep the ``fc`` classifier (ImageNet) or stop at ``flatten`` (ShiTu's BackboneStopLayer).

    Shape:
        ``[N, 3, H, W]`` float32 -> ``[N, class_num]`` with ``with_fc`` else ``[N, class_expand]``.
    """

    def __init__(self, scale: float = 1.0, depths: Sequence[int] = (2, 2, 6, 2), class_num: int = 1000,
                 dropout_prob: float = 0.0, use_last_conv: bool = True, class_expand: int = 1280,
                 last_stride: int = 2, last_conv_bias: bool = False, last_act: bool = True,
                 with_fc: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.class_expand = class_expand
        self.use_last_conv = use_last_conv
        stem_out = make_divisible(32 * scale)
        self.stem = nn.Sequential(
            ConvBNLayer(3, stem_out, 3, stride=2),
            RepDepthwiseSeparable(stem_out, make_divisible(64 * scale), stride=1, dw_size=3),
        )
        self.stages = nn.LayerList()
        for stage_idx, (channels, kernel, split_pw, use_rep, use_se, use_shortcut) in enumerate(STAGE_SPECS):
            first_stride = last_stride if stage_idx == len(STAGE_SPECS) - 1 else 2
            self.stages.append(nn.Sequential(*[
                RepDepthwiseSeparable(
                    make_divisible((channels if i == 0 else channels * 2) * scale),
                    make_divisible(channels * 2 * scale),
                    stride=first_stride if i == 0 else 1,
                    dw_size=kernel, split_pw=split_pw, use_rep=use_rep, use_se=use_se, use_shortcut=use_shortcut,
                ) for i in range(depths[stage_idx])
            ]))
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        last_channels = make_divisible(STAGE_SPECS[-1][0] * 2 * scale)
        if use_last_conv:
            self.last_conv = nn.Conv2D(last_channels, class_expand, 1, bias_attr=None if last_conv_bias else False)
            self.act = nn.ReLU() if last_act else nn.Identity()
            self.dropout = nn.Dropout(p=dropout_prob, mode="downscale_in_infer")
        self.flatten = nn.Flatten(start_axis=1, stop_axis=-1)
        self.fc = nn.Linear(class_expand if use_last_conv else last_channels, class_num) if with_fc else None

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """Stem and stages: ``[N, 3, H, W]`` -> ``[N, 1024*scale, H/16 or H/32, ...]``."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.avg_pool(self.forward_features(x))
        if self.use_last_conv:
            x = self.dropout(self.act(self.last_conv(x)))
        x = self.flatten(x)
        return self.fc(x) if self.fc is not None else x


def pplcnetv2_base(class_num: int = 1000, dropout_prob: float = 0.2) -> PPLCNetV2:
    """PP-LCNetV2_base, the ImageNet classifier (loads ``PPLCNetV2_base[_ssld]_pretrained.pdparams``)."""
    return PPLCNetV2(scale=1.0, depths=(2, 2, 6, 2), class_num=class_num, dropout_prob=dropout_prob)


def pplcnetv2_base_shitu(class_expand: int = 512, dropout_prob: float = 0.2) -> PPLCNetV2:
    """PPLCNetV2_base_ShiTu: the PP-ShiTuV2 backbone (spec §2.3).

    Differences from :func:`pplcnetv2_base`: stage-4 block 0 at stride 1 (which gives it the extra 1x1 rep
    branch), ``last_conv`` with bias and no ReLU, ``class_expand`` = embedding width, and no ``fc``.

    Shape:
        ``[N, 3, H, W]`` float32 -> ``[N, class_expand]`` float32.
    """
    return PPLCNetV2(scale=1.0, depths=(2, 2, 6, 2), dropout_prob=dropout_prob, class_expand=class_expand,
                     last_stride=1, last_conv_bias=True, last_act=False, with_fc=False)
