"""shitu_features: PP-ShiTuV2 image embeddings on PaddlePaddle.

Turn images into 512-d, L2-normalised float32 vectors for image retrieval, with weights compatible with
PaddleClas's PP-ShiTuV2 general recognition model, and fine-tune it on your own catalogue.

>>> from shitu_features import Extractor
>>> vecs = Extractor.from_pretrained().embed(["a.jpg", "b.jpg"])   # (2, 512) float32, unit norm

Where things live (one hop from here; the table :data:`_EXPORTS` below maps every public name to its module):

- :class:`Extractor` (``inference/extractor.py``): ``from_pretrained`` + ``embed``; preprocessing in
  ``inference/preprocess.py``, the Paddle Inference predictor in ``inference/predictor.py``, export in
  ``inference/export.py``, downloads and cache in ``inference/hub.py``, official weights in ``inference/registry.py``;
- :class:`Trainer` / :class:`TrainConfig` (``training/``): fine-tuning, with ``data/`` (datasets, PK sampler,
  transforms, loader) and :mod:`~shitu_features.losses`;
- :mod:`~shitu_features.models`: PP-LCNetV2 backbone, BN neck, heads, ``RecModel``, checkpoint loading;
- :mod:`~shitu_features.evaluation`: exact Recall@k / mAP; :class:`Gallery` (``gallery.py``): search embeddings;
- :mod:`~shitu_features.errors`: every exception; ``cli/``: the ``shitu-features`` command.

Names are imported on first access (PEP 562): ``import shitu_features`` is cheap, and modules that need only
numpy (``serialization``, ``evaluation``, the CLI's ``--help``) do not pay for importing Paddle.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from shitu_features._version import __version__

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from shitu_features import data, errors, evaluation, losses, models, training
    from shitu_features.errors import ShituFeaturesError
    from shitu_features.evaluation import retrieval_metrics
    from shitu_features.gallery import Gallery
    from shitu_features.inference.extractor import EmbedResult, Extractor
    from shitu_features.inference.preprocess import PreprocessConfig
    from shitu_features.models import RecModel, build_rec_model, load_checkpoint
    from shitu_features.serialization import load_state_dict, save_state_dict
    from shitu_features.training import TrainConfig, Trainer

#: public name -> (module, attribute or None for the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "Extractor": ("shitu_features.inference.extractor", "Extractor"),
    "EmbedResult": ("shitu_features.inference.extractor", "EmbedResult"),
    "PreprocessConfig": ("shitu_features.inference.preprocess", "PreprocessConfig"),
    "Trainer": ("shitu_features.training", "Trainer"),
    "TrainConfig": ("shitu_features.training", "TrainConfig"),
    "Gallery": ("shitu_features.gallery", "Gallery"),
    "RecModel": ("shitu_features.models", "RecModel"),
    "build_rec_model": ("shitu_features.models", "build_rec_model"),
    "load_checkpoint": ("shitu_features.models", "load_checkpoint"),
    "load_state_dict": ("shitu_features.serialization", "load_state_dict"),
    "save_state_dict": ("shitu_features.serialization", "save_state_dict"),
    "retrieval_metrics": ("shitu_features.evaluation", "retrieval_metrics"),
    "ShituFeaturesError": ("shitu_features.errors", "ShituFeaturesError"),
    "errors": ("shitu_features.errors", None),
    "evaluation": ("shitu_features.evaluation", None),
    "losses": ("shitu_features.losses", None),
    "data": ("shitu_features.data", None),
    "training": ("shitu_features.training", None),
    "models": ("shitu_features.models", None),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'shitu_features' has no attribute {name!r}") from None
    # Paddle warns about a missing C++ compiler cache on import; it concerns building custom ops, never this
    # library, and only confuses users. The filter is scoped to this import.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
        module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # cache: later lookups are plain attribute access
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
