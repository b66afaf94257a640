"""Trainer: initial weights with a report, output-dir safety, resume (exact, and after a crash), export parity."""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import paddle
import pytest

from shitu_features.errors import ConfigError, ModelNotFoundError, OutputExistsError
from shitu_features.models import BACKBONES, build_rec_model
from shitu_features.serialization import save_state_dict
from shitu_features.training import TrainConfig, Trainer
from shitu_features.training.checkpoint import MODEL_FILE, STATE_FILE, load_training_checkpoint, save_checkpoint
from shitu_features.training.trainer import train_transform_of

if TYPE_CHECKING:
    from _http_server import LoopbackServer  # tests/_http_server.py, served by conftest's loopback_server

MakeConfig = Callable[..., TrainConfig]  # the make_config fixture of conftest.py


def test_missing_training_data_is_a_config_error(tmp_path: Path) -> None:
    cfg = TrainConfig().with_overrides({"model.pretrained": None, "output.dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="data.train is not set"):
        Trainer(cfg).setup()


def test_train_transform_of_is_the_augmentation_the_trainer_uses(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "run", **{"data.pad": 4, "data.rotation_degrees": 30.0, "data.rotation_prob": 1.0,
                                          "data.interpolation": "bicubic", "data.mean": [0.5, 0.4, 0.3]})
    trainer = Trainer(cfg)
    trainer.setup()
    train = trainer.train_dataset
    assert train is not None
    image = train.load_image(0)
    used = train.transform(image, np.random.default_rng(7))
    assert used.shape == (3, 32, 32)
    np.testing.assert_array_equal(train_transform_of(cfg)(image, np.random.default_rng(7)), used)


def test_output_dir_with_checkpoints_is_not_clobbered(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "run")
    with pytest.raises(ModelNotFoundError, match="resume requested"):
        Trainer(cfg).setup(resume=True)
    save_checkpoint(tmp_path / "run" / "checkpoints", "latest", model={"w": np.zeros(1, np.float32)},
                    optimizer={"w@velocity_0": np.zeros(1, np.float32)}, state={"epoch": 1})
    with pytest.raises(OutputExistsError, match="runtime.resume=auto"):
        Trainer(cfg).setup()


def test_imagenet_backbone_initialisation_reports_what_was_skipped(
        make_config: MakeConfig, tmp_path: Path) -> None:
    # An ImageNet-style PPLCNetV2_base checkpoint: backbone keys only, last_conv 1280 wide, an fc, stage 3 with
    # stride 2 (two rep branches in stages.3.0).
    paddle.seed(3)
    imagenet = BACKBONES["PPLCNetV2_base"](class_num=1000)
    path = tmp_path / "PPLCNetV2_base_pretrained.pdparams"
    save_state_dict(imagenet.state_dict(), path)
    trainer = Trainer(make_config(tmp_path / "run", **{"model.pretrained": str(path)}))
    trainer.setup()
    report = trainer.load_report
    assert report is not None and len(report.loaded) > 250
    assert "backbone.last_conv.weight" in report.skipped
    assert "backbone.last_conv.bias" in report.missing  # the ImageNet last_conv has no bias (spec §2.3)
    assert any(k.startswith("backbone.fc.") for k in report.unexpected)
    assert "backbone.stages.3.0.dw_conv_list.2.conv.weight" in report.missing  # the ShiTu variant's new branch
    np.testing.assert_array_equal(trainer.model.backbone.stem[0].conv.weight.numpy(),
                                  imagenet.stem[0].conv.weight.numpy())


def test_recmodel_checkpoint_with_another_head_loads_strictly(
        make_config: MakeConfig, tmp_path: Path) -> None:
    paddle.seed(4)
    official = build_rec_model(class_num=11)
    path = tmp_path / "official.pdparams"
    save_state_dict(official.state_dict(), path)
    trainer = Trainer(make_config(tmp_path / "run", **{"model.pretrained": str(path)}))
    trainer.setup()
    assert list(trainer.load_report.skipped) == ["head.fc.weight"]  # 11 classes there, 6 here
    assert not trainer.load_report.missing and not trainer.load_report.unexpected
    np.testing.assert_array_equal(trainer.model.neck.feat_bn.weight.numpy(), official.neck.feat_bn.weight.numpy())


def test_official_name_resolves_to_its_training_checkpoint(
        make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        loopback_server: LoopbackServer) -> None:
    """``model.pretrained: PP-ShiTuV2`` downloads the official .pdparams (here from a loopback mirror)."""
    from shitu_features.inference.registry import OFFICIAL_MODELS

    paddle.seed(5)
    official = build_rec_model(class_num=11)
    save_state_dict(official.state_dict(), tmp_path / "ckpt.pdparams")
    url = next(a.url for a in OFFICIAL_MODELS["PP-ShiTuV2"].artifacts if a.format == "pdparams")
    served = urllib.parse.urlsplit(url).path
    loopback_server.add(served, (tmp_path / "ckpt.pdparams").read_bytes())  # any other path: 404
    monkeypatch.setenv("SHITU_FEATURES_ENDPOINT", loopback_server.base_url)
    trainer = Trainer(make_config(tmp_path / "run", **{"model.pretrained": "PP-ShiTuV2"}))
    trainer.setup()
    loopback_server.stop()
    assert loopback_server.requests == [served]  # the training checkpoint, not an inference tarball
    assert trainer.load_report is not None and list(trainer.load_report.skipped) == ["head.fc.weight"]
    np.testing.assert_array_equal(trainer.model.backbone.last_conv.weight.numpy(),
                                  official.backbone.last_conv.weight.numpy())


def _weights(path: Path) -> dict:
    return load_training_checkpoint(path, with_optimizer=False).model


@pytest.mark.slow
def test_resume_matches_a_straight_run_even_after_a_crash_mid_save(
        make_config: MakeConfig, tmp_path: Path) -> None:
    """4 epochs straight == 2 epochs, a crash while saving epoch 3, resume from epoch 2, 2 more epochs."""
    overrides = {"schedule.epochs": 4, "schedule.iters_per_epoch": 1, "schedule.warmup_epochs": 1}
    straight = Trainer(make_config(tmp_path / "straight", **overrides))
    straight.fit()

    out = tmp_path / "split"
    first = Trainer(make_config(out, **overrides))
    first.fit(stop_at_epoch=2)
    ckpts = out / "checkpoints"
    # The crash: the epoch-3 save had renamed 'latest' aside and left a half-written new directory.
    shutil.copytree(ckpts / "latest", ckpts / ".latest.tmp-crashed")
    (ckpts / ".latest.tmp-crashed" / STATE_FILE).unlink()
    model_file = ckpts / ".latest.tmp-crashed" / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:1000])
    (ckpts / "latest").rename(ckpts / ".latest.old-crashed")

    second = Trainer(make_config(out, **overrides))
    result = second.fit(resume=True)
    assert result.epochs_completed == 4 and result.global_step == 4
    assert [s for s, _ in second.lr_trace] == [2, 3]
    assert first.lr_trace + second.lr_trace == straight.lr_trace  # the same learning rate at every step
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest"]  # the crash leftovers were cleaned up

    a, b = _weights(tmp_path / "straight" / "checkpoints" / "latest"), _weights(ckpts / "latest")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_exported_model_gives_the_trained_models_eval_features(
        make_config: MakeConfig, tmp_path: Path) -> None:
    from shitu_features.inference.extractor import Extractor

    cfg = make_config(tmp_path / "run", **{
        "schedule.epochs": 1, "schedule.iters_per_epoch": 2, "output.export": True, "eval.every_n_epochs": 1})
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert result.export_dir == tmp_path / "run" / "inference"
    # with evaluation, the export holds the best checkpoint: after one epoch, the trained weights
    assert result.best_epoch == 1

    query = trainer.query_dataset
    assert query is not None
    expected = trainer.extract(query)  # eval mode, branch (non-fused) form, the trainer's own preprocessing
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    extractor = Extractor.from_pretrained(result.export_dir)
    got = extractor.embed(query.paths, batch_size=8)
    assert got.shape == expected.shape == (30, 512)
    np.testing.assert_allclose(got, expected, atol=2e-5)
