"""RecModel: backbone -> neck -> head, the PaddleClas recognition model (spec §2.4)."""

from __future__ import annotations

from typing import Dict

import paddle
from paddle import nn

__all__ = ["RecModel"]


class RecModel(nn.Layer):
    """Recognition model whose forward returns the reference's output dict.

    Args:
        backbone: maps ``[N, 3, H, W]`` images to ``[N, D]`` (e.g. :func:`~shitu_features.models.pplcnetv2_base_shitu`).
        neck: optional, maps ``[N, D]`` to the embedding ``[N, E]`` (e.g. :class:`~shitu_features.models.BNNeck`).
        head: optional, ``head(features, labels)`` -> logits ``[N, class_num]``; only needed for training.

    ``forward(x, label=None)`` returns a dict, the same in train and eval (only BN / dropout behave differently):

    - ``backbone``: ``[N, D]`` float32 backbone output (eval includes dropout's ×(1-p), spec §2.2);
    - ``neck``: ``[N, E]`` the neck output (only with a neck);
    - ``features``: ``[N, E]`` the retrieval embedding (the neck output, else the backbone output), not normalised;
    - ``logits``: ``[N, class_num]`` (only with a head).
    """

    def __init__(self, backbone: nn.Layer, neck: nn.Layer | None = None, head: nn.Layer | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def forward(self, x: paddle.Tensor, label: paddle.Tensor | None = None) -> Dict[str, paddle.Tensor]:
        out: Dict[str, paddle.Tensor] = {}
        feat = self.backbone(x)
        out["backbone"] = feat
        if self.neck is not None:
            feat = self.neck(feat)
            out["neck"] = feat
        out["features"] = feat
        if self.head is not None:
            out["logits"] = self.head(feat, label)
        return out

    def embed(self, x: paddle.Tensor) -> paddle.Tensor:
        """The retrieval embedding only: ``[N, 3, H, W]`` -> ``[N, E]`` float32, not L2-normalised.

        This is what the exported inference model computes (no head).
        """
        feat = self.backbone(x)
        return self.neck(feat) if self.neck is not None else feat

    def rep_blocks(self) -> list[nn.Layer]:
        """The sub-layers that can be re-parameterized (those with ``use_rep``)."""
        return [layer for layer in self.sublayers() if getattr(layer, "use_rep", False)]

    def reparameterize(self) -> "RecModel":
        """Fuse every re-parameterizable block in place (idempotent) and return ``self``.

        The state-dict keys are unchanged (spec §4). Meant for inference: after fusing, the forward uses the fused
        ``dw_conv`` and no longer trains the branches. Loading a checkpoint with
        :func:`~shitu_features.models.load_checkpoint` un-fuses again.
        """
        for block in self.rep_blocks():
            block.reparameterize()
        return self

    @property
    def is_reparameterized(self) -> bool:
        """True when every re-parameterizable block uses its fused conv."""
        blocks = self.rep_blocks()
        return bool(blocks) and all(block.is_repped for block in blocks)
