"""Translate a PaddleClas GeneralRecognitionV2 YAML into a :class:`~shitu_features.training.TrainConfig` dict.

Every key of the PaddleClas file is handled in one of three ways, and nothing is dropped silently:

- mapped to a field (``Global.epochs`` -> ``schedule.epochs``); the table is ``docs/migrating.md``;
- checked: the key is accepted only with the value this library implements (``Arch.name: RecModel``,
  ``BackboneStopLayer.name: flatten``, the recipe's BN-neck initialisation, ...);
- inert: settings with no effect on training here (``use_visualdl: false``, ``use_shared_memory``, the
  disabled AMP settings), accepted and logged at DEBUG level.

Anything else raises :class:`~shitu_features.errors.ConfigError` naming the key path, e.g.
``Optimizer.lr.name: 'Piecewise' is not supported (supported: Cosine)``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

from shitu_features.errors import ConfigError

__all__ = ["paddleclas_yaml_to_dict"]

logger = logging.getLogger(__name__)

_MISSING = object()


class _Reader:
    """Walks one mapping of the PaddleClas YAML, remembering which keys were consumed."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
        self.data = dict(data)
        self.where = where
        self.used: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any = _MISSING) -> Any:
        self.used.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise ConfigError(f"{self.path(key)} is missing")
        return default

    def section(self, key: str) -> _Reader:
        """A required sub-mapping."""
        return _Reader(self.get(key), self.path(key))

    def optional_section(self, key: str) -> Optional[_Reader]:
        """A sub-mapping that may be absent or null."""
        value = self.get(key, None)
        return None if value is None else _Reader(value, self.path(key))

    def expect(self, key: str, allowed: Sequence[Any], default: Any = _MISSING, why: str = "") -> Any:
        """Accept the key only with one of ``allowed`` values."""
        value = self.get(key, default)
        if value not in allowed:
            extra = f"; {why}" if why else ""
            raise ConfigError(f"{self.path(key)}: {value!r} is not supported (supported: "
                              f"{', '.join(map(repr, allowed))}){extra}")
        return value

    def inert(self, *keys: str) -> None:
        """Keys that have no effect here; logged, not mapped."""
        for key in keys:
            if key in self.data:
                self.used.add(key)
                logger.debug("PaddleClas key %s=%r has no effect in shitu_features", self.path(key), self.data[key])

    def finish(self) -> None:
        """Reject every key that was not consumed."""
        left = [k for k in self.data if k not in self.used]
        if left:
            raise ConfigError(f"{', '.join(self.path(k) for k in left)}: not supported by shitu_features "
                              "(see docs/migrating.md for the keys it maps)")


def _load(path: Union[str, os.PathLike[str]]) -> Dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read PaddleClas config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a PaddleClas config is a mapping of sections, got {type(data).__name__}")
    return data


def paddleclas_yaml_to_dict(path: Union[str, os.PathLike[str]]) -> Dict[str, Any]:
    """Read a PaddleClas YAML and return the equivalent :class:`TrainConfig` as a nested dict.

    Raises:
        ConfigError: a key or value this library does not support (the message names the key path).
    """
    root = _Reader(_load(path), "")
    out: Dict[str, Any] = {k: {} for k in ("model", "data", "loss", "optimizer", "schedule", "eval", "output",
                                           "runtime")}
    try:
        _global(root.section("Global"), out)
        amp = root.optional_section("AMP")
        if amp is not None:
            _amp(amp, out)
        _arch(root.section("Arch"), out)
        _loss(root.section("Loss"), out)
        _optimizer(root.section("Optimizer"), out)
        _dataloader(root.section("DataLoader"), out)
        metric = root.optional_section("Metric")
        if metric is not None:
            _metric(metric, out)
        root.inert("Infer")  # tools/infer.py settings; the Extractor carries its own preprocessing
        root.finish()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return out


# -- sections ---------------------------------------------------------------------------------------------------


def _global(g: _Reader, out: Dict[str, Any]) -> None:
    ckpt = g.get("checkpoints", None)
    if ckpt:
        out["runtime"]["resume"] = str(ckpt)
    pretrained = g.get("pretrained_model", None)
    if pretrained:
        # PaddleClas appends ".pdparams" to the prefix it is given
        text = str(pretrained)
        out["model"]["pretrained"] = text if text.endswith(".pdparams") else text + ".pdparams"
    out["output"]["dir"] = str(g.get("output_dir", "./output"))
    device = g.expect("device", ["gpu", "cpu"], default="gpu", why="other accelerators are not wired in the Trainer")
    out["runtime"]["device"] = device
    out["output"]["save_every_n_epochs"] = int(g.get("save_interval", 1))
    during = bool(g.get("eval_during_train", True))
    interval = int(g.get("eval_interval", 1))
    out["eval"]["every_n_epochs"] = interval if during else 0
    out["schedule"]["epochs"] = int(g.get("epochs"))
    out["runtime"]["log_every"] = int(g.get("print_batch_step", 10))
    g.expect("use_visualdl", [False, None], default=False, why="log with the logging module or read the tqdm bar")
    g.expect("eval_mode", ["retrieval"], default="retrieval", why="this library trains retrieval embeddings")
    out["eval"]["feature_from"] = g.expect("retrieval_feature_from", ["features", "backbone"], default="features")
    g.expect("re_ranking", [False, None], default=False, why="k-reciprocal re-ranking is not implemented")
    g.expect("use_dali", [False, None], default=False, why="data loading uses OpenCV worker threads")
    if "seed" in g.data:
        seed = g.get("seed")
        if seed is not None:
            out["runtime"]["seed"] = int(seed)
    if "feature_normalize" in g.data:
        out["eval"]["feature_normalize"] = bool(g.get("feature_normalize"))
    g.expect("feature_binarize", [None, False], default=None, why="binary features are a PP-ShiTu V1 feature")
    g.expect("to_static", [False, None], default=False, why="training runs in dygraph mode")
    shape = g.get("image_shape", [3, 224, 224])
    if not (isinstance(shape, list) and len(shape) == 3 and shape[0] == 3):
        raise ConfigError(f"{g.path('image_shape')}: expected [3, H, W], got {shape!r}")
    out["_image_shape"] = (int(shape[2]), int(shape[1]))  # (W, H), checked against the resize size below
    inference_dir = g.get("save_inference_dir", None)
    if inference_dir:
        out["output"]["export_dir"] = str(inference_dir)
    g.finish()


def _amp(a: _Reader, out: Dict[str, Any]) -> None:
    out["runtime"]["amp"] = bool(a.get("use_amp", False))
    out["runtime"]["amp_init_loss_scaling"] = float(a.get("scale_loss", 128.0))
    out["runtime"]["amp_dynamic_loss_scaling"] = bool(a.get("use_dynamic_loss_scaling", True))
    out["runtime"]["amp_level"] = a.expect("level", ["O1", "O2"], default="O1")
    a.expect("use_fp16_test", [False, None], default=False, why="evaluation runs in float32")
    a.expect("use_promote", [False, None], default=False)
    a.finish()


def _initializer(r: Optional[_Reader], expected: Dict[str, Any], what: str) -> None:
    """Accept an ``initializer: {name, value|std}`` only when it is the one the model already uses."""
    if r is None:
        return
    name = r.expect("name", [expected["name"]], why=f"{what} is initialised as {expected}")
    for key, value in expected.items():
        if key == "name":
            continue
        got = r.get(key, value if key == "mean" else _MISSING)
        if not math.isclose(float(got), float(value)):
            raise ConfigError(f"{r.path(key)}: {got!r} is not supported ({what} uses {name} {key}={value})")
    r.finish()


def _arch(a: _Reader, out: Dict[str, Any]) -> None:
    model = out["model"]
    a.expect("name", ["RecModel"], why="the trainer builds backbone -> neck -> head")
    a.expect("infer_output_key", ["features"], default="features", why="the exported model outputs the neck features")
    a.expect("infer_add_softmax", [False], default=False)
    a.expect("use_sync_bn", [False, None], default=False, why="BatchNorm statistics are per process, as in the recipe")

    backbone = a.section("Backbone")
    from shitu_features.models import BACKBONES, HEADS

    model["backbone"] = backbone.expect("name", sorted(BACKBONES))
    pretrained = backbone.get("pretrained", False)
    use_ssld = bool(backbone.get("use_ssld", False))
    if pretrained is True:
        if "pretrained" not in model:  # Global.pretrained_model takes precedence, as in PaddleClas
            from shitu_features.training.config import IMAGENET_SSLD_URL, IMAGENET_URL

            model["pretrained"] = IMAGENET_SSLD_URL if use_ssld else IMAGENET_URL
    elif isinstance(pretrained, str) and pretrained:
        model.setdefault("pretrained", pretrained if pretrained.endswith(".pdparams") else pretrained + ".pdparams")
    elif pretrained in (False, None):
        model.setdefault("pretrained", None)
    else:
        raise ConfigError(f"{backbone.path('pretrained')}: expected true, false or a path, got {pretrained!r}")
    if "class_expand" in backbone.data:
        model["embedding_size"] = int(backbone.get("class_expand"))
    if "dropout_prob" in backbone.data:
        model["dropout_prob"] = float(backbone.get("dropout_prob"))
    backbone.finish()

    stop = a.optional_section("BackboneStopLayer")
    if stop is not None:
        stop.expect("name", ["flatten"], why="the backbone ends at flatten (no ImageNet fc)")
        stop.finish()

    neck = a.optional_section("Neck")
    if neck is None:
        model["neck"] = None
    else:
        model["neck"] = neck.expect("name", ["BNNeck"])
        width = int(neck.get("num_features"))
        if width != model.get("embedding_size", 512):
            raise ConfigError(f"{neck.path('num_features')}: {width} differs from the embedding size "
                              f"{model.get('embedding_size', 512)} (Backbone.class_expand)")
        w = neck.optional_section("weight_attr")
        if w is not None:
            _initializer(w.section("initializer"), {"name": "Constant", "value": 1.0}, "the BN-neck weight")
            w.finish()
        b = neck.optional_section("bias_attr")
        if b is not None:
            _initializer(b.optional_section("initializer"), {"name": "Constant", "value": 0.0},
                         "the BN-neck bias")
            lr = float(b.get("learning_rate", 1.0e-20))
            if lr > 1e-10:
                raise ConfigError(f"{b.path('learning_rate')}: {lr} is not supported; the BN-neck bias is frozen "
                                  "(learning_rate 1e-20) as in the recipe")
            b.finish()
        neck.finish()

    head = a.section("Head")
    model["head"] = head.expect("name", sorted(HEADS))
    width = int(head.get("embedding_size"))
    if width != model.get("embedding_size", 512):
        raise ConfigError(f"{head.path('embedding_size')}: {width} differs from the embedding size "
                          f"{model.get('embedding_size', 512)}")
    model["class_num"] = int(head.get("class_num"))
    kwargs: Dict[str, Any] = {}
    for key in ("margin", "scale", "easy_margin"):
        if key in head.data:
            kwargs[key] = head.get(key)
    if kwargs:
        model["head_kwargs"] = kwargs
    if model["head"] == "FC":
        w = head.optional_section("weight_attr")
        if w is not None:
            _initializer(w.section("initializer"), {"name": "Normal", "mean": 0.0, "std": 0.001}, "the FC weight")
            w.finish()
        head.expect("bias_attr", [False], default=False, why="the FC head has no bias in the recipe")
    head.finish()
    a.finish()


_LOSS_KEYS: Dict[str, Sequence[str]] = {
    "CELoss": ("weight", "epsilon"),
    "TripletAngularMarginLoss": ("weight", "margin", "normalize_feature", "reduction", "add_absolute",
                                 "absolute_loss_weight", "ap_value", "an_value", "feature_from"),
    "TripletLoss": ("weight", "margin", "normalize_feature", "feature_from"),
}


def _loss(loss: _Reader, out: Dict[str, Any]) -> None:
    train = loss.get("Train")
    if not isinstance(train, list) or not train:
        raise ConfigError(f"{loss.path('Train')}: expected a non-empty list of {{LossName: {{...}}}}")
    terms: List[Dict[str, Any]] = []
    for i, entry in enumerate(train):
        where = f"{loss.path('Train')}[{i}]"
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise ConfigError(f"{where}: expected a one-key mapping {{LossName: {{...}}}}, got {entry!r}")
        ((name, params),) = entry.items()
        if name not in _LOSS_KEYS:
            raise ConfigError(f"{where}.{name}: loss not supported (supported: {', '.join(_LOSS_KEYS)})")
        r = _Reader(params or {}, f"{where}.{name}")
        term = {"type": name}
        for key in _LOSS_KEYS[name]:
            if key in r.data:
                term[key] = r.get(key)
        if name == "CELoss" and "epsilon" not in r.data:
            term["epsilon"] = None  # PaddleClas CELoss without epsilon does not smooth
        r.finish()
        terms.append(term)
    out["loss"]["terms"] = terms
    # Loss.Eval only switches on the reference's retrieval metrics (spec §1); evaluation here always computes them.
    loss.inert("Eval")
    loss.finish()


def _optimizer(o: _Reader, out: Dict[str, Any]) -> None:
    opt, sched = out["optimizer"], out["schedule"]
    opt["name"] = o.expect("name", ["Momentum"])
    opt["momentum"] = float(o.get("momentum", 0.9))
    opt["nesterov"] = bool(o.get("use_nesterov", False))
    opt["multi_precision"] = bool(o.get("multi_precision", True))  # PaddleClas builds Momentum with it on by default
    lr = o.section("lr")
    sched["name"] = {"Cosine": "cosine"}[lr.expect("name", ["Cosine"])]
    opt["lr"] = float(lr.get("learning_rate"))
    sched["warmup_epochs"] = float(lr.get("warmup_epoch", 0))
    sched["warmup_start_lr"] = float(lr.get("warmup_start_lr", 0.0))
    sched["eta_min"] = float(lr.get("eta_min", 0.0))
    lr.expect("by_epoch", [False], default=False, why="the schedule is stepped per iteration (spec §7.4)")
    if "epochs" in lr.data:  # PaddleClas fills it from Global.epochs; accept it only when it agrees
        if int(lr.get("epochs")) != sched["epochs"]:
            raise ConfigError(f"{lr.path('epochs')} differs from Global.epochs")
    lr.finish()
    reg = o.optional_section("regularizer")
    if reg is None:
        opt["weight_decay"] = 0.0
    else:
        reg.expect("name", ["L2"], why="decay is an L2 term on the gradient (spec §7.3)")
        opt["weight_decay"] = float(reg.get("coeff"))
        reg.finish()
    clip = o.get("clip_norm", None)
    if clip is not None:
        opt["grad_clip_norm"] = float(clip)
    o.finish()


_TRAIN_OPS = ("DecodeImage", "ResizeImage", "RandFlipImage", "Pad", "RandCropImageV2", "RandomRotation",
              "NormalizeImage")
#: The training pipeline of the recipe (spec §1); DecodeImage, RandFlipImage, Pad and RandomRotation may be left out.
_TRAIN_PIPELINE = ("DecodeImage", "ResizeImage", "RandFlipImage", "Pad", "RandCropImageV2", "RandomRotation",
                   "ResizeImage", "NormalizeImage")
_EVAL_OPS = ("DecodeImage", "ResizeImage", "NormalizeImage")


def _parse_scale(value: Any, where: str) -> float:
    """``NormalizeImage.scale``: a number or the string ``"1.0/255.0"`` PaddleClas eval()s; parsed without eval."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        parts = value.replace(" ", "").split("/")
        try:
            if len(parts) == 1:
                return float(parts[0])
            if len(parts) == 2:
                return float(parts[0]) / float(parts[1])
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{where}: expected a number or 'a/b', got {value!r}")


def _size_wh(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ConfigError(f"{where}: expected an int or [width, height], got {value!r}")


def _transforms(ops: Any, where: str, allowed: Sequence[str], data: Dict[str, Any], train: bool) -> None:
    """Check a transform_ops list against the recipe's pipeline and map its parameters."""
    if not isinstance(ops, list):
        raise ConfigError(f"{where}: expected a list of ops")
    names: List[str] = []
    for i, op in enumerate(ops):
        if not isinstance(op, Mapping) or len(op) != 1:
            raise ConfigError(f"{where}[{i}]: expected a one-key mapping {{OpName: {{...}}}}, got {op!r}")
        ((name, params),) = op.items()
        path = f"{where}[{i}].{name}"
        if name not in allowed:
            raise ConfigError(f"{path}: transform not supported here (supported, in this order: "
                              f"{', '.join(allowed)})")
        r = _Reader(params or {}, path)
        names.append(name)
        if name == "DecodeImage":
            r.expect("to_rgb", [True], default=True, why="the model takes RGB")
            r.expect("channel_first", [False], default=False)
        elif name == "ResizeImage":
            size = _size_wh(r.get("size"), r.path("size"))
            previous = data.get("image_size")
            if previous is not None and tuple(previous) != size:
                raise ConfigError(f"{r.path('size')}: {list(size)} differs from the other resize "
                                  f"{list(previous)}; train and eval use one image_size")
            data["image_size"] = size
            interp = r.get("interpolation", "bilinear")
            previous_interp = data.get("interpolation")
            if previous_interp is not None and previous_interp != interp:
                raise ConfigError(f"{r.path('interpolation')}: {interp!r} differs from {previous_interp!r}")
            data["interpolation"] = interp
            r.expect("backend", ["cv2"], default="cv2")
            r.inert("return_numpy")
        elif name == "RandFlipImage":
            r.expect("flip_code", [1], default=1, why="only the horizontal flip is implemented")
            data["flip"] = True
        elif name == "Pad":
            padding = r.get("padding")
            if not isinstance(padding, int):
                raise ConfigError(f"{r.path('padding')}: only one int border is supported, got {padding!r}")
            data["pad"] = padding
            r.expect("backend", ["cv2"], default="cv2")
            r.expect("fill", [0], default=0)
            r.expect("padding_mode", ["constant"], default="constant")
        elif name == "RandCropImageV2":
            size = _size_wh(r.get("size"), r.path("size"))
            if "image_size" in data and tuple(data["image_size"]) != size:
                raise ConfigError(f"{r.path('size')}: {list(size)} differs from the resize size "
                                  f"{list(data['image_size'])}")
        elif name == "RandomRotation":
            data["rotation_prob"] = float(r.get("prob", 0.5))
            data["rotation_degrees"] = float(r.get("degrees"))
            interp = r.get("interpolation", "bilinear")
            if interp != data.get("interpolation", "bilinear"):
                raise ConfigError(f"{r.path('interpolation')}: {interp!r} differs from the resize interpolation")
        elif name == "NormalizeImage":
            scale = _parse_scale(r.get("scale", 1.0 / 255.0), r.path("scale"))
            mean = tuple(float(v) for v in r.get("mean", [0.485, 0.456, 0.406]))
            std = tuple(float(v) for v in r.get("std", [0.229, 0.224, 0.225]))
            for key, value in (("scale", scale), ("mean", mean), ("std", std)):
                if key in data and data[key] != value:
                    raise ConfigError(f"{r.path(key)}: {value} differs from the training value {data[key]}; "
                                      "train and eval normalise alike")
                data[key] = value
            r.expect("order", ["hwc", ""], default="hwc")
            r.expect("channel_num", [3], default=3)
        r.finish()
    if train:
        if "ResizeImage" not in names or "NormalizeImage" not in names:
            raise ConfigError(f"{where}: a ResizeImage and a NormalizeImage are required")
        data.setdefault("flip", False)
        data.setdefault("pad", 0)
        data.setdefault("rotation_prob", 0.0)
        if "Pad" in names and "RandCropImageV2" not in names:
            raise ConfigError(f"{where}: Pad without RandCropImageV2 is not supported (pad then crop back)")
        optional = {"DecodeImage", "RandFlipImage", "Pad", "RandomRotation"}
        expected_order = [n for n in _TRAIN_PIPELINE if n not in optional or n in names]
        if names != expected_order:
            raise ConfigError(f"{where}: ops must follow the recipe order {expected_order} "
                              f"(got {names}); the training pipeline is fixed")
    elif [n for n in names if n != "DecodeImage"] != ["ResizeImage", "NormalizeImage"]:
        raise ConfigError(f"{where}: the eval pipeline must be ResizeImage then NormalizeImage (the inference "
                          f"preprocessing), got {names}")


def _dataset(d: _Reader, allowed: Sequence[str], data: Dict[str, Any], train: bool) -> Dict[str, Any]:
    name = d.expect("name", allowed)
    spec: Dict[str, Any] = {"format": "list", "root": str(d.get("image_root")), "file": str(d.get("cls_label_path"))}
    if "delimiter" in d.data:
        spec["delimiter"] = d.get("delimiter")
    if name == "ImageNetDataset":
        # Labels are always relabelled here, deterministically (sorted); relabel: false keeps integer ids in
        # PaddleClas, which the sorted relabelling reproduces when they are already 0..C-1.
        d.get("relabel", False)
    _transforms(d.get("transform_ops"), d.path("transform_ops"), _TRAIN_OPS if train else _EVAL_OPS, data, train)
    d.finish()
    return spec


def _dataloader(dl: _Reader, out: Dict[str, Any]) -> None:
    data = out["data"]
    train = dl.section("Train")
    data["train"] = _dataset(train.section("dataset"), ["ImageNetDataset"], data, train=True)
    sampler = train.section("sampler")
    sampler.expect("name", ["PKSampler"], why="metric learning needs P identities x K images per batch")
    data["batch_size"] = int(sampler.get("batch_size"))
    data["sample_per_id"] = int(sampler.get("sample_per_id"))
    data["drop_last"] = bool(sampler.get("drop_last", False))
    sampler.expect("shuffle", [True], default=True)
    data["sample_method"] = sampler.expect("sample_method", ["id_avg_prob", "sample_avg_prob"],
                                           default="id_avg_prob")
    id_list, ratio = sampler.get("id_list", None), sampler.get("ratio", None)
    if id_list or ratio:
        # Positions are label ids: PaddleClas counts them in first-appearance order, shitu_features in sorted
        # label order (see docs/migrating.md); the two agree when the list file is sorted by label.
        data["id_list"] = [int(v) for v in id_list or []]
        data["id_ratio"] = [float(v) for v in ratio or []]
    sampler.finish()
    loader = train.optional_section("loader")
    if loader is not None:
        data["num_workers"] = int(loader.get("num_workers", 4))
        loader.inert("use_shared_memory")
        loader.finish()
    train.finish()

    ev = dl.optional_section("Eval")
    if ev is not None:
        specs = {}
        for split in ("Query", "Gallery"):
            part = ev.section(split)
            specs[split] = _dataset(part.section("dataset"), ["VeriWild", "ImageNetDataset"], data, train=False)
            s = part.optional_section("sampler")
            if s is not None:
                s.expect("name", ["DistributedBatchSampler", "BatchSampler"])
                out["eval"]["batch_size"] = int(s.get("batch_size", 64))
                s.expect("shuffle", [False], default=False)
                s.expect("drop_last", [False], default=False, why="every query and gallery image is evaluated")
                s.finish()
            lp = part.optional_section("loader")
            if lp is not None:
                lp.inert("num_workers", "use_shared_memory")
                lp.finish()
            part.finish()
        data["query"] = specs["Query"]
        # The same file as query and gallery is the reference's self-retrieval protocol; gallery=None says so.
        data["gallery"] = None if specs["Gallery"] == specs["Query"] else specs["Gallery"]
        ev.finish()
    dl.finish()
    shape = out.pop("_image_shape", None)
    if shape is not None and tuple(data.get("image_size", (224, 224))) != shape:
        raise ConfigError(f"Global.image_shape {list(shape)} (W, H) differs from the ResizeImage size "
                          f"{list(data['image_size'])}")


def _metric(m: _Reader, out: Dict[str, Any]) -> None:
    ev = m.get("Eval", None)
    if ev is None:
        m.inert("Train")
        m.finish()
        return
    if not isinstance(ev, list):
        raise ConfigError(f"{m.path('Eval')}: expected a list of metrics")
    first: Optional[str] = None
    for i, entry in enumerate(ev):
        where = f"{m.path('Eval')}[{i}]"
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise ConfigError(f"{where}: expected a one-key mapping, got {entry!r}")
        ((name, params),) = entry.items()
        r = _Reader(params or {}, f"{where}.{name}")
        if name == "Recallk":
            topk = r.get("topk", [1, 5])
            topk = [topk] if isinstance(topk, int) else [int(k) for k in topk]
            out["eval"]["topk"] = topk
            first = first or f"recall@{topk[0]}"
        elif name == "mAP":
            first = first or "mAP"
        else:
            raise ConfigError(f"{where}.{name}: metric not supported (supported: Recallk, mAP)")
        r.finish()
    if first is not None:
        out["eval"]["best_metric"] = first  # the reference keeps the model with the best first metric
    m.inert("Train")
    m.finish()

