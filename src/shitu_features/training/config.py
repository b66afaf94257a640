"""Typed training configuration: :class:`TrainConfig` and its sections.

``TrainConfig()`` is the PP-ShiTuV2 recipe (spec §1) scaled to one device: the same model, losses, optimizer,
schedule and augmentation, with the per-device batch of the reference (256 = 64 identities x 4 images) and
the learning rate scaled linearly from the reference's 0.06 for a global batch of 8 x 256 = 2048, i.e.
``0.06 * 256 / 2048 = 0.0075``. When the global batch changes (more processes, another ``batch_size``) scale
``optimizer.lr`` the same way: ``lr = 0.06 * global_batch / 2048`` (:func:`scale_lr`).

Every section is a frozen pydantic model with ``extra="forbid"``: a misspelt key is an error, not a silently
ignored setting. Configs are built from YAML (:meth:`TrainConfig.from_yaml`), from a dict
(:meth:`TrainConfig.from_dict`), from a PaddleClas YAML (:meth:`TrainConfig.from_paddleclas_yaml`), and changed
with ``key=value`` overrides (:meth:`TrainConfig.with_overrides`), which return a new validated config.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shitu_features.errors import ConfigError

__all__ = [
    "REFERENCE_GLOBAL_BATCH",
    "REFERENCE_LR",
    "IMAGENET_SSLD_URL",
    "scale_lr",
    "ModelConfig",
    "DatasetConfig",
    "DataConfig",
    "CELossConfig",
    "TripletAngularMarginLossConfig",
    "TripletLossConfig",
    "LossTermConfig",
    "LossConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "EvalConfig",
    "OutputConfig",
    "RuntimeConfig",
    "TrainConfig",
]

#: The reference's learning rate and the global batch it was tuned for (``learning_rate: 0.06 # for 8gpu x 256bs``).
REFERENCE_LR = 0.06
REFERENCE_GLOBAL_BATCH = 8 * 256
#: The ImageNet SSLD weights the reference initialises the backbone from (spec §1, ``use_ssld: true``; §11.1).
IMAGENET_SSLD_URL = (
    "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/legendary_models/PPLCNetV2_base_ssld_pretrained.pdparams"
)
#: The plain ImageNet weights (``use_ssld: false``).
IMAGENET_URL = (
    "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/legendary_models/PPLCNetV2_base_pretrained.pdparams"
)


def scale_lr(global_batch: int, *, reference_lr: float = REFERENCE_LR,
             reference_batch: int = REFERENCE_GLOBAL_BATCH) -> float:
    """Linear learning-rate scaling from the reference recipe.

    Args:
        global_batch: images per optimizer step summed over all processes (``batch_size * world_size``).
        reference_lr: the reference learning rate (0.06).
        reference_batch: the global batch it belongs to (2048 = 8 GPUs x 256).

    Returns:
        ``reference_lr * global_batch / reference_batch``, e.g. 0.0075 for one device with 256 images.
    """
    if global_batch <= 0:
        raise ConfigError(f"global_batch must be positive, got {global_batch}")
    return reference_lr * global_batch / reference_batch


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelConfig(_Section):
    """The network (spec §1 ``Arch``, §2)."""

    backbone: str = Field("PPLCNetV2_base_ShiTu", description="Arch.Backbone.name; a key of models.BACKBONES")
    embedding_size: int = Field(512, gt=0, description="Arch.Backbone.class_expand = Neck.num_features")
    neck: Optional[Literal["BNNeck"]] = Field("BNNeck", description="Arch.Neck.name; null for no neck")
    head: str = Field("FC", description="Arch.Head.name; a key of models.HEADS")
    head_kwargs: Dict[str, Any] = Field(default_factory=dict,
                                        description="extra Arch.Head arguments, e.g. margin/scale of ArcMargin")
    class_num: Optional[int] = Field(
        None, gt=0, description="Arch.Head.class_num; null = the number of training identities after relabelling")
    dropout_prob: float = Field(0.2, ge=0.0, lt=1.0, description="dropout before last_conv's output (spec §2.2)")
    pretrained: Optional[str] = Field(
        IMAGENET_SSLD_URL,
        description="initial weights: a .pdparams path or URL, or an official model name. A full RecModel "
                    "checkpoint loads strictly (a head of another class count is skipped); a backbone-only "
                    "ImageNet checkpoint loads what fits and reports the rest. null = random init. "
                    "Arch.Backbone.pretrained/use_ssld or Global.pretrained_model")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        from shitu_features.models import BACKBONES

        return _known(v, BACKBONES, "model.backbone")

    @field_validator("head")
    @classmethod
    def _known_head(cls, v: str) -> str:
        from shitu_features.models import HEADS

        return _known(v, HEADS, "model.head")


class DatasetConfig(_Section):
    """Where one split's images and labels are.

    Formats (see ``docs/training.md``):

    - ``list``: the PaddleClas list file, one ``relative/path label`` per line (``path label unique_id`` for
      query/gallery); ``file`` is the list, ``root`` the folder the paths are relative to.
    - ``folder``: ``root/<class name>/<image>``, one sub-folder per identity; ``file`` is unused.
    - ``csv``: a CSV file with a header; ``path_column`` and ``label_column`` name the columns.
    """

    format: Literal["list", "folder", "csv"] = Field(
        "list", description="dataset.name (ImageNetDataset/VeriWild = list)")
    root: Optional[str] = Field(None, description="dataset.image_root: folder the image paths are relative to; "
                                "null = the folder of the list/CSV file. Required for the folder format")
    file: Optional[str] = Field(None, description="dataset.cls_label_path (list) or the CSV file")
    delimiter: Optional[str] = Field(None, description="list-file separator; null = any whitespace (dataset.delimiter)")
    path_column: str = Field("path", description="CSV column with the image path")
    label_column: str = Field("label", description="CSV column with the identity label")

    @model_validator(mode="after")
    def _file_needed(self) -> "DatasetConfig":
        if self.format in ("list", "csv") and not self.file:
            raise ValueError(f"format {self.format!r} needs 'file' (the {self.format} file)")
        if self.format == "folder" and not self.root:
            raise ValueError("format 'folder' needs 'root' (the folder with one sub-folder per identity)")
        return self


class DataConfig(_Section):
    """Datasets, sampling, augmentation and loading (spec §1 ``DataLoader``, §5.3, §6)."""

    train: Optional[DatasetConfig] = Field(None, description="DataLoader.Train.dataset; required to train")
    query: Optional[DatasetConfig] = Field(None, description="DataLoader.Eval.Query.dataset; null = no evaluation")
    gallery: Optional[DatasetConfig] = Field(
        None, description="DataLoader.Eval.Gallery.dataset; null = the query set, each image excluded from its own "
                          "ranking (the reference's unique-id 'camera' trick, spec §8)")
    batch_size: int = Field(256, gt=0, description="sampler.batch_size, images per step per process")
    sample_per_id: int = Field(4, gt=0, description="sampler.sample_per_id: K images per identity (P = batch/K)")
    drop_last: bool = Field(False, description="sampler.drop_last: epoch length floor(N/batch) instead of ceil")
    sample_method: Literal["id_avg_prob", "sample_avg_prob"] = Field(
        "id_avg_prob", description="sampler.sample_method: identities drawn uniformly, or by image count")
    id_list: List[int] = Field(default_factory=list, description="sampler.id_list: [lo0, hi0, lo1, hi1, ...] "
                               "inclusive label-id ranges drawn id_ratio times more often (ids = sorted labels)")
    id_ratio: List[float] = Field(default_factory=list, description="sampler.ratio: one multiplier per id_list range")
    image_size: Tuple[int, int] = Field((224, 224), description="(width, height) of ResizeImage, train and eval")
    interpolation: Literal["bilinear", "nearest", "bicubic", "area", "lanczos"] = Field(
        "bilinear", description="ResizeImage.interpolation")
    flip: bool = Field(True, description="RandFlipImage(flip_code=1): horizontal flip with p=0.5")
    pad: int = Field(10, ge=0, description="Pad.padding, then RandCropImageV2 back to image_size; 0 disables both")
    rotation_prob: float = Field(0.5, ge=0.0, le=1.0, description="RandomRotation.prob")
    rotation_degrees: float = Field(90.0, ge=0.0, description="RandomRotation.degrees (uniform in +-degrees)")
    scale: float = Field(1.0 / 255.0, gt=0.0, description="NormalizeImage.scale")
    mean: Tuple[float, float, float] = Field((0.485, 0.456, 0.406), description="NormalizeImage.mean (RGB)")
    std: Tuple[float, float, float] = Field((0.229, 0.224, 0.225), description="NormalizeImage.std (RGB)")
    num_workers: int = Field(4, ge=0, description="loader.num_workers: decoding threads (OpenCV releases the GIL); "
                             "0 = decode in the training thread")
    prefetch_batches: Optional[int] = Field(None, ge=1, description="batches decoded ahead of the model; "
                                            "null = 2 x num_workers")

    @model_validator(mode="after")
    def _pk_fits(self) -> "DataConfig":
        if self.batch_size % self.sample_per_id:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of sample_per_id {self.sample_per_id} "
                             "(P identities x K images)")
        if self.batch_size // self.sample_per_id < 2:
            raise ValueError("a batch needs at least 2 identities (batch_size >= 2 * sample_per_id) for the "
                             "triplet losses to have negatives")
        if len(self.id_list) != 2 * len(self.id_ratio):
            raise ValueError(f"id_list needs two bounds per id_ratio entry, got {self.id_list} / {self.id_ratio}")
        if min(self.image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        return self


class _LossTermBase(_Section):
    weight: float = Field(1.0, description="weight of the term in the summed loss")


class CELossConfig(_LossTermBase):
    """Label-smoothed cross entropy on the head's logits (spec §7.1)."""

    type: Literal["CELoss"] = "CELoss"
    epsilon: Optional[float] = Field(0.1, ge=0.0, lt=1.0, description="label smoothing; null = none")


class TripletAngularMarginLossConfig(_LossTermBase):
    """Batch-hard triplet loss on cosine similarity with the absolute terms (spec §7.2)."""

    type: Literal["TripletAngularMarginLoss"] = "TripletAngularMarginLoss"
    margin: float = 0.5
    normalize_feature: bool = True
    reduction: Literal["mean", "sum"] = "mean"
    add_absolute: bool = True
    absolute_loss_weight: float = 0.1
    ap_value: float = 0.8
    an_value: float = 0.4
    feature_from: Literal["features", "backbone", "neck"] = "features"


class TripletLossConfig(_LossTermBase):
    """Classic batch-hard triplet loss on Euclidean distances."""

    type: Literal["TripletLoss"] = "TripletLoss"
    margin: float = 1.0
    normalize_feature: bool = False
    feature_from: Literal["features", "backbone", "neck"] = "features"


LossTermConfig = Annotated[
    Union[CELossConfig, TripletAngularMarginLossConfig, TripletLossConfig], Field(discriminator="type")
]


def _default_terms() -> List[Any]:
    return [CELossConfig(), TripletAngularMarginLossConfig()]


class LossConfig(_Section):
    """The summed training loss (spec §1 ``Loss.Train``): 1.0 x CE(eps 0.1) + 1.0 x TripletAngularMargin."""

    terms: List[LossTermConfig] = Field(default_factory=_default_terms, min_length=1,
                                        description="the weighted terms; each has a 'type'")

    @field_validator("terms")
    @classmethod
    def _unique(cls, v: List[Any]) -> List[Any]:
        types = [t.type for t in v]
        dup = sorted({t for t in types if types.count(t) > 1})
        if dup:
            raise ValueError(f"loss type(s) {dup} listed twice; give each loss once with its weight")
        return v


class OptimizerConfig(_Section):
    """Momentum SGD with global L2 decay and the reference's exemptions (spec §7.3)."""

    name: Literal["Momentum"] = Field("Momentum", description="Optimizer.name")
    lr: float = Field(scale_lr(256), gt=0.0, description="Optimizer.lr.learning_rate (peak, after warmup). "
                      "The reference uses 0.06 for 8 x 256 images; scale linearly: 0.06 * global_batch / 2048")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Optimizer.momentum")
    nesterov: bool = Field(False, description="Optimizer.use_nesterov")
    weight_decay: float = Field(1e-5, ge=0.0, description="Optimizer.regularizer L2 coeff; backbone BN gamma/beta "
                                "are exempt (they carry L2Decay(0))")
    multi_precision: bool = Field(True, description="Optimizer.multi_precision: fp32 master weights under AMP O2")
    grad_clip_norm: Optional[float] = Field(None, gt=0.0, description="clip the global grad norm; null = off "
                                            "(the reference does not clip)")


class ScheduleConfig(_Section):
    """Linear warmup then cosine annealing, stepped per iteration (spec §7.4)."""

    name: Literal["cosine"] = Field("cosine", description="Optimizer.lr.name (Cosine)")
    epochs: int = Field(100, gt=0, description="Global.epochs")
    warmup_epochs: float = Field(5.0, ge=0.0, description="Optimizer.lr.warmup_epoch; a warmup longer than the run "
                                 "never reaches optimizer.lr (as in PaddleClas)")
    warmup_start_lr: float = Field(0.0, ge=0.0, description="Optimizer.lr.warmup_start_lr")
    eta_min: float = Field(0.0, ge=0.0, description="Optimizer.lr.eta_min, the final learning rate")
    iters_per_epoch: Optional[int] = Field(None, gt=0, description="PK batches per epoch (fewer or more than a pass "
                                           "over the data); null = ceil(ceil(N / world_size) / batch_size), spec §6")


class EvalConfig(_Section):
    """Retrieval evaluation on query/gallery (spec §1 ``Metric.Eval``, §8)."""

    every_n_epochs: int = Field(1, ge=0, description="Global.eval_interval; 0 = never (eval_during_train false)")
    batch_size: int = Field(64, gt=0, description="DataLoader.Eval sampler.batch_size")
    topk: Tuple[int, ...] = Field((1, 5), min_length=1, description="Metric.Eval Recallk.topk")
    best_metric: str = Field("recall@1", description="metric that selects the 'best' checkpoint (the first "
                             "metric, recall1, in the reference); 'recall@k' for a k in topk, or 'mAP'")
    feature_from: Literal["features", "backbone"] = Field("features", description="Global.retrieval_feature_from")
    feature_normalize: bool = Field(True, description="Global.feature_normalize: cosine similarity")
    reference_compat: bool = Field(False, description="compute metrics exactly as PaddleClas (64-query blocks, "
                                   "excluded pairs kept at similarity 0) instead of the exact means")
    at_start: bool = Field(False, description="also evaluate the initial model before training (logged as epoch 0)")

    @model_validator(mode="after")
    def _best_is_reported(self) -> "EvalConfig":
        known = [f"recall@{k}" for k in self.topk] + ["mAP"]
        if self.best_metric not in known:
            raise ValueError(f"best_metric {self.best_metric!r} is not computed; choose one of {known}")
        if any(k <= 0 for k in self.topk):
            raise ValueError(f"topk must be positive, got {self.topk}")
        return self


class OutputConfig(_Section):
    """Where checkpoints, logs and the exported model go."""

    dir: str = Field("./output", description="Global.output_dir")
    save_every_n_epochs: int = Field(1, ge=1, description="Global.save_interval: epochs between 'latest' saves")
    export: bool = Field(True, description="export an inference model at the end of fit()")
    export_dir: Optional[str] = Field(None, description="Global.save_inference_dir; null = <dir>/inference")
    export_from: Literal["best", "last"] = Field(
        "best", description="export the best checkpoint (when evaluation ran) or the last weights")
    overwrite: bool = Field(False, description="allow a fresh (not resumed) run into a dir that holds checkpoints")


class RuntimeConfig(_Section):
    """Device, precision, randomness, logging and resuming."""

    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="Global.device; auto = gpu if Paddle has CUDA")
    seed: int = Field(0, ge=0, description="seed of sampling, augmentation, dropout and init (the reference has none)")
    amp: bool = Field(False, description="AMP.use_amp; GPU only (ignored with a warning on CPU)")
    amp_level: Literal["O1", "O2"] = Field("O1", description="AMP.level")
    amp_init_loss_scaling: float = Field(128.0, gt=0.0, description="AMP.scale_loss")
    amp_dynamic_loss_scaling: bool = Field(True, description="AMP.use_dynamic_loss_scaling")
    log_every: int = Field(20, ge=1, description="Global.print_batch_step: steps between log lines")
    progress_bar: Optional[bool] = Field(None, description="tqdm progress bar on rank 0 (needs tqdm); null = only "
                                         "when stderr is a terminal")
    num_threads: Optional[int] = Field(None, ge=1, description="CPU threads for Paddle's kernels and OpenCV; "
                                       "null = leave the library defaults")
    resume: Union[bool, Literal["auto"], str] = Field(
        False, description="false = fresh run; true = continue <output.dir>/checkpoints/latest (must exist); "
                           "'auto' = continue it when present; a path = continue that checkpoint directory. "
                           "Global.checkpoints")


class TrainConfig(_Section):
    """The whole training configuration; ``TrainConfig()`` is the PP-ShiTuV2 recipe on one device.

    Example:
        >>> cfg = TrainConfig.from_yaml("train.yaml").with_overrides(["schedule.epochs=10", "data.batch_size=64"])
        >>> cfg.optimizer.lr
        0.0075
    """

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TrainConfig:
        """Validate a (nested) mapping, e.g. what ``yaml.safe_load`` returns.

        Raises:
            ConfigError: a key is unknown or a value invalid; the message names each offending key.
        """
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training config must be a mapping of sections, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike[str]]) -> TrainConfig:
        """Read a config written by :meth:`to_yaml` (or by hand). Missing keys take the recipe's defaults."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_paddleclas_yaml(cls, path: Union[str, os.PathLike[str]]) -> TrainConfig:
        """Translate a PaddleClas GeneralRecognitionV2 YAML (e.g. ``GeneralRecognitionV2_PPLCNetV2_base.yaml``).

        Every key is either mapped to a field (see ``docs/migrating.md``), checked to hold the only value this
        library implements, or rejected. Nothing is ignored silently.

        Raises:
            ConfigError: a key this library does not support, naming it (``Optimizer.lr.name: Piecewise ...``).
        """
        from shitu_features.training._paddleclas import paddleclas_yaml_to_dict

        return cls.from_dict(paddleclas_yaml_to_dict(path))

    def to_dict(self) -> Dict[str, Any]:
        """The config as plain JSON/YAML types (tuples become lists)."""
        return self.model_dump(mode="json")

    def to_yaml(self, path: Union[str, os.PathLike[str], None] = None) -> str:
        """Serialise to YAML; write it to ``path`` when given. :meth:`from_yaml` reads it back unchanged."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def with_overrides(self, overrides: Union[Sequence[str], Mapping[str, Any]]) -> TrainConfig:
        """Return a copy with ``section.key=value`` overrides applied and validated.

        Values are parsed as YAML scalars/flows (``1e-3`` -> float, ``null`` -> None, ``[1, 5]`` -> list,
        ``true`` -> bool). List items are addressed by index: ``loss.terms.0.epsilon=0.2``. A mapping
        ``{"a.b": value}`` takes values as they are.

        Raises:
            ConfigError: malformed item, unknown key (with close matches) or invalid value.
        """
        data = self.to_dict()
        items = overrides.items() if isinstance(overrides, Mapping) else (_split_override(o) for o in overrides)
        for dotted, value in items:
            _set_path(data, dotted, value)
        return type(self).from_dict(data)


# -- helpers --------------------------------------------------------------------------------------------------------


def _known(value: str, registry: Mapping[str, Any], key: str) -> str:
    if value not in registry:
        close = difflib.get_close_matches(value, list(registry), n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown {key} {value!r}{hint} (known: {', '.join(sorted(registry))})")
    return value


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest_key(err["loc"])
        lines.append(f"{loc or '<root>'}: {msg}")
    return "invalid training config: " + "; ".join(lines)


def _section_fields(loc: Sequence[Any]) -> List[str]:
    """Field names of the model that holds the last element of ``loc`` (for 'did you mean' hints)."""
    model: Any = TrainConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        ann = getattr(field, "annotation", None)
        model = _first_model(ann)
    return list(model.model_fields) if model is not None and hasattr(model, "model_fields") else []


def _first_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _suggest_key(loc: Sequence[Any]) -> str:
    close = difflib.get_close_matches(str(loc[-1]), _section_fields(loc), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def _split_override(item: str) -> Tuple[str, Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: take the text as a string, validation decides
    return key, value


def _set_path(data: Dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".")]
    if not dotted or any(not p for p in parts):
        raise ConfigError(f"override key {dotted!r} is malformed; use section.key (e.g. optimizer.lr)")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(f"override {dotted!r}: {where} is not an index of a list of {len(node)}")
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:i])} is a value, not a section")
        # A key absent from the dump is still valid inside a section that was null (data.query.file=...).
        if part not in node and part not in _section_fields(parts[: i + 1]):
            fields = list(node) or _section_fields(parts[: i + 1])
            close = difflib.get_close_matches(part, fields, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; known: {', '.join(fields)}"
            raise ConfigError(f"override {dotted!r}: unknown key {where!r}{hint}")
        if last:
            node[part] = value
        elif node.get(part) is None:
            node[part] = {}  # e.g. data.query.file=... while data.query is null: builds the section
            node = node[part]
        else:
            node = node[part]
