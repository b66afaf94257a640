"""Models: the PP-LCNetV2 backbone, the BN neck, classification heads and the recognition model.

Build the PP-ShiTuV2 model with :func:`build_rec_model`; load PaddleClas checkpoints with :func:`load_checkpoint`.
The registries below are plain dicts: name -> constructor.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping

from paddle import nn

from shitu_features.errors import UnknownModelError
from shitu_features.models.checkpoint import LoadReport, load_checkpoint
from shitu_features.models.heads import FC, ArcMargin, CircleMargin, CosMargin
from shitu_features.models.layers import ConvBNLayer, SEModule, make_divisible
from shitu_features.models.necks import BNNeck
from shitu_features.models.pplcnetv2 import PPLCNetV2, RepDepthwiseSeparable, pplcnetv2_base, pplcnetv2_base_shitu
from shitu_features.models.rec_model import RecModel

__all__ = [
    "BACKBONES", "HEADS", "NECKS",
    "ConvBNLayer", "SEModule", "make_divisible", "RepDepthwiseSeparable", "PPLCNetV2",
    "pplcnetv2_base", "pplcnetv2_base_shitu", "BNNeck", "FC", "ArcMargin", "CosMargin", "CircleMargin",
    "RecModel", "build_rec_model", "list_models", "LoadReport", "load_checkpoint",
]

#: Backbone constructors by PaddleClas name. The ShiTu variant takes ``class_expand`` (the embedding width).
BACKBONES: Dict[str, Callable[..., nn.Layer]] = {
    "PPLCNetV2_base": pplcnetv2_base,
    "PPLCNetV2_base_ShiTu": pplcnetv2_base_shitu,
}
#: Head classes by PaddleClas name; each is ``Head(embedding_size, class_num, **kwargs)``.
HEADS: Dict[str, Callable[..., nn.Layer]] = {
    "FC": FC,
    "ArcMargin": ArcMargin,
    "CosMargin": CosMargin,
    "CircleMargin": CircleMargin,
}
#: Neck classes by PaddleClas name.
NECKS: Dict[str, Callable[..., nn.Layer]] = {"BNNeck": BNNeck}


def _lookup(registry: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in registry:
        import difflib

        close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownModelError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}.{hint}")
    return registry[name]


def list_models() -> list[str]:
    """Names of the backbones :func:`build_rec_model` can build."""
    return sorted(BACKBONES)


def build_rec_model(class_num: int | None = None, *, backbone: str = "PPLCNetV2_base_ShiTu",
                    embedding_size: int = 512, neck: str | None = "BNNeck", head: str = "FC",
                    head_kwargs: Mapping[str, Any] | None = None, dropout_prob: float = 0.2) -> RecModel:
    """Build the PP-ShiTuV2 recognition model (defaults) or a variant of it.

    Args:
        class_num: number of training classes for the head; ``None`` builds no head (embedding only, as exported).
            The official checkpoint was trained with 192,612 classes.
        backbone: a key of :data:`BACKBONES`.
        embedding_size: the embedding width (``class_expand`` of the ShiTu backbone; 512 for PP-ShiTuV2).
        neck: a key of :data:`NECKS`, or ``None`` for no neck (features = backbone output).
        head: a key of :data:`HEADS` (used only with ``class_num``).
        head_kwargs: extra arguments of the head (e.g. ``margin``, ``scale``).
        dropout_prob: dropout before the embedding (0.2; at eval the output is scaled by 0.8, spec §2.2).

    Returns:
        A :class:`RecModel` in train mode; its state-dict keys equal PaddleClas's (``../shared/reference/model/keys.txt``).

    Example:
        >>> model = build_rec_model(class_num=100)
        >>> out = model(paddle.randn([2, 3, 224, 224]))   # out["features"]: [2, 512] float32
    """
    make_backbone = _lookup(BACKBONES, backbone, "backbone")
    if backbone == "PPLCNetV2_base_ShiTu":
        net = make_backbone(class_expand=embedding_size, dropout_prob=dropout_prob)
    else:
        net = make_backbone(class_num=embedding_size, dropout_prob=dropout_prob)
    neck_layer = _lookup(NECKS, neck, "neck")(embedding_size) if neck is not None else None
    head_layer = None
    if class_num is not None:
        head_layer = _lookup(HEADS, head, "head")(embedding_size, class_num, **dict(head_kwargs or {}))
    return RecModel(net, neck_layer, head_layer)
