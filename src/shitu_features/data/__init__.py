"""Data pipeline for training and evaluation: datasets, samplers, transforms and a threaded loader.

Image decoding lives in :mod:`shitu_features.data.images`.
"""

from __future__ import annotations

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
