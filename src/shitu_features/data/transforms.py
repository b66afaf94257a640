"""Image transforms of the PP-ShiTuV2 training recipe (spec §5.3) and the eval transform (spec §5.1, §5.2).

Every transform is a callable ``transform(img, rng=None)`` on an ``[H, W, 3]`` uint8 RGB image. Random
transforms draw only from the ``numpy.random.Generator`` passed as ``rng`` (never from a global RNG), so a
sample's augmentation is a pure function of its generator's seed: the loader derives one per sample from
``(seed, epoch, rank, batch, position)`` and the result does not depend on the number of workers.

The reference draws from Python's ``random`` and NumPy's global RNG; here every draw comes from the one
generator, with the same distributions (``random.randint(a, b)`` -> ``rng.integers(a, b + 1)``,
``random.uniform`` -> ``rng.uniform``, ``np.random.random`` -> ``rng.random``). The same seed therefore does not
reproduce the reference's exact draws, only their distribution.
"""

from __future__ import annotations

import difflib
import inspect
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Protocol, Union

import cv2
import numpy as np

from shitu_features.errors import ConfigError, InvalidInputError
from shitu_features.inference.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _INTERPOLATIONS,
    PreprocessConfig,
    normalization_lut,
    parse_scale,
    preprocess,
)

__all__ = [
    "TRANSFORMS",
    "Compose",
    "EvalTransform",
    "NormalizeImage",
    "Pad",
    "RandCropImageV2",
    "RandFlipImage",
    "RandomRotation",
    "ResizeImage",
    "Transform",
    "build_transforms",
    "eval_transform",
    "train_transform",
]


Size = Union[int, Sequence[int]]


class Transform(Protocol):
    """A callable on an image: ``[H, W, 3]`` uint8 RGB in, ``[H', W', 3]`` uint8 out (``NormalizeImage`` returns
    ``[3, H, W]`` float32). Random transforms draw only from ``rng`` (a ``numpy.random.Generator``)."""

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray: ...


def _size_wh(size: Size, what: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        w = h = int(size)
    else:
        if len(size) != 2:
            raise ConfigError(f"{what}: size must be an int or (width, height), got {size!r}")
        w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ConfigError(f"{what}: size must be positive, got {size!r}")
    return w, h


def _interpolation(name: str, what: str) -> int:
    if name not in _INTERPOLATIONS:
        raise ConfigError(f"{what}: interpolation must be one of {sorted(_INTERPOLATIONS)}, got {name!r}")
    return _INTERPOLATIONS[name]


def _check_backend(backend: str, what: str) -> None:
    # PIL resizing/padding gives different pixels; only the cv2 path of the reference is reproduced.
    if backend != "cv2":
        raise ConfigError(f"{what}: only backend='cv2' is supported (the PP-ShiTuV2 recipe), got {backend!r}")


def _need_rng(rng: np.random.Generator | None, what: str) -> np.random.Generator:
    if rng is None:
        raise InvalidInputError(f"{what} is random: pass rng=np.random.Generator (or wrap it in Compose(seed=...))")
    return rng


class ResizeImage:
    """Resize to a fixed size, ignoring the aspect ratio (PaddleClas ``ResizeImage``, cv2 backend).

    Args:
        size: ``(width, height)`` or one int for a square.
        interpolation: ``bilinear`` (the recipe), ``nearest``, ``bicubic``, ``area`` or ``lanczos``.
        backend: only ``cv2``.
        return_numpy: accepted for YAML compatibility; irrelevant with the cv2 backend (spec §5.1).

    Shape:
        ``[H, W, C]`` uint8 -> ``[height, width, C]`` uint8.
    """

    def __init__(
        self, size: Size, interpolation: str = "bilinear", backend: str = "cv2", return_numpy: bool = False
    ) -> None:
        _check_backend(backend, "ResizeImage")
        self.size = _size_wh(size, "ResizeImage")
        self.interpolation = interpolation
        self._flag = _interpolation(interpolation, "ResizeImage")

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return cv2.resize(img, self.size, interpolation=self._flag)

    def __repr__(self) -> str:
        return f"ResizeImage(size={self.size}, interpolation={self.interpolation!r})"


class RandFlipImage:
    """Flip with probability 0.5 (PaddleClas ``RandFlipImage``; ``flip_code=1`` is horizontal).

    Args:
        flip_code: ``cv2.flip`` code: 1 horizontal, 0 vertical, -1 both.

    Shape:
        ``[H, W, C]`` -> ``[H, W, C]``.
    """

    def __init__(self, flip_code: int = 1) -> None:
        if flip_code not in (-1, 0, 1):
            raise ConfigError(f"RandFlipImage: flip_code must be -1, 0 or 1, got {flip_code!r}")
        self.flip_code = flip_code

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        # reference: random.randint(0, 1) == 1
        if int(_need_rng(rng, "RandFlipImage").integers(0, 2)) == 1:
            return cv2.flip(img, self.flip_code)
        return img

    def __repr__(self) -> str:
        return f"RandFlipImage(flip_code={self.flip_code})"


class Pad:
    """Constant border on every side (PaddleClas ``Pad`` with the cv2 backend).

    Args:
        padding: pixels on all sides, or ``(left, top, right, bottom)``.
        fill: border value for every channel.
        backend: only ``cv2``.

    Shape:
        ``[H, W, C]`` -> ``[H + top + bottom, W + left + right, C]``.
    """

    def __init__(self, padding: int | Sequence[int] = 10, fill: int = 0, backend: str = "cv2") -> None:
        _check_backend(backend, "Pad")
        if isinstance(padding, (int, np.integer)):
            padding = (int(padding),) * 4
        if len(padding) != 4 or min(padding) < 0:
            raise ConfigError(f"Pad: padding must be a non-negative int or (left, top, right, bottom), got {padding!r}")
        self.padding = tuple(int(p) for p in padding)
        self.fill = fill

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        left, top, right, bottom = self.padding
        return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(self.fill,) * 3)

    def __repr__(self) -> str:
        return f"Pad(padding={self.padding}, fill={self.fill})"


class RandCropImageV2:
    """Random crop of a fixed size, with the reference's off-by-one (PaddleClas ``RandCropImageV2``, spec §5.3).

    ``top`` and ``left`` are drawn uniformly from ``0 .. H - height + 1`` and ``0 .. W - width + 1``
    *inclusive*; when the largest value is drawn, slicing yields one row (column) fewer than requested. The
    recipe's following resize hides this. An image exactly the crop size is returned unchanged; one more than a
    pixel smaller raises.

    Args:
        size: ``(width, height)`` or one int.

    Shape:
        ``[H, W, C]`` -> ``[height or height - 1, width or width - 1, C]``.
    """

    def __init__(self, size: Size) -> None:
        self.size = _size_wh(size, "RandCropImageV2")

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = _need_rng(rng, "RandCropImageV2")
        h, w = img.shape[:2]
        tw, th = self.size
        if h + 1 < th or w + 1 < tw:
            raise InvalidInputError(f"RandCropImageV2: image {w}x{h} is smaller than the crop {tw}x{th}")
        if (w, h) == (tw, th):
            return img
        top = int(rng.integers(0, h - th + 2))  # random.randint(0, h - th + 1), inclusive
        left = int(rng.integers(0, w - tw + 2))
        return img[top : top + th, left : left + tw]

    def __repr__(self) -> str:
        return f"RandCropImageV2(size={self.size})"


class RandomRotation:
    """Rotate by a random angle with probability ``prob`` (PaddleClas ``RandomRotation``, spec §5.3).

    The gate is ``rng.random() < prob``; the angle is uniform in ``[-degrees, degrees]`` (positive is
    counter-clockwise) about ``(W / 2, H / 2)`` with ``cv2.getRotationMatrix2D`` + ``cv2.warpAffine``, output
    the same size, border ``fill``: exactly ``paddle.vision.transforms.functional.rotate`` on arrays.

    Args:
        degrees: maximum absolute angle, or ``(min, max)``.
        prob: probability of rotating.
        interpolation: ``bilinear`` (the recipe) or another cv2 interpolation name.
        fill: border value.
        expand: only ``False`` (the recipe).
        center: only ``None`` (the image centre).

    Shape:
        ``[H, W, C]`` -> ``[H, W, C]``.
    """

    def __init__(
        self,
        degrees: float | Sequence[float] = 90,
        prob: float = 0.5,
        interpolation: str = "bilinear",
        fill: int = 0,
        expand: bool = False,
        center: Sequence[float] | None = None,
    ) -> None:
        if expand or center is not None:
            raise ConfigError("RandomRotation: only expand=False and center=None are supported (the recipe)")
        if isinstance(degrees, (int, float, np.number)):
            if degrees < 0:
                raise ConfigError(f"RandomRotation: degrees must be >= 0, got {degrees!r}")
            degrees = (-float(degrees), float(degrees))
        if len(degrees) != 2:
            raise ConfigError(f"RandomRotation: degrees must be a number or (min, max), got {degrees!r}")
        self.degrees = (float(degrees[0]), float(degrees[1]))
        self.prob = float(prob)
        self.interpolation = interpolation
        self._flag = _interpolation(interpolation, "RandomRotation")
        self.fill = fill

    def rotate(self, img: np.ndarray, angle: float) -> np.ndarray:
        """Rotate ``img`` by ``angle`` degrees counter-clockwise about its centre (deterministic part)."""
        h, w = img.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1)
        return cv2.warpAffine(img, matrix, (w, h), flags=self._flag, borderValue=self.fill)

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = _need_rng(rng, "RandomRotation")
        if rng.random() < self.prob:
            return self.rotate(img, float(rng.uniform(self.degrees[0], self.degrees[1])))
        return img

    def __repr__(self) -> str:
        return f"RandomRotation(degrees={self.degrees}, prob={self.prob}, interpolation={self.interpolation!r})"


class NormalizeImage:
    """``(float32(img) * scale - mean) / std`` per channel, then HWC -> CHW (PaddleClas ``NormalizeImage``).

    The values are those of :func:`shitu_features.inference.preprocess.normalize_to_chw`, the same float32
    operations in the same order as the reference, evaluated once per channel for the 256 possible ``uint8``
    values and then looked up (bit-identical, about 10x faster than the per-pixel arithmetic). The reference op
    returns HWC and its dataset transposes; here the transpose is part of the op (``chw=True``).

    Args:
        scale: multiplier, a number or the reference's string form (``"1.0/255.0"``).
        mean: per-channel mean (RGB).
        std: per-channel std (RGB).
        order: input layout, only ``hwc``.
        chw: return ``[3, H, W]`` (default) instead of ``[H, W, 3]``.

    Shape:
        ``[H, W, 3]`` uint8 -> ``[3, H, W]`` float32.
    """

    def __init__(
        self,
        scale: float | str = 1.0 / 255.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        order: str = "hwc",
        chw: bool = True,
    ) -> None:
        if order != "hwc":
            raise ConfigError(f"NormalizeImage: only order='hwc' is supported, got {order!r}")
        try:
            self.config = PreprocessConfig(scale=parse_scale(scale), mean=tuple(mean), std=tuple(std))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError too
            raise ConfigError(f"NormalizeImage: {exc}") from exc
        self.chw = chw
        self._lut = normalization_lut(self.config)  # [3, 256] float32

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise InvalidInputError(f"NormalizeImage expects [H, W, 3] uint8, got {img.dtype} {img.shape}")
        out = np.empty((3, *img.shape[:2]), dtype=np.float32)
        for c in range(3):
            np.take(self._lut[c], img[:, :, c], out=out[c], mode="clip")  # uint8 indices are always in range
        return out if self.chw else np.ascontiguousarray(out.transpose(1, 2, 0))

    def __repr__(self) -> str:
        c = self.config
        return f"NormalizeImage(scale={c.scale}, mean={c.mean}, std={c.std}, chw={self.chw})"


class Compose:
    """Apply transforms in order, handing each the same generator.

    Args:
        transforms: the transforms.
        seed: seed of the fallback generator used when ``__call__`` gets no ``rng`` (``None``: fresh entropy).
            The loader always passes a per-sample generator, so the fallback only serves interactive use; it is
            guarded by a lock, but draws then depend on call order.

    Shape:
        As the transforms; the recipe maps ``[H, W, 3]`` uint8 -> ``[3, h, w]`` float32.
    """

    def __init__(self, transforms: Sequence[Transform], seed: int | None = None) -> None:
        self.transforms = list(transforms)
        self._fallback = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        if rng is None:
            with self._lock:
                # one child seed per call keeps the lock short and the ops free of shared state
                rng = np.random.default_rng(self._fallback.integers(0, 2**63))
        for transform in self.transforms:
            img = transform(img, rng)
        return img

    def __repr__(self) -> str:
        body = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{body}\n])"


class EvalTransform:
    """The inference preprocessing as a transform: exactly :func:`shitu_features.inference.preprocess.preprocess`.

    Args:
        config: the preprocessing (default: the PP-ShiTuV2 deploy config, 224x224, scale 0.00392157).

    Shape:
        ``[H, W, 3]`` uint8 RGB -> ``[3, h, w]`` float32.
    """

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        self.config = config or PreprocessConfig()

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return preprocess(img, self.config)

    def __repr__(self) -> str:
        return f"EvalTransform({self.config!r})"


def eval_transform(preprocess_config: PreprocessConfig | None = None) -> EvalTransform:
    """The eval / inference transform (spec §5.1, §5.2): resize, normalise, CHW, no randomness.

    Args:
        preprocess_config: the model's preprocessing; ``None`` is the PP-ShiTuV2 deploy default.
    """
    return EvalTransform(preprocess_config)


def train_transform(
    size: Size = 224,
    seed: int | None = None,
    *,
    padding: int = 10,
    flip: bool = True,
    rotation_degrees: float = 90,
    rotation_prob: float = 0.5,
    interpolation: str = "bilinear",
    scale: float | str = 1.0 / 255.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """The PP-ShiTuV2 training augmentation, in the reference order (spec §1 "Train data", §5.3).

    ``ResizeImage(size)`` -> ``RandFlipImage(1)`` -> ``Pad(padding)`` -> ``RandCropImageV2(size)`` ->
    ``RandomRotation(rotation_degrees, rotation_prob)`` -> ``ResizeImage(size)`` -> ``NormalizeImage`` (CHW).

    Args:
        size: output ``(width, height)`` or one int (recipe: 224).
        seed: seed of the fallback generator (see :class:`Compose`); the loader passes per-sample generators.
        padding: border of ``Pad`` (recipe: 10); 0 drops the op.
        flip: include the random horizontal flip.
        rotation_degrees: maximum rotation angle (recipe: 90).
        rotation_prob: rotation probability (recipe: 0.5); 0 drops the op.
        interpolation: of both resizes and the rotation (recipe: bilinear).
        scale: normalisation scale (recipe: ``1.0/255.0``, not the deploy 0.00392157).
        mean: normalisation mean (RGB).
        std: normalisation std (RGB).

    Returns:
        A :class:`Compose` mapping ``[H, W, 3]`` uint8 RGB to ``[3, height, width]`` float32.
    """
    ops: list = [ResizeImage(size, interpolation)]
    if flip:
        ops.append(RandFlipImage(1))
    if padding:
        ops.append(Pad(padding))
    ops.append(RandCropImageV2(size))
    if rotation_prob > 0:
        ops.append(RandomRotation(rotation_degrees, prob=rotation_prob, interpolation=interpolation))
    ops += [ResizeImage(size, interpolation), NormalizeImage(scale=scale, mean=mean, std=std)]
    return Compose(ops, seed=seed)


class _DecodeImage:
    """Placeholder for the reference's ``DecodeImage``: decoding happens in the dataset, so this is a no-op."""

    def __init__(self, to_rgb: bool = True, channel_first: bool = False, **_ignored: Any) -> None:
        if not to_rgb or channel_first:
            raise ConfigError("DecodeImage: only to_rgb=True, channel_first=False is supported (the recipe)")

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return img


#: Transform classes by the reference's op names (``transform_ops`` entries of a PaddleClas YAML).
TRANSFORMS: Mapping[str, Callable[..., Transform]] = {
    "DecodeImage": _DecodeImage,
    "ResizeImage": ResizeImage,
    "RandFlipImage": RandFlipImage,
    "Pad": Pad,
    "RandCropImageV2": RandCropImageV2,
    "RandomRotation": RandomRotation,
    "NormalizeImage": NormalizeImage,
}


def build_transforms(ops: Sequence[Mapping[str, Mapping[str, Any] | None]], seed: int | None = None) -> Compose:
    """Build a :class:`Compose` from the reference YAML form ``[{"ResizeImage": {"size": 224}}, ...]``.

    ``DecodeImage`` is accepted and dropped (datasets decode); ``NormalizeImage`` outputs CHW, standing in for the
    reference dataset's transpose.

    Raises:
        ConfigError: unknown op (close matches are listed), unknown or unsupported argument.
    """
    built = []
    for entry in ops:
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise ConfigError(f"each transform must be a one-key mapping {{name: {{...}}}}, got {entry!r}")
        ((name, params),) = entry.items()
        if name not in TRANSFORMS:
            close = difflib.get_close_matches(name, list(TRANSFORMS), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unsupported transform {name!r}{hint} (supported: {', '.join(TRANSFORMS)})")
        cls = TRANSFORMS[name]
        params = dict(params or {})
        accepted = inspect.signature(cls).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            unknown = sorted(set(params) - set(accepted))
            if unknown:
                raise ConfigError(f"{name} does not accept {unknown}; accepted: {sorted(accepted)}")
        op = cls(**params)
        if not isinstance(op, _DecodeImage):
            built.append(op)
    return Compose(built, seed=seed)
