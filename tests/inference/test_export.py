"""Export: Paddle 3 inference directory with config.json and a PaddleX inference.yml, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from shitu_features._version import __version__
from shitu_features.errors import ConfigError, OutputExistsError
from shitu_features.inference.export import atomic_directory, export_inference_model, read_model_config
from shitu_features.inference.preprocess import PreprocessConfig


def test_export_layout_and_config(exported_dir: Path, reference_checkpoint: Path) -> None:
    assert sorted(p.name for p in exported_dir.iterdir()) == [
        "config.json", "inference.json", "inference.pdiparams", "inference.yml"]
    config = read_model_config(exported_dir)
    assert config.model_name == "rec_model" and config.embedding_size == 512
    assert config.input_size == (224, 224) and config.dynamic_input_size
    assert config.preprocess == PreprocessConfig()
    assert config.library_version == __version__ and config.paddle_version == paddle.__version__
    assert config.source is not None and config.source["checkpoint"] == str(reference_checkpoint)
    assert len(config.source["sha256"]) == 64
    raw = json.loads((exported_dir / "config.json").read_text())
    assert raw["format_version"] == 1 and raw["preprocess"]["scale"] == 0.00392157
    # The PaddleX-layout yml describes the same preprocessing.
    assert PreprocessConfig.from_inference_yml(exported_dir / "inference.yml") == config.preprocess
    # No temporary folder is left next to the export (only its lock file).
    assert sorted(p.name for p in exported_dir.parent.iterdir()) == [exported_dir.name, exported_dir.name + ".lock"]


def test_fused_weights_only_no_head(exported_dir: Path, reference_checkpoint: Path) -> None:
    # The head (100 x 512) is not exported: the params file is about the backbone + neck size (~18 MB).
    size = (exported_dir / "inference.pdiparams").stat().st_size
    assert 17_000_000 < size < reference_checkpoint.stat().st_size - 100 * 512 * 4


@pytest.fixture()
def small_model():
    from shitu_features.models import build_rec_model

    paddle.seed(0)
    return build_rec_model(class_num=10)


def test_export_leaves_the_model_untouched_and_refuses_to_clobber(small_model, tmp_path: Path) -> None:
    target = tmp_path / "out"
    export_inference_model(small_model, target, verify=False, model_name="tiny")
    assert small_model.training and not small_model.is_reparameterized and small_model.head is not None
    assert read_model_config(target).model_name == "tiny"
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        export_inference_model(small_model, target, verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_argument_checks(small_model, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="input_size"):
        export_inference_model(small_model, tmp_path / "a", input_size=(160, 160))
    with pytest.raises(ConfigError, match="embed"):
        export_inference_model(paddle.nn.Linear(2, 2), tmp_path / "b")
    assert list(tmp_path.iterdir()) == []  # nothing written on failure


def test_atomic_directory_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target) as tmp:
            (tmp / "half-written").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.mkdir()  # an empty existing directory is fine to fill
    with atomic_directory(target) as tmp:
        (tmp / "file").write_text("y")
    assert (target / "file").read_text() == "y"
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new").write_text("z")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the old copy is gone too
    (tmp_path / "plain").write_text("not a dir")
    with pytest.raises(OutputExistsError, match="not a directory"):
        with atomic_directory(tmp_path / "plain"):
            pass


def test_exported_graph_reproduces_reference_features(exported_dir: Path, reference_dir: Path) -> None:
    from shitu_features.inference.predictor import Predictor

    x = np.load(reference_dir / "model" / "input_160.npy")
    expected = np.load(reference_dir / "model" / "features_160_rep.npy")
    got = Predictor(exported_dir / "inference.json", exported_dir / "inference.pdiparams", num_threads=1).run(x)
    assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()


def test_atomic_directory_gets_plain_mkdir_permissions(tmp_path) -> None:
    import os
    import stat

    from shitu_features.inference.export import atomic_directory

    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "f.txt").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask
