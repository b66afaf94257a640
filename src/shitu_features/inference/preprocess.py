"""Inference preprocessing, identical to the reference deploy path (spec §5.1).

RGB uint8 HWC -> ``cv2.resize`` to ``size`` with INTER_LINEAR (aspect not kept) -> ``float32(img) * scale``
-> ``(x - mean) / std`` per RGB channel -> CHW float32.
"""

from __future__ import annotations

from typing import Literal, Tuple

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "bicubic": cv2.INTER_CUBIC,
                   "area": cv2.INTER_AREA}


class PreprocessConfig(BaseModel):
    """How images become model inputs. Defaults are the PP-ShiTuV2 deploy config (``inference_rec.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: Tuple[int, int] = Field((224, 224), description="(width, height) of the resize; ResizeImage.size")
    interpolation: Literal["bilinear", "nearest", "bicubic", "area"] = Field(
        "bilinear", description="cv2 interpolation of the resize; ResizeImage.interpolation")
    scale: float = Field(0.00392157, description="NormalizeImage.scale (inference_rec.yaml uses 0.00392157)")
    mean: Tuple[float, float, float] = Field(IMAGENET_MEAN, description="NormalizeImage.mean, RGB order")
    std: Tuple[float, float, float] = Field(IMAGENET_STD, description="NormalizeImage.std, RGB order")


def resize(img: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Resize an ``[H, W, 3]`` uint8 image to ``config.size`` (aspect ratio not kept)."""
    return cv2.resize(img, tuple(config.size), interpolation=_INTERPOLATIONS[config.interpolation])


def normalize_to_chw(img: np.ndarray, config: PreprocessConfig, out: np.ndarray | None = None) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB -> normalised ``[3, H, W]`` float32 (written into ``out`` when given)."""
    x = img.astype(np.float32) * np.float32(config.scale)
    x -= np.asarray(config.mean, dtype=np.float32)
    x /= np.asarray(config.std, dtype=np.float32)
    chw = x.transpose(2, 0, 1)
    if out is None:
        return np.ascontiguousarray(chw)
    out[...] = chw
    return out


def preprocess(img: np.ndarray, config: PreprocessConfig | None = None) -> np.ndarray:
    """Full deploy preprocessing of one RGB uint8 ``[H, W, 3]`` image -> float32 ``[3, h, w]``."""
    config = config or PreprocessConfig()
    return normalize_to_chw(resize(img, config), config)
