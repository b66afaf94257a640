"""Decoding of image inputs to uint8 pixel arrays (the first step of every pipeline).

Reference behaviour (spec §5.1, reference/README "preprocess"): ``cv2.imread(path)`` with IMREAD_COLOR, then
BGR->RGB. That

- applies the EXIF orientation (a JPEG with ``Orientation=6`` is rotated 90° clockwise);
- drops alpha **without compositing** (RGBA, LA, palette with transparency: the stored colours are used);
- replicates a grayscale image to 3 identical channels;
- reduces a 16-bit image to 8 bits by keeping the high byte (``value >> 8``).

Every input kind is brought to those same pixels:

- ``str`` / ``os.PathLike``: read as bytes, decoded with ``cv2.imdecode(IMREAD_COLOR)`` (same decoder as
  ``cv2.imread``, but works with non-ASCII paths on every OS).
- ``bytes`` / ``bytearray`` / ``memoryview``: encoded image file contents, decoded the same way.
- ``numpy.ndarray``: ``uint8`` ``[H, W, 3]`` in RGB order (``channel_order="bgr"`` for OpenCV arrays), or
  ``uint8`` ``[H, W]`` / ``[H, W, 1]`` grayscale (replicated to 3 channels, as ``cv2.imread`` does for a gray
  file). Other dtypes, 4-channel arrays and empty arrays are refused (:class:`InvalidInputError`): their
  meaning (scale of floats, order of the alpha channel) is ambiguous.
- ``PIL.Image.Image`` (when Pillow is installed): EXIF orientation applied (``ImageOps.exif_transpose``, as
  cv2 does), then converted like cv2 would: alpha dropped without compositing, palette expanded, 16/32-bit
  integer modes reduced to their high byte.

A truncated JPEG (no end-of-image marker after the scan data) is refused with :class:`ImageDecodeError` by
default: OpenCV 4.x silently fills the missing part with grey (the reference then embeds that half-grey image)
while OpenCV 5 fails; refusing makes the outcome the same on every version and never embeds garbage.
``allow_truncated=True`` hands the bytes to the decoder anyway.

Encoded inputs are decoded in OpenCV's native BGR order and kept that way (:class:`DecodedImage`) so that a
large image is never copied just to reorder channels: resizing acts on each channel independently, so the
reorder can happen after the resize with bit-identical results (see ``inference.preprocess``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Literal, Union

import cv2
import numpy as np

from shitu_features.errors import ImageDecodeError, ImageNotFoundError, InvalidInputError

__all__ = [
    "ImageInput",
    "ChannelOrder",
    "DecodedImage",
    "decode_bytes",
    "decode_image",
    "load_image",
    "describe_input",
    "is_single_image",
    "jpeg_is_truncated",
]

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray, Any]
"""A path, encoded image bytes, a uint8 ``[H, W, 3]`` / ``[H, W]`` array, or a ``PIL.Image.Image``."""

ChannelOrder = Literal["rgb", "bgr"]
"""Channel order of a 3-channel ``numpy`` input (encoded files and PIL images carry their own)."""

_PixelOrder = Literal["rgb", "bgr", "gray"]

_CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels in their cheapest layout.

    Attributes:
        pixels: ``uint8`` ``[H, W, 3]`` (``order`` "rgb" or "bgr") or ``[H, W]`` (``order`` "gray").
        order: channel order of ``pixels``; "gray" means one channel to be replicated to R, G and B.
    """

    pixels: np.ndarray
    order: _PixelOrder

    def to_rgb(self) -> np.ndarray:
        """Return the pixels as ``uint8`` ``[H, W, 3]`` RGB (a copy only when reordering is needed)."""
        if self.order == "rgb":
            return self.pixels
        if self.order == "bgr":
            return np.ascontiguousarray(self.pixels[:, :, ::-1])
        return np.repeat(self.pixels[:, :, None], 3, axis=2)


def describe_input(source: Any, max_len: int = 200) -> str:
    """Short human-readable description of an input, for error messages and failure reports."""
    if isinstance(source, (str, os.PathLike)):
        text = repr(os.fspath(source))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        text = f"<{type(source).__name__}: {len(source)} bytes>"
    elif isinstance(source, np.ndarray):
        text = f"<ndarray shape={tuple(source.shape)} dtype={source.dtype}>"
    elif _is_pil_image(source):
        text = f"<PIL.Image mode={source.mode} size={source.size[0]}x{source.size[1]}>"
    else:
        text = f"<{type(source).__module__}.{type(source).__qualname__}>"
    return text if len(text) <= max_len else text[: max_len - 3] + "..."


def is_single_image(source: Any) -> bool:
    """True when ``source`` is one image input (as opposed to a sequence / iterable of inputs).

    A 4-D ``numpy`` array ``[N, H, W, C]`` is a batch, not a single image.
    """
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        return True
    if isinstance(source, np.ndarray):
        return source.ndim != 4
    return _is_pil_image(source)


def jpeg_is_truncated(data: bytes | memoryview) -> bool:
    """True when ``data`` is a JPEG whose scan data is not followed by an end-of-image (EOI) marker.

    Walks the marker segments up to the first start-of-scan (so an EXIF thumbnail's EOI inside APP1 is not
    mistaken for the image's), then looks for ``FF D9`` in the rest; inside entropy-coded data ``FF`` is always
    followed by ``00`` or a restart marker, so ``FF D9`` there is the real EOI. Data after the EOI (some
    cameras append a trailer) is fine. Non-JPEG data and malformed headers return False: the decoder judges.
    """
    view = memoryview(data)
    if len(view) < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return False
    raw = bytes(view) if not isinstance(data, bytes) else data
    pos, end = 2, len(raw)
    while pos + 4 <= end:
        if raw[pos] != 0xFF:
            return False  # not a marker where one must be: malformed, let the decoder decide
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the entropy-coded data follows
            return raw.find(b"\xff\xd9", pos + 2) < 0
        if marker == 0xD9:
            return False  # EOI before any scan: no image data, the decoder will fail on its own
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        pos += 2 + int.from_bytes(raw[pos + 2 : pos + 4], "big")
    return True  # the header ends before the first scan


def decode_bytes(data: bytes | bytearray | memoryview, *, name: str = "<bytes>", allow_truncated: bool = False
                 ) -> DecodedImage:
    """Decode encoded image bytes exactly as ``cv2.imread`` decodes a file (IMREAD_COLOR).

    Args:
        data: the encoded file contents (JPEG, PNG, BMP, WebP, TIFF, ... whatever OpenCV reads).
        name: how to name the input in error messages.
        allow_truncated: decode a JPEG even when it lacks its end-of-image marker.

    Returns:
        ``DecodedImage`` with ``uint8`` ``[H, W, 3]`` pixels in BGR order.

    Raises:
        ImageDecodeError: empty data, a truncated JPEG, or bytes OpenCV cannot decode.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageDecodeError(f"{name} is empty (0 bytes): nothing to decode")
    if not allow_truncated and jpeg_is_truncated(data):
        raise ImageDecodeError(
            f"{name} is a truncated JPEG (no end-of-image marker after the image data); re-download or "
            "re-encode it (decoding it anyway, with allow_truncated=True, gives a partly grey image)"
        )
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. a header that declares more pixels than CV_IO_MAX_IMAGE_PIXELS
        raise ImageDecodeError(f"could not decode {name} as an image: {exc}".strip()) from exc
    if bgr is None or bgr.size == 0:
        head = bytes(buf[:8]).hex(" ")
        raise ImageDecodeError(
            f"could not decode {name} ({buf.size} bytes, starting {head}) as an image: not a format OpenCV "
            "reads (JPEG, PNG, BMP, WebP, TIFF, ...) or the file is corrupted"
        )
    return DecodedImage(bgr, "bgr")


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise ImageNotFoundError(f"image file not found: {path!r}") from exc
    except IsADirectoryError as exc:
        raise ImageNotFoundError(f"image path {path!r} is a directory, not a file") from exc
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image file {path!r}: {exc.strerror or exc}") from exc


def _is_pil_image(obj: Any) -> bool:
    # Never import Pillow just to check: if it is not imported, obj cannot be a PIL image.
    pil_image = sys.modules.get("PIL.Image")
    return pil_image is not None and isinstance(obj, pil_image.Image)


def _from_array(arr: np.ndarray, channel_order: ChannelOrder) -> DecodedImage:
    if arr.dtype != np.uint8:
        hint = " (scale floats to 0..255 and cast with .astype(np.uint8))" if arr.dtype.kind == "f" else ""
        raise InvalidInputError(f"image arrays must be uint8, got dtype={arr.dtype}{hint}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        order: _PixelOrder = "gray"
    elif arr.ndim == 3 and arr.shape[2] == 3:
        order = channel_order
    else:
        hint = "; drop the alpha channel with arr[..., :3]" if arr.ndim == 3 and arr.shape[2] == 4 else ""
        raise InvalidInputError(
            f"image arrays must have shape [H, W, 3] ({channel_order.upper()}) or [H, W] (grayscale), "
            f"got shape={tuple(arr.shape)}{hint}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(f"image array is empty: shape={tuple(arr.shape)}")
    return DecodedImage(arr, order)


def _from_pil(img: Any) -> DecodedImage:
    from PIL import ImageOps  # Pillow is imported already: the object is a PIL image

    try:
        img = ImageOps.exif_transpose(img)  # cv2.imread applies EXIF orientation; PIL does not by default
        mode = img.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # cv2 IMREAD_COLOR keeps the high byte of 16-bit samples; PIL's convert("L") would clip instead.
            wide = np.asarray(img).astype(np.int64)
            return DecodedImage((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "gray")
        if mode == "F":
            raise InvalidInputError("PIL images of mode 'F' (float) are not supported: scale to 8 bits first")
        if mode == "L":
            return _from_array(np.asarray(img), "rgb")
        if mode != "RGB":
            # RGBA / LA / PA: alpha dropped without compositing (as cv2 and the reference); P: palette expanded;
            # CMYK / YCbCr / 1: converted by Pillow.
            img = img.convert("RGB")
        return _from_array(np.asarray(img), "rgb")
    except (InvalidInputError, ImageDecodeError):
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's lazy decoding of a broken file
        raise ImageDecodeError(f"could not decode PIL image ({exc})") from exc


def decode_image(source: ImageInput, *, channel_order: ChannelOrder = "rgb", allow_truncated: bool = False
                 ) -> DecodedImage:
    """Decode one image input to pixels in their cheapest layout (no channel reorder of big images).

    Args:
        source: a path, encoded bytes, a ``uint8`` array or a ``PIL.Image.Image`` (see the module docstring).
        channel_order: the order of a 3-channel ``numpy`` input; ignored for other inputs.
        allow_truncated: decode a JPEG lacking its end-of-image marker instead of refusing it.

    Returns:
        ``DecodedImage`` (``uint8`` pixels ``[H, W, 3]`` in RGB or BGR order, or ``[H, W]`` gray).

    Raises:
        ImageNotFoundError: a path that does not exist (also a ``FileNotFoundError``).
        ImageDecodeError: the file or bytes cannot be read or decoded.
        InvalidInputError: unsupported type, dtype or shape.
    """
    if channel_order not in _CHANNEL_ORDERS:
        raise InvalidInputError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not isinstance(path, str):
            path = os.fsdecode(path)
        return decode_bytes(_read_file(path), name=repr(path), allow_truncated=allow_truncated)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(source, name=describe_input(source), allow_truncated=allow_truncated)
    if isinstance(source, np.ndarray):
        return _from_array(source, channel_order)
    if _is_pil_image(source):
        return _from_pil(source)
    raise InvalidInputError(
        f"unsupported image input {describe_input(source)}: pass a path, encoded bytes, a uint8 numpy array "
        "[H, W, 3] or a PIL.Image"
    )


def load_image(source: ImageInput, *, channel_order: ChannelOrder = "rgb", allow_truncated: bool = False
               ) -> np.ndarray:
    """Load one image input as an RGB ``uint8`` array ``[H, W, 3]``, exactly as the reference decodes it.

    Args:
        source: a path (``str`` / ``os.PathLike``), encoded ``bytes``, a ``uint8`` array ``[H, W, 3]`` /
            ``[H, W]``, or a ``PIL.Image.Image``.
        channel_order: the order of a 3-channel ``numpy`` input ("rgb" or "bgr").
        allow_truncated: decode a JPEG lacking its end-of-image marker instead of refusing it.

    Returns:
        ``uint8`` ``[H, W, 3]`` RGB (the input array itself when it already is one).

    Raises:
        ImageNotFoundError: a path that does not exist.
        ImageDecodeError: the file or bytes cannot be read or decoded.
        InvalidInputError: unsupported type, dtype or shape.
    """
    return decode_image(source, channel_order=channel_order, allow_truncated=allow_truncated).to_rgb()
