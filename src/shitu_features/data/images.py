"""Decoding of image inputs to HxWx3 uint8 RGB arrays (the first step of every pipeline).

Reference behaviour (spec §5.1, reference/README "preprocess"): ``cv2.imread`` with IMREAD_COLOR, then BGR->RGB.
That applies EXIF orientation, drops alpha without compositing and replicates grayscale to 3 channels.
"""

from __future__ import annotations

import os
from typing import Any, Union

import cv2
import numpy as np

from shitu_features.errors import ImageDecodeError, InvalidInputError

ImageInput = Union[str, "os.PathLike[str]", bytes, np.ndarray, Any]
"""A path, encoded image bytes, an HxWx3 uint8 RGB array, or a ``PIL.Image.Image``."""


def decode_bytes(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes like ``cv2.imread`` does.

    Returns:
        ``uint8`` array ``[H, W, 3]`` in RGB order.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if bgr is None:
        raise ImageDecodeError(f"could not decode {name} as an image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def load_image(source: ImageInput) -> np.ndarray:
    """Load one image input as an RGB ``uint8`` array ``[H, W, 3]``.

    Args:
        source: a path (``str`` / ``os.PathLike``), encoded ``bytes``, a ``uint8`` RGB array ``[H, W, 3]``.

    Raises:
        ImageDecodeError: the file is missing or cannot be decoded.
        InvalidInputError: the input has an unsupported type, dtype or shape.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ImageDecodeError(f"cannot read image file {path!r}: {exc.strerror or exc}") from exc
        return decode_bytes(data, name=repr(path))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(source))
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise InvalidInputError(
                f"expected a uint8 array of shape [H, W, 3] (RGB), got dtype={source.dtype} shape={source.shape}"
            )
        return source
    raise InvalidInputError(f"unsupported image input of type {type(source).__name__}")
