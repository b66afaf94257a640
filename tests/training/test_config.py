"""TrainConfig: recipe defaults, YAML round trip, overrides, and the PaddleClas YAML import."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import yaml

from shitu_features.errors import ConfigError
from shitu_features.training import TrainConfig, scale_lr
from shitu_features.training.config import IMAGENET_SSLD_URL, CELossConfig, TripletAngularMarginLossConfig


@pytest.fixture(scope="module")
def paddleclas_yaml(reference_dir: Path) -> Path:
    path = reference_dir.parent / "spec" / "GeneralRecognitionV2_PPLCNetV2_base.yaml"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def _assert_recipe_except_scale(cfg: TrainConfig) -> None:
    """Spec §1 values that do not depend on the number of devices."""
    assert cfg.model.backbone == "PPLCNetV2_base_ShiTu"
    assert cfg.model.embedding_size == 512 and cfg.model.neck == "BNNeck" and cfg.model.head == "FC"
    assert cfg.model.dropout_prob == 0.2
    assert cfg.model.pretrained == IMAGENET_SSLD_URL  # Backbone pretrained: true, use_ssld: true
    ce, taml = cfg.loss.terms
    assert ce == CELossConfig(weight=1.0, epsilon=0.1)
    assert taml == TripletAngularMarginLossConfig(weight=1.0, margin=0.5, normalize_feature=True, reduction="mean",
                                                  add_absolute=True, absolute_loss_weight=0.1, ap_value=0.8,
                                                  an_value=0.4, feature_from="features")
    opt = cfg.optimizer
    assert (opt.name, opt.momentum, opt.nesterov, opt.weight_decay, opt.multi_precision) == (
        "Momentum", 0.9, False, 1e-5, True)
    s = cfg.schedule
    assert (s.name, s.epochs, s.warmup_epochs, s.warmup_start_lr, s.eta_min) == ("cosine", 100, 5.0, 0.0, 0.0)
    d = cfg.data
    assert (d.batch_size, d.sample_per_id, d.drop_last, d.sample_method) == (256, 4, False, "id_avg_prob")
    assert tuple(d.image_size) == (224, 224) and d.interpolation == "bilinear"
    assert (d.flip, d.pad, d.rotation_prob, d.rotation_degrees) == (True, 10, 0.5, 90.0)
    assert d.scale == pytest.approx(1 / 255) and tuple(d.mean) == (0.485, 0.456, 0.406)
    assert tuple(d.std) == (0.229, 0.224, 0.225)
    e = cfg.eval
    assert (e.every_n_epochs, e.batch_size, tuple(e.topk), e.best_metric) == (1, 64, (1, 5), "recall@1")
    assert (e.feature_from, e.feature_normalize) == ("features", True)
    assert cfg.output.save_every_n_epochs == 1 and cfg.runtime.log_every == 20 and cfg.runtime.amp is False


def test_defaults_are_the_recipe_on_one_device() -> None:
    cfg = TrainConfig()
    _assert_recipe_except_scale(cfg)
    # 0.06 is for 8 GPUs x 256 images; one device with 256 images gets 0.06 * 256 / 2048.
    assert cfg.optimizer.lr == pytest.approx(0.0075) == scale_lr(256)
    assert scale_lr(8 * 256) == pytest.approx(0.06)
    assert cfg.model.class_num is None  # taken from the training data


def test_from_paddleclas_yaml_yields_the_spec_recipe(paddleclas_yaml: Path) -> None:
    cfg = TrainConfig.from_paddleclas_yaml(paddleclas_yaml)
    _assert_recipe_except_scale(cfg)
    assert cfg.optimizer.lr == 0.06  # as written: the YAML's lr belongs to its 8 x 256 global batch
    assert cfg.model.class_num == 192612
    assert cfg.data.id_list == [50030, 80700, 92019, 96015] and cfg.data.id_ratio == [4.0, 4.0]
    assert cfg.data.num_workers == 4 and cfg.runtime.device == "gpu"
    assert cfg.data.train.format == "list"
    assert cfg.data.train.root == "./dataset/" and cfg.data.train.file == "./dataset/train_reg_all_data_v2.txt"
    assert cfg.data.query.file == "./dataset/Aliproduct/val_list.txt"
    assert cfg.data.gallery is None  # query == gallery: self-retrieval with unique ids (spec §8)
    assert cfg.output.dir == "./output" and cfg.output.export_dir == "./inference"


def _modified(paddleclas_yaml: Path, tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(paddleclas_yaml.read_text())
    edit(data)
    out = tmp_path / "modified.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


@pytest.mark.parametrize("edit, key", [
    (lambda d: d["Optimizer"]["lr"].update(name="Piecewise"), "Optimizer.lr.name"),
    (lambda d: d["DataLoader"]["Train"]["dataset"]["transform_ops"].append({"RandomErasing": {"EPSILON": 0.5}}),
     "transform_ops[8].RandomErasing"),
    (lambda d: d["Global"].update(use_dali=True), "Global.use_dali"),
    (lambda d: d["Loss"]["Train"].append({"SupConLoss": {"weight": 1.0}}), "Loss.Train[2].SupConLoss"),
    (lambda d: d["Arch"]["Neck"]["bias_attr"].update(learning_rate=1.0), "Arch.Neck.bias_attr.learning_rate"),
    (lambda d: d.update(Slim={"quant": True}), "Slim"),
    (lambda d: d["DataLoader"]["Train"]["sampler"].update(name="DistributedRandomIdentitySampler"),
     "DataLoader.Train.sampler.name"),
    (lambda d: d["Optimizer"].update(no_weight_decay_name="bn"), "Optimizer.no_weight_decay_name"),
])
def test_paddleclas_yaml_rejects_unsupported_keys_by_name(paddleclas_yaml: Path, tmp_path: Path,
                                                          edit: Callable[[dict], None], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig.from_paddleclas_yaml(_modified(paddleclas_yaml, tmp_path, edit))


def test_paddleclas_yaml_maps_changed_values(paddleclas_yaml: Path, tmp_path: Path) -> None:
    def edit(d):  # type: ignore[no-untyped-def]
        d["Global"].update(epochs=7, eval_during_train=False, seed=3, pretrained_model="runs/x/latest")
        d["Optimizer"]["lr"].update(learning_rate=0.01, warmup_epoch=1)
        d["Metric"]["Eval"] = [{"mAP": {}}, {"Recallk": {"topk": [1, 10]}}]
        for op in d["DataLoader"]["Train"]["dataset"]["transform_ops"] + \
                d["DataLoader"]["Eval"]["Query"]["dataset"]["transform_ops"] + \
                d["DataLoader"]["Eval"]["Gallery"]["dataset"]["transform_ops"]:
            for name in ("ResizeImage", "RandCropImageV2"):
                if name in op:
                    op[name]["size"] = [128, 96]
        d["Global"]["image_shape"] = [3, 96, 128]

    cfg = TrainConfig.from_paddleclas_yaml(_modified(paddleclas_yaml, tmp_path, edit))
    assert cfg.schedule.epochs == 7 and cfg.eval.every_n_epochs == 0 and cfg.runtime.seed == 3
    assert cfg.model.pretrained == "runs/x/latest.pdparams"  # Global.pretrained_model wins over the SSLD backbone
    assert cfg.optimizer.lr == 0.01 and cfg.schedule.warmup_epochs == 1.0
    assert cfg.eval.best_metric == "mAP" and tuple(cfg.eval.topk) == (1, 10)
    assert tuple(cfg.data.image_size) == (128, 96)


def test_paddleclas_yaml_rejects_inconsistent_sizes(paddleclas_yaml: Path, tmp_path: Path) -> None:
    def edit(d):  # type: ignore[no-untyped-def]
        d["DataLoader"]["Eval"]["Query"]["dataset"]["transform_ops"][1]["ResizeImage"]["size"] = [256, 256]

    with pytest.raises(ConfigError, match="Query.dataset.transform_ops.1.*ResizeImage.size.*differs"):
        TrainConfig.from_paddleclas_yaml(_modified(paddleclas_yaml, tmp_path, edit))


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig().with_overrides(["data.train.format=folder", "data.train.root=/data/x", "schedule.epochs=3"])
    path = tmp_path / "cfg.yaml"
    cfg.to_yaml(path)
    assert TrainConfig.from_yaml(path) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_overrides_parse_yaml_scalars_and_validate() -> None:
    cfg = TrainConfig().with_overrides([
        "optimizer.lr=1e-3", "runtime.amp=true", "model.pretrained=null", "eval.topk=[1, 10]",
        "loss.terms.0.epsilon=0.2", "loss.terms.1.margin=0.3", "data.query.file=q.txt", "data.query.root=/imgs",
    ])
    assert cfg.optimizer.lr == 1e-3 and isinstance(cfg.optimizer.lr, float)
    assert cfg.runtime.amp is True and cfg.model.pretrained is None and tuple(cfg.eval.topk) == (1, 10)
    assert cfg.loss.terms[0].epsilon == 0.2 and cfg.loss.terms[1].margin == 0.3
    assert cfg.data.query.file == "q.txt" and cfg.data.query.root == "/imgs"
    assert TrainConfig().optimizer.lr == pytest.approx(0.0075)  # the original is unchanged (frozen)


@pytest.mark.parametrize("override, message", [
    ("optimzer.lr=0.1", "did you mean 'optimizer'"),
    ("optimizer.lrr=0.1", "did you mean 'lr'"),
    ("optimizer.lr=-1", "optimizer.lr"),
    ("data.batch_size=30", "multiple of sample_per_id"),
    ("loss.terms.7.margin=1", "not an index"),
    ("eval.best_metric=recall@10", "best_metric"),
    ("model.backbone=PPLCNet", "did you mean"),
    ("no_equals_sign", "section.key=value"),
])
def test_bad_overrides_raise_config_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig().with_overrides([override])


def test_unknown_keys_are_rejected_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("schedule:\n  epoch: 10\n")
    with pytest.raises(ConfigError, match=r"schedule\.epoch: unknown key \(did you mean 'epochs'"):
        TrainConfig.from_yaml(path)
