"""shitu_features: PP-ShiTuV2 image embeddings on PaddlePaddle.

Turn images into 512-d, L2-normalised float32 vectors for image retrieval, with weights compatible with
PaddleClas's PP-ShiTuV2 general recognition model, and fine-tune it on your own catalogue.

>>> from shitu_features import Extractor
>>> vecs = Extractor.from_pretrained().embed(["a.jpg", "b.jpg"])   # (2, 512) float32, unit norm

Where things live (one hop from here):

- :class:`Extractor` (``inference/extractor.py``): ``from_pretrained`` + ``embed``; preprocessing in
  ``inference/preprocess.py``, the Paddle Inference predictor in ``inference/predictor.py``, export in
  ``inference/export.py``, downloads and cache in ``inference/hub.py``, official weights in ``inference/registry.py``;
- :class:`Trainer` / :class:`TrainConfig` (``training/``): fine-tuning, with ``data/`` (datasets, PK sampler,
  transforms, loader) and :mod:`losses`;
- :mod:`models`: PP-LCNetV2 backbone, BN neck, heads, ``RecModel``, checkpoint loading;
- :mod:`evaluation`: exact Recall@k / mAP; :class:`Gallery` (``gallery.py``): search embeddings;
- :mod:`errors`: every exception; ``cli.py``: the ``shitu-features`` command.
"""

from __future__ import annotations

import warnings

# Paddle warns about a missing C++ compiler cache on import; it concerns building custom ops, never this library,
# and only confuses users. The filter is scoped to this one import.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    import paddle  # noqa: F401

from shitu_features import errors, evaluation, losses, models
from shitu_features._version import __version__
from shitu_features.errors import ShituFeaturesError
from shitu_features.evaluation import retrieval_metrics
from shitu_features.gallery import Gallery
from shitu_features.inference.extractor import EmbedResult, Extractor
from shitu_features.inference.preprocess import PreprocessConfig
from shitu_features.models import RecModel, build_rec_model, load_checkpoint
from shitu_features.serialization import load_state_dict, save_state_dict

__all__ = [
    "__version__",
    "Extractor",
    "EmbedResult",
    "PreprocessConfig",
    "Gallery",
    "RecModel",
    "build_rec_model",
    "load_checkpoint",
    "load_state_dict",
    "save_state_dict",
    "retrieval_metrics",
    "ShituFeaturesError",
    "errors",
    "evaluation",
    "losses",
    "models",
]
