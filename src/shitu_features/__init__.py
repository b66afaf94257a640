"""shitu_features: PP-ShiTuV2 image embeddings on PaddlePaddle."""

from __future__ import annotations

from shitu_features._version import __version__

__all__ = ["__version__"]
