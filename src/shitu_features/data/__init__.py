"""Data pipeline for training and evaluation: datasets, samplers, transforms and a threaded loader.

Image decoding lives in :mod:`shitu_features.data.images`. The names below are loaded on first access
(PEP 562), so importing ``shitu_features.data.images`` (the inference path) does not import the training data
pipeline, and ``shitu_features.inference.preprocess`` may import ``shitu_features.data.images`` without an
import cycle through :mod:`shitu_features.data.transforms`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from shitu_features.data.datasets import IMAGE_EXTENSIONS, ImageDataset, LabelMap, class_disjoint_split
    from shitu_features.data.loader import Batch, DataLoader, make_loader
    from shitu_features.data.samplers import PKSampler, SequentialBatchSampler
    from shitu_features.data.transforms import (
        TRANSFORMS,
        Compose,
        EvalTransform,
        NormalizeImage,
        Pad,
        RandCropImageV2,
        RandFlipImage,
        RandomRotation,
        ResizeImage,
        Transform,
        build_transforms,
        eval_transform,
        train_transform,
    )

_EXPORTS = {
    "datasets": ("IMAGE_EXTENSIONS", "ImageDataset", "LabelMap", "class_disjoint_split"),
    "loader": ("Batch", "DataLoader", "make_loader"),
    "samplers": ("PKSampler", "SequentialBatchSampler"),
    "transforms": (
        "TRANSFORMS", "Compose", "EvalTransform", "NormalizeImage", "Pad", "RandCropImageV2", "RandFlipImage",
        "RandomRotation", "ResizeImage", "Transform", "build_transforms", "eval_transform", "train_transform",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "IMAGE_EXTENSIONS",
    "TRANSFORMS",
    "Batch",
    "Compose",
    "DataLoader",
    "EvalTransform",
    "ImageDataset",
    "LabelMap",
    "NormalizeImage",
    "PKSampler",
    "Pad",
    "RandCropImageV2",
    "RandFlipImage",
    "RandomRotation",
    "ResizeImage",
    "SequentialBatchSampler",
    "Transform",
    "build_transforms",
    "class_disjoint_split",
    "eval_transform",
    "make_loader",
    "train_transform",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
