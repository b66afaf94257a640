from __future__ import annotations

from pathlib import Path

import paddle
import pytest

from shitu_features.models import RecModel, build_rec_model, load_checkpoint


@pytest.fixture(scope="module")
def model_dir(reference_dir: Path) -> Path:
    return reference_dir / "model"


@pytest.fixture()
def ref_model(model_dir: Path) -> RecModel:
    """The fixture weights in a fresh model, eval mode, un-fused."""
    model = build_rec_model(class_num=100)
    load_checkpoint(model, paddle.load(str(model_dir / "rec_model.pdparams")))
    model.eval()
    return model
