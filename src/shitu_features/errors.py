"""Typed exceptions of shitu_features.

Every error the library raises on purpose derives from :class:`ShituFeaturesError`, and most also derive
from the builtin a caller would naturally catch (``KeyError``, ``FileNotFoundError``, ``OSError``,
``ValueError``, ``ConnectionError``), so ``except FileNotFoundError`` keeps working. Messages say what
failed, with which value, and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ShituFeaturesError",
    "ConfigError",
    "UnknownModelError",
    "ModelNotFoundError",
    "DownloadError",
    "ChecksumError",
    "OfflineError",
    "UnsafeArchiveError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "ImageDecodeError",
    "InvalidInputError",
    "DeviceError",
    "GalleryFormatError",
    "CheckpointFormatError",
    "ArchiveError",
    "ImageNotFoundError",
    "OutputExistsError",
    "EmbeddingError",
    "DatasetFormatError",
    "GalleryIdError",
]


class ShituFeaturesError(Exception):
    """Base class of every error raised on purpose by shitu_features."""


class ConfigError(ShituFeaturesError, ValueError):
    """A configuration value is invalid or unsupported (the message names the key and the fix)."""


class UnknownModelError(ShituFeaturesError, KeyError):
    """A model or weights name is not in the registry; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written
        return str(self.args[0]) if self.args else ""


class ModelNotFoundError(ShituFeaturesError, FileNotFoundError):
    """A local model path does not exist or does not hold a loadable model."""


class DownloadError(ShituFeaturesError, OSError):
    """A download failed (HTTP error, connection error, truncated transfer)."""


class ChecksumError(DownloadError):
    """A downloaded or cached file does not have the expected size or sha256; it was not used."""


class OfflineError(ShituFeaturesError, ConnectionError):
    """Offline mode is on and the requested files are not in the cache."""


class UnsafeArchiveError(ShituFeaturesError, OSError):
    """An archive member would be written outside the extraction directory (absolute path, ``..``, link)."""


class UnsafeCheckpointError(ShituFeaturesError, ValueError):
    """A checkpoint pickle references an object a Paddle state dict never contains; it was not loaded."""


class CheckpointMismatchError(ShituFeaturesError, ValueError):
    """A checkpoint does not fit the model (missing keys or mismatched shapes); the message names the keys."""


class ImageDecodeError(ShituFeaturesError, ValueError):
    """An input could not be read or decoded as an image; the message names the input."""


class InvalidInputError(ShituFeaturesError, TypeError):
    """An input has an unsupported type, dtype or shape."""


class DeviceError(ShituFeaturesError, RuntimeError):
    """The requested device is not available (e.g. ``device="gpu"`` with a CPU-only Paddle)."""


class GalleryFormatError(ShituFeaturesError, ValueError):
    """A gallery file is corrupted, truncated, or of an unsupported format version."""


class CheckpointFormatError(ShituFeaturesError, ValueError):
    """A checkpoint file is truncated, corrupted, or does not hold a Paddle state dict; nothing was loaded."""


class ArchiveError(ShituFeaturesError, OSError):
    """An archive is truncated, corrupted or not a tar file; nothing was extracted from it."""


class ImageNotFoundError(ImageDecodeError, FileNotFoundError):
    """An image path does not exist or is not a readable file (also a ``FileNotFoundError``)."""


class OutputExistsError(ShituFeaturesError, FileExistsError):
    """An output directory already exists and is not empty; pass ``overwrite=True`` to replace it."""


class EmbeddingError(ShituFeaturesError, ArithmeticError):
    """The model produced a non-finite (NaN / inf) embedding for an input (e.g. an fp16 overflow on GPU)."""


class DatasetFormatError(ShituFeaturesError, ValueError):
    """A dataset list or CSV file is malformed (the message names the file, the line and what was expected)."""


class GalleryIdError(ShituFeaturesError, KeyError):
    """A gallery item id is already present (``Gallery.add``) or absent (``Gallery.remove``); the message lists them."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written
        return str(self.args[0]) if self.args else ""
