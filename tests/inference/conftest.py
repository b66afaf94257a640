"""Fixtures of the inference tests: one export of the reference weights per session, extractors over it.

Exporting takes a few seconds, so the fixture weights (``reference/model/rec_model.pdparams``, the same
architecture as the official model with random weights) are exported once, into a session temporary folder,
and every test reads that folder (never writes to it).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def reference_checkpoint(reference_dir: Path) -> Path:
    """The reference training checkpoint (un-fused, with a 100-class head)."""
    return reference_dir / "model" / "rec_model.pdparams"


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the whole session (each test otherwise gets a fresh SHITU_FEATURES_HOME)."""
    return tmp_path_factory.mktemp("export_cache")


@pytest.fixture(scope="session")
def extractor(reference_checkpoint: Path, export_cache: Path):
    """An Extractor loaded from the reference ``.pdparams``: built, fused and exported once (Paddle 3 PIR,
    dynamic H/W) into the session cache, then served from there (CPU, oneDNN, default threads)."""
    from shitu_features.inference.extractor import Extractor

    return Extractor.from_pretrained(reference_checkpoint, cache_dir=export_cache)


@pytest.fixture(scope="session")
def exported_dir(extractor) -> Path:
    """The directory of the session export (``inference.json``, ``.pdiparams``, ``inference.yml``, ``config.json``)."""
    return extractor.model_dir


@pytest.fixture(scope="session")
def legacy_extractor(reference_dir: Path):
    """An Extractor over the Paddle 2.6 legacy export (``inference.pdmodel``) of the same weights."""
    from shitu_features.inference.extractor import Extractor

    return Extractor.from_pretrained(reference_dir / "legacy_infer")


@pytest.fixture(scope="session")
def preprocess_images(reference_dir: Path) -> list[Path]:
    """The reference preprocessing images, in ``images.txt`` order."""
    folder = reference_dir / "preprocess"
    return [folder / name for name in (folder / "images.txt").read_text().split()]

