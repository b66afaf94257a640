"""Inference preprocessing, identical to the reference deploy path (spec §5.1).

RGB uint8 HWC -> ``cv2.resize`` to ``size`` with INTER_LINEAR (aspect not kept) -> ``float32(img) * scale``
-> ``(x - mean) / std`` per RGB channel -> CHW float32.

The configuration travels with the weights: :meth:`PreprocessConfig.from_inference_yml` reads the
``PreProcess.transform_ops`` of a PaddleX / PaddleClas ``inference.yml`` (spec §11.1.3) and
:meth:`PreprocessConfig.to_inference_yml` writes that layout back; our own ``config.json`` stores the model
dump of this class (see ``inference.export``). Exported models without either file (the legacy PaddleClas
tarball) use the defaults, which are ``deploy/configs/inference_rec.yaml``.

:class:`Preprocessor` is the fast form used by ``Extractor``: it resizes in whatever channel order the image was
decoded in (resizing acts on each channel independently, so this is bit-identical to reordering first) and
replaces the float arithmetic by a per-channel 256-entry lookup table computed with exactly the same float32
operations (applied with ``cv2.LUT``, which releases the GIL), so its output equals :func:`preprocess` bit for bit
at a fraction of the cost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Tuple, Union

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shitu_features.errors import ConfigError

if TYPE_CHECKING:  # a runtime import would be circular: shitu_features.data's transforms import this module
    from shitu_features.data.images import DecodedImage

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreprocessConfig",
    "Preprocessor",
    "resize",
    "normalize_to_chw",
    "normalization_lut",
    "preprocess",
    "parse_scale",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "bicubic": cv2.INTER_CUBIC,
                   "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
# PaddleClas' ResizeImage / PaddleX accept cv2-style names too.
_INTERPOLATION_ALIASES = {"linear": "bilinear", "cubic": "bicubic", "lanczos4": "lanczos", "inter_linear": "bilinear"}


class PreprocessConfig(BaseModel):
    """How images become model inputs. Defaults are the PP-ShiTuV2 deploy config (``inference_rec.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: Tuple[int, int] = Field((224, 224), description="(width, height) of the resize; ResizeImage.size")
    interpolation: Literal["bilinear", "nearest", "bicubic", "area", "lanczos"] = Field(
        "bilinear", description="cv2 interpolation of the resize; ResizeImage.interpolation")
    scale: float = Field(0.00392157, description="NormalizeImage.scale (inference_rec.yaml uses 0.00392157)")
    mean: Tuple[float, float, float] = Field(IMAGENET_MEAN, description="NormalizeImage.mean, model channel order")
    std: Tuple[float, float, float] = Field(IMAGENET_STD, description="NormalizeImage.std, model channel order")
    channel_order: Literal["rgb", "bgr"] = Field(
        "rgb", description="channel order the model expects; DecodeImage.to_rgb (PP-ShiTuV2: RGB)")

    @field_validator("size")
    @classmethod
    def _positive_size(cls, v: Tuple[int, int]) -> Tuple[int, int]:
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError(f"size must be positive (width, height), got {v}")
        return v

    @field_validator("scale")
    @classmethod
    def _finite_scale(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"scale must be a positive finite number, got {v}")
        return v

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, v: Tuple[float, float, float]) -> Tuple[float, float, float]:
        if any(s == 0 or not math.isfinite(s) for s in v):
            raise ValueError(f"std must be finite and non-zero, got {v}")
        return v

    @classmethod
    def from_inference_yml(cls, source: Union[str, Path, Mapping[str, Any]]) -> PreprocessConfig:
        """Read ``PreProcess.transform_ops`` of a PaddleX / PaddleClas ``inference.yml`` (spec §11.1.3).

        Understood operators: ``DecodeImage`` (``to_rgb``), ``ResizeImage`` (``size``, ``interpolation``;
        ``backend`` must be cv2), ``NormalizeImage`` (``scale``, ``mean``, ``std``, ``order: hwc``),
        ``ToCHWImage``. A ``Global``/``PostProcess`` section is ignored here.

        Args:
            source: path of the YAML file, or its already-parsed mapping.

        Raises:
            ConfigError: the file is unreadable, or it asks for an operator or option this library does not
                reproduce (the message names it), so a model is never fed silently wrong inputs.
        """
        data = _load_yaml(source) if not isinstance(source, Mapping) else source
        where = str(source) if not isinstance(source, Mapping) else "inference.yml"
        pre = data.get("PreProcess") if isinstance(data, Mapping) else None
        ops = pre.get("transform_ops") if isinstance(pre, Mapping) else None
        if not isinstance(ops, list):
            raise ConfigError(f"{where}: no PreProcess.transform_ops list; is this a PaddleX inference.yml?")
        return cls._from_transform_ops(ops, where)

    @classmethod
    def _from_transform_ops(cls, ops: list, where: str) -> PreprocessConfig:
        values: dict[str, Any] = {}
        seen_chw = False
        for op in ops:
            name, args = _split_op(op, where)
            if name == "DecodeImage":
                values["channel_order"] = "rgb" if args.get("to_rgb", True) else "bgr"
                if args.get("channel_first", False):
                    raise ConfigError(f"{where}: DecodeImage.channel_first=True is not supported")
            elif name == "ResizeImage":
                values.update(_resize_args(args, where))
            elif name == "NormalizeImage":
                values.update(_normalize_args(args, where))
            elif name == "ToCHWImage":
                seen_chw = True
            else:
                raise ConfigError(
                    f"{where}: preprocessing operator {name!r} is not supported (supported: DecodeImage, "
                    "ResizeImage, NormalizeImage, ToCHWImage)"
                )
        if not seen_chw:
            raise ConfigError(f"{where}: transform_ops lack ToCHWImage; only CHW model inputs are supported")
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(f"{where}: invalid preprocessing values: {exc}") from exc

    def to_inference_yml(self, model_name: str | None = None) -> dict[str, Any]:
        """The PaddleX ``inference.yml`` layout of this config, as a mapping ready for ``yaml.safe_dump``."""
        ops: list[dict[str, Any]] = []
        if self.channel_order != "rgb":
            ops.append({"DecodeImage": {"to_rgb": False, "channel_first": False}})
        ops += [
            {"ResizeImage": {"size": list(self.size), "return_numpy": False, "interpolation": self.interpolation,
                             "backend": "cv2"}},
            {"NormalizeImage": {"scale": self.scale, "mean": list(self.mean), "std": list(self.std),
                                "order": "hwc", "channel_num": 3}},
            {"ToCHWImage": None},
        ]
        doc: dict[str, Any] = {}
        if model_name:
            doc["Global"] = {"model_name": model_name}
        doc["PreProcess"] = {"transform_ops": ops}
        doc["PostProcess"] = {"NormalizeFeatures": None}
        return doc


def parse_scale(value: Any) -> float:
    """Parse ``NormalizeImage.scale``: a number or a ``"1.0/255.0"``-style string (PaddleClas ``eval``s it; we
    accept only a number or one division, never arbitrary code)."""
    if isinstance(value, bool):
        raise ValueError(f"scale must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(?:/\s*([0-9.eE+-]+)\s*)?", value)
        if m:
            num = float(m.group(1))
            return num / float(m.group(2)) if m.group(2) else num
    raise ValueError(f"cannot parse scale {value!r}: expected a number or 'a/b'")


def _load_yaml(path: Union[str, Path]) -> Any:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read preprocessing config {str(path)!r}: {exc}") from exc


def _split_op(op: Any, where: str) -> tuple[str, Mapping[str, Any]]:
    if isinstance(op, str):
        return op, {}
    if isinstance(op, Mapping) and len(op) == 1:
        name, args = next(iter(op.items()))
        if args is None:
            args = {}
        if isinstance(args, Mapping):
            return str(name), args
    raise ConfigError(f"{where}: malformed transform op {op!r} (expected a one-key mapping)")


def _resize_args(args: Mapping[str, Any], where: str) -> dict[str, Any]:
    unsupported = {"resize_short", "resize_long"} & {k for k, v in args.items() if v is not None}
    if unsupported:
        raise ConfigError(f"{where}: ResizeImage.{sorted(unsupported)[0]} is not supported (only a fixed size)")
    backend = str(args.get("backend", "cv2")).lower()
    if backend != "cv2":
        raise ConfigError(f"{where}: ResizeImage.backend={backend!r} is not supported (only cv2)")
    size = args.get("size")
    if size is None:
        raise ConfigError(f"{where}: ResizeImage has no size")
    out: dict[str, Any] = {"size": (int(size), int(size)) if isinstance(size, (int, float)) else tuple(size)}
    if args.get("interpolation") is not None:
        interp = str(args["interpolation"]).lower()
        interp = _INTERPOLATION_ALIASES.get(interp, interp)
        if interp not in _INTERPOLATIONS:
            raise ConfigError(f"{where}: ResizeImage.interpolation={args['interpolation']!r} is not supported "
                              f"(supported: {', '.join(_INTERPOLATIONS)})")
        out["interpolation"] = interp
    return out


def _normalize_args(args: Mapping[str, Any], where: str) -> dict[str, Any]:
    order = str(args.get("order", "hwc")).lower()
    if order not in ("hwc", ""):
        raise ConfigError(f"{where}: NormalizeImage.order={order!r} is not supported (only hwc)")
    if int(args.get("channel_num", 3)) != 3:
        raise ConfigError(f"{where}: NormalizeImage.channel_num must be 3, got {args.get('channel_num')}")
    out: dict[str, Any] = {}
    try:
        if "scale" in args:
            out["scale"] = parse_scale(args["scale"])
        for key in ("mean", "std"):
            if key in args:
                out[key] = tuple(float(v) for v in args[key])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: invalid NormalizeImage values: {exc}") from exc
    return out


def resize(img: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Resize an ``[H, W, 3]`` (or ``[H, W]``) uint8 image to ``config.size`` (aspect ratio not kept)."""
    return cv2.resize(img, tuple(config.size), interpolation=_INTERPOLATIONS[config.interpolation])


def normalize_to_chw(img: np.ndarray, config: PreprocessConfig, out: np.ndarray | None = None) -> np.ndarray:
    """``[H, W, 3]`` uint8 (model channel order) -> normalised ``[3, H, W]`` float32 (into ``out`` when given).

    This is the plain arithmetic restatement of ``NormalizeImage`` + ``ToCHWImage``; :class:`Preprocessor` gives
    the same values bit for bit through a lookup table.
    """
    x = img.astype(np.float32) * np.float32(config.scale)
    x -= np.asarray(config.mean, dtype=np.float32)
    x /= np.asarray(config.std, dtype=np.float32)
    chw = x.transpose(2, 0, 1)
    if out is None:
        return np.ascontiguousarray(chw)
    out[...] = chw
    return out


def normalization_lut(config: PreprocessConfig) -> np.ndarray:
    """``float32 [3, 256]``: :func:`normalize_to_chw`'s value of every uint8 in each (model-order) channel.

    Computed by normalising a 1 x 256 image that holds every value, so a lookup gives the arithmetic's results
    bit for bit.
    """
    values = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    return normalize_to_chw(values, config)[:, 0, :].copy()


def preprocess(img: np.ndarray, config: PreprocessConfig | None = None) -> np.ndarray:
    """Full deploy preprocessing of one RGB uint8 ``[H, W, 3]`` image -> float32 ``[3, h, w]``."""
    config = config or PreprocessConfig()
    if config.channel_order == "bgr":
        img = img[:, :, ::-1]
    return normalize_to_chw(resize(img, config), config)


class Preprocessor:
    """Fast, exact preprocessing of decoded images into a preallocated batch.

    Args:
        config: the preprocessing to reproduce.

    Example:
        >>> pre = Preprocessor(PreprocessConfig())
        >>> batch = np.empty((8, 3, 224, 224), np.float32)
        >>> pre(decode_image("cat.jpg"), out=batch[0])  # doctest: +SKIP
    """

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        self.config = config or PreprocessConfig()
        self._size = tuple(self.config.size)
        self._interp = _INTERPOLATIONS[self.config.interpolation]
        self._lut = normalization_lut(self.config)
        # cv2.LUT wants one [256, 1] table per call; it maps uint8 -> float32 because the table is float32.
        self._cv_luts = [np.ascontiguousarray(self._lut[c]).reshape(256, 1) for c in range(3)]

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(3, height, width)`` of one preprocessed image."""
        return 3, self._size[1], self._size[0]

    def __call__(self, image: DecodedImage, out: np.ndarray | None = None) -> np.ndarray:
        """Resize and normalise one decoded image.

        Args:
            image: decoded pixels (any layout of :class:`DecodedImage`).
            out: optional ``float32`` ``[3, h, w]`` destination, e.g. a row of a preallocated batch.

        Returns:
            ``float32`` ``[3, h, w]`` in the model's channel order (``out`` when given).
        """
        if out is None:
            out = np.empty(self.output_shape, dtype=np.float32)
        small = cv2.resize(image.pixels, self._size, interpolation=self._interp)
        planes = [small] * 3 if image.order == "gray" else cv2.split(small)
        model_order = self.config.channel_order
        for c in range(3):
            src = planes[0 if image.order == "gray" else image.order.index(model_order[c])]
            # cv2.LUT, unlike np.take, releases the GIL (so the Extractor's decode threads run in parallel) and is
            # faster; it writes into the contiguous row plane out[c] directly.
            dst = out[c]
            if dst.flags.c_contiguous:
                written = cv2.LUT(src, self._cv_luts[c], dst=dst)
                if written.ctypes.data != dst.ctypes.data:  # OpenCV allocated a new array after all
                    dst[...] = written
            else:  # e.g. a strided view: OpenCV cannot write into it
                dst[...] = cv2.LUT(src, self._cv_luts[c])
        return out
