"""``Trainer(config).fit()``: the PP-ShiTuV2 training recipe as one readable loop (spec §1, §6, §7).

One epoch = ``iters_per_epoch`` PK-sampled batches; per iteration: learning rate from the pure schedule (§7.4),
forward, weighted loss terms, backward, Momentum step. After an epoch: retrieval evaluation when due, then the
``latest`` checkpoint (and ``best`` when the selected metric improved), written atomically by rank 0. At the end
the model is exported to ``<output>/inference`` for :class:`~shitu_features.inference.extractor.Extractor`.

Reproducibility: the sampler and the augmentation draw from generators seeded by ``(seed, epoch, step, rank)``
(:mod:`shitu_features.data`), and each epoch re-seeds Paddle's generator (dropout) from ``(seed, epoch, rank)``.
Together with the checkpointed model, optimizer, step and RNG states, a resumed run continues exactly where an
uninterrupted one would be.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import paddle

# shitu_features.data must be imported before shitu_features.inference.preprocess (import-order dependency
# between the two packages); importing it first here keeps the trainer importable on its own.
from shitu_features.data import DataLoader, ImageDataset, LabelMap, PKSampler, SequentialBatchSampler
from shitu_features.data import Compose, eval_transform, train_transform
from shitu_features.errors import (
    CheckpointMismatchError,
    ConfigError,
    DeviceError,
    ModelNotFoundError,
    OutputExistsError,
)
from shitu_features.evaluation import retrieval_metrics
from shitu_features.inference.preprocess import PreprocessConfig
from shitu_features.losses import WeightedLoss
from shitu_features.models import LoadReport, RecModel, build_rec_model, load_checkpoint
from shitu_features.serialization import load_state_dict
from shitu_features.training.checkpoint import (
    TrainingCheckpoint,
    checkpoint_exists,
    copy_checkpoint,
    load_training_checkpoint,
    save_checkpoint,
)
from shitu_features.training.config import DatasetConfig, TrainConfig
from shitu_features.training.distributed import (
    DistributedContext,
    all_gather_rows,
    barrier,
    broadcast_object,
    init_distributed,
)
from shitu_features.training.optim import build_optimizer, optimizer_state_from_named, optimizer_state_to_named
from shitu_features.training.schedule import CosineWarmupSchedule

__all__ = ["Trainer", "TrainResult", "EpochRecord", "build_dataset", "preprocess_config_of", "train_transform_of"]

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"


@dataclass
class EpochRecord:
    """What happened in one epoch (``Trainer.history``).

    Attributes:
        epoch: 1-based epoch number.
        global_step: optimizer steps done at the end of the epoch.
        loss: mean of each loss term over the epoch on this rank, plus ``"total"``.
        lr: learning rate of the epoch's last step.
        images_per_s: training throughput of this process (decode + forward + backward + step).
        seconds: wall time of the epoch's training part.
        metrics: retrieval metrics when the epoch was evaluated, else empty.
    """

    epoch: int
    global_step: int
    loss: Dict[str, float]
    lr: float
    images_per_s: float
    seconds: float
    metrics: Dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Summary returned by :meth:`Trainer.fit`.

    Attributes:
        epochs_completed: epochs finished in total (including those before a resume).
        global_step: optimizer steps in total.
        history: the epochs run by this call.
        best_metric: name of the metric that selects the best checkpoint.
        best_value: its best value, ``None`` when no evaluation ran.
        best_epoch: epoch of the best value.
        checkpoint_dir: ``<output>/checkpoints``.
        export_dir: the exported inference model, ``None`` when not exported (stopped early or disabled).
    """

    epochs_completed: int
    global_step: int
    history: List[EpochRecord]
    best_metric: str
    best_value: Optional[float]
    best_epoch: Optional[int]
    checkpoint_dir: Path
    export_dir: Optional[Path]


# -- building blocks ----------------------------------------------------------------------------------------------


def preprocess_config_of(config: TrainConfig) -> PreprocessConfig:
    """The eval / inference preprocessing the trained model expects (recorded with the export)."""
    d = config.data
    return PreprocessConfig(size=tuple(d.image_size), interpolation=d.interpolation, scale=d.scale,
                            mean=tuple(d.mean), std=tuple(d.std))


def train_transform_of(config: TrainConfig) -> Compose:
    """The training augmentation described by ``config.data`` (what :class:`Trainer` gives ``data.train``).

    Args:
        config: the training configuration; its ``data`` section gives the size, padding, flip, rotation,
            interpolation and normalisation.

    Returns:
        A :class:`Compose` (see :func:`~shitu_features.data.train_transform`) mapping
        ``[H, W, 3]`` uint8 RGB to ``[3, height, width]`` float32; useful to set on a ``train_dataset=`` passed to
        :class:`Trainer`.
    """
    d = config.data
    return train_transform(tuple(d.image_size), padding=d.pad, flip=d.flip, rotation_degrees=d.rotation_degrees,
                           rotation_prob=d.rotation_prob, interpolation=d.interpolation, scale=d.scale,
                           mean=d.mean, std=d.std)


def build_dataset(spec: DatasetConfig, transform: Any) -> ImageDataset:
    """Open one split described by a :class:`DatasetConfig` with the given transform."""
    if spec.format == "folder":
        assert spec.root is not None  # DatasetConfig requires it for folders
        return ImageDataset.from_folder(spec.root, transform=transform)
    assert spec.file is not None  # DatasetConfig requires it for lists and CSV files
    if spec.format == "list":
        return ImageDataset.from_list_file(spec.file, spec.root, delimiter=spec.delimiter, transform=transform)
    return ImageDataset.from_csv(spec.file, spec.root, path_column=spec.path_column,
                                 label_column=spec.label_column, transform=transform)


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _rng_state() -> Dict[str, Any]:
    np_state: Any = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "paddle": [list(s.__getstate__()) for s in paddle.get_rng_state()],
    }


def _set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    current = paddle.get_rng_state()
    if len(current) == len(state["paddle"]):
        restored = []
        for proto, saved in zip(current, state["paddle"]):
            gen = type(proto).__new__(type(proto))
            gen.__setstate__(tuple(saved))
            restored.append(gen)
        paddle.set_rng_state(restored)


def _versions() -> Dict[str, str]:
    from shitu_features import __version__

    return {"shitu_features": __version__, "paddle": paddle.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _resolve_weights(spec: str) -> Path:
    """A local ``.pdparams`` path, a URL, or an official model name, as a ``.pdparams`` file on disk.

    Official names resolve to their training checkpoint (the ``pdparams`` artifact of the registry), not to the
    inference model that ``Extractor.from_pretrained`` would pick. Downloads are cached by the hub.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    from shitu_features.errors import UnknownModelError
    from shitu_features.inference.hub import mirror_url, resolve
    from shitu_features.inference.registry import resolve_official

    target = spec
    if not spec.lower().startswith(("http://", "https://", "hf://")):
        try:
            official = resolve_official(spec)
        except UnknownModelError:
            official = None
        if official is not None:
            urls = [a.url for a in official.artifacts if a.format == "pdparams"]
            if not urls:
                raise ConfigError(f"model.pretrained={spec!r}: the official model has no training checkpoint "
                                  "(.pdparams) to start from")
            target = mirror_url(urls[0])  # honour SHITU_FEATURES_ENDPOINT as the hub does for official files
    resolved = resolve(target)
    if resolved.kind != "pdparams":
        raise ConfigError(f"model.pretrained={spec!r} resolves to an inference model ({resolved.path}); training "
                          "needs a .pdparams state dict (e.g. general_PPLCNetV2_base_pretrained_v1.0.pdparams)")
    return resolved.path


class _EpochBatches:
    """``iters`` PK batches per epoch, fewer or more than the sampler's natural epoch (``schedule.iters_per_epoch``).

    :meth:`PKSampler.batch` is a pure function of ``(epoch, step)``, so any number of steps can be drawn; the
    loader sees an ordinary batch sampler (``__iter__``, ``__len__``, ``set_epoch``, ``seed``, ``rank``).
    """

    def __init__(self, sampler: PKSampler, iters: int) -> None:
        self.sampler, self.iters = sampler, iters
        self.seed, self.rank, self.epoch = sampler.seed, sampler.rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.iters

    def __iter__(self):  # type: ignore[no-untyped-def]
        for step in range(self.iters):
            yield self.sampler.batch(self.epoch, step)


class _Progress:
    """A tqdm bar when available and wanted, else nothing (logging still reports every ``log_every`` steps)."""

    def __init__(self, enabled: Optional[bool], total: int, desc: str) -> None:
        self.bar = None
        if enabled is None:  # auto: only where a person watches, never in log files
            enabled = sys.stderr.isatty()
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # tqdm is optional
                return
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, postfix: Dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- the trainer -------------------------------------------------------------------------------------------------


class Trainer:
    """Train a PP-ShiTuV2 embedding model from a :class:`TrainConfig`.

    Example:
        >>> cfg = TrainConfig().with_overrides([
        ...     "data.train.format=folder", "data.train.root=/data/products",
        ...     "model.pretrained=PP-ShiTuV2", "schedule.epochs=20", "output.dir=runs/products"])
        >>> result = Trainer(cfg).fit()
        >>> result.export_dir   # serve with Extractor.from_pretrained(result.export_dir)

    Args:
        config: the training configuration.
        train_dataset: use this dataset instead of ``config.data.train`` (it must carry the train transform).
        query_dataset: evaluation queries instead of ``config.data.query`` (eval transform).
        gallery_dataset: evaluation gallery instead of ``config.data.gallery``; ``None`` with a query set means
            the query set retrieves among itself, each image excluded from its own ranking.

    Attributes:
        model: the :class:`RecModel` being trained (unwrapped; ``DataParallel`` is internal).
        history: one :class:`EpochRecord` per epoch run by this process.
        lr_trace: ``(global_step, lr)`` of every optimizer step run by this process.
        loss_trace: ``(global_step, total loss)`` of every optimizer step run by this process (this rank's batch).
        load_report: what loading ``model.pretrained`` did, or ``None``.
        label_map: original label <-> class id of the head, saved in every checkpoint.
    """

    def __init__(self, config: TrainConfig, *, train_dataset: Optional[ImageDataset] = None,
                 query_dataset: Optional[ImageDataset] = None, gallery_dataset: Optional[ImageDataset] = None) -> None:
        self.config = config
        self.output_dir = Path(config.output.dir).expanduser()
        self.checkpoint_dir = self.output_dir / CHECKPOINTS_DIR
        self.history: List[EpochRecord] = []
        self.lr_trace: List[Tuple[int, float]] = []
        self.loss_trace: List[Tuple[int, float]] = []
        self.load_report: Optional[LoadReport] = None
        self._train_dataset = train_dataset
        self._query_dataset = query_dataset
        self._gallery_dataset = gallery_dataset
        self._built = False
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.best_value: Optional[float] = None
        self.best_epoch: Optional[int] = None
        #: metrics of the initial weights when ``eval.at_start`` is set (before any training step)
        self.initial_metrics: Optional[Dict[str, float]] = None

    @property
    def train_dataset(self) -> Optional[ImageDataset]:
        """The training dataset (built from ``config.data.train`` by :meth:`setup` unless one was given)."""
        return self._train_dataset

    @property
    def query_dataset(self) -> Optional[ImageDataset]:
        """The evaluation queries, or ``None`` without evaluation."""
        return self._query_dataset

    @property
    def gallery_dataset(self) -> Optional[ImageDataset]:
        """The evaluation gallery; ``None`` with a query set means the query set is its own gallery."""
        return self._gallery_dataset

    # ---- setup --------------------------------------------------------------------------------------------

    def _setup_runtime(self) -> None:
        rt = self.config.runtime
        self.ctx: DistributedContext = init_distributed()
        device = rt.device
        if device == "auto":
            device = "gpu" if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else "cpu"
        if device == "gpu":
            if not paddle.is_compiled_with_cuda():
                raise DeviceError("runtime.device=gpu but this Paddle build has no CUDA; set runtime.device=cpu")
            paddle.set_device(f"gpu:{self.ctx.local_rank}")
        else:
            paddle.set_device("cpu")
        self.device = device
        self.amp = bool(rt.amp and device == "gpu")
        if rt.amp and not self.amp:
            logger.warning("runtime.amp is ignored on CPU: mixed precision runs on GPUs only")
        if rt.num_threads:
            paddle.base.core.set_num_threads(rt.num_threads)
            import cv2

            cv2.setNumThreads(rt.num_threads)

    def _setup_data(self) -> None:
        cfg, d = self.config, self.config.data
        self.preprocess = preprocess_config_of(cfg)
        if self._train_dataset is None:
            if d.train is None:
                raise ConfigError("data.train is not set: give the training images (data.train.format/root/file) "
                                  "or pass train_dataset=")
            self._train_dataset = build_dataset(d.train, train_transform_of(cfg))
        train = self._train_dataset
        if train.label_map is None:
            raise ConfigError("the training dataset must be relabelled (relabel=True): its label map is saved with "
                              "every checkpoint")
        self.label_map: LabelMap = train.label_map
        sampler = PKSampler(train.labels, d.batch_size, d.sample_per_id, seed=cfg.runtime.seed,
                            drop_last=d.drop_last, rank=self.ctx.rank, world_size=self.ctx.world_size,
                            sample_method=d.sample_method, id_list=d.id_list or None, ratio=d.id_ratio or None)
        self.iters_per_epoch = cfg.schedule.iters_per_epoch or len(sampler)
        self.train_loader = DataLoader(train, _EpochBatches(sampler, self.iters_per_epoch), num_workers=d.num_workers,
                                       prefetch=d.prefetch_batches, seed=cfg.runtime.seed, rank=self.ctx.rank)

        evaluating = cfg.eval.every_n_epochs > 0 or cfg.eval.at_start
        if self._query_dataset is None and d.query is not None and evaluating:
            self._query_dataset = build_dataset(d.query, eval_transform(self.preprocess))
        if self._gallery_dataset is None and d.gallery is not None and evaluating:
            self._gallery_dataset = build_dataset(d.gallery, eval_transform(self.preprocess))
        if self._gallery_dataset is not None and self._query_dataset is None:
            raise ConfigError("a gallery was given without a query set (data.query)")

    def _setup_model(self) -> None:
        cfg = self.config
        class_num = cfg.model.class_num or len(self.label_map)
        if class_num < len(self.label_map):
            raise ConfigError(f"model.class_num={class_num} is smaller than the {len(self.label_map)} training "
                              "identities; raise it or set it to null")
        paddle.seed(_derived_seed(cfg.runtime.seed, 0xC0FFEE))  # same initial weights on every rank
        self.model: RecModel = build_rec_model(class_num, backbone=cfg.model.backbone,
                                               embedding_size=cfg.model.embedding_size, neck=cfg.model.neck,
                                               head=cfg.model.head, head_kwargs=cfg.model.head_kwargs,
                                               dropout_prob=cfg.model.dropout_prob)
        if cfg.model.pretrained:
            self.load_report = self._load_pretrained(cfg.model.pretrained)
        # The fused dw_conv of each re-parameterizable block is not used by the training-form forward (spec §4):
        # excluding it from the gradient keeps DataParallel from waiting for gradients that never come. Export
        # fuses the trained branches into it again.
        for block in self.model.rep_blocks():
            for param in block.dw_conv.parameters():
                param.stop_gradient = True
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.schedule = CosineWarmupSchedule(
            base_lr=cfg.optimizer.lr, iters_per_epoch=self.iters_per_epoch, epochs=cfg.schedule.epochs,
            warmup_epochs=cfg.schedule.warmup_epochs, warmup_start_lr=cfg.schedule.warmup_start_lr,
            eta_min=cfg.schedule.eta_min)
        if self.amp:
            rt = cfg.runtime
            if rt.amp_level == "O2":
                self.model, self.optimizer = paddle.amp.decorate(
                    models=self.model, optimizers=self.optimizer, level="O2",
                    master_weight=cfg.optimizer.multi_precision)
            self.scaler = paddle.amp.GradScaler(init_loss_scaling=rt.amp_init_loss_scaling,
                                                use_dynamic_loss_scaling=rt.amp_dynamic_loss_scaling)
        self.train_model: paddle.nn.Layer = (paddle.DataParallel(self.model) if self.ctx.enabled else self.model)
        # Each term is named after its type, with its weight popped from the keywords (types are unique).
        self.loss_fn = WeightedLoss.from_config([{term.type: term.model_dump(exclude={"type"})}
                                                 for term in cfg.loss.terms])

    def _load_pretrained(self, spec: str) -> LoadReport:
        path = _resolve_weights(spec)
        state = load_state_dict(path)
        full_model = any(k.startswith(("backbone.", "neck.")) for k in state)
        # A RecModel checkpoint must fit (only a head of another class count may differ); an ImageNet backbone
        # checkpoint fits only partly (last_conv 1280 vs 512 outputs, no neck, an fc): load what fits, report all.
        report = load_checkpoint(self.model, state, strict=full_model)
        if self.ctx.is_main:
            logger.info("initial weights from %s (%s checkpoint):\n%s", path,
                        "RecModel" if full_model else "backbone-only", report.summary())
        return report

    def _prepare_output(self, resume: Union[bool, str]) -> Optional[Path]:
        """Decide where to resume from (``None`` = fresh) and refuse to clobber another run's checkpoints."""
        latest = self.checkpoint_dir / "latest"
        # Rank 0's view decides for every rank, so all take the same branch (and meet at the same collectives)
        # even when the other ranks cannot see the output directory.
        exists = broadcast_object(checkpoint_exists(self.checkpoint_dir), self.ctx)
        if resume is False:
            if exists:
                if not self.config.output.overwrite:
                    raise OutputExistsError(
                        f"{self.output_dir} already holds checkpoints; continue that run with runtime.resume=auto "
                        "(or fit(resume=True)), pick another output.dir, or set output.overwrite=true to start over")
                if self.ctx.is_main:
                    logger.warning("output.overwrite: deleting the checkpoints of the previous run in %s",
                                   self.checkpoint_dir)
                    shutil.rmtree(self.checkpoint_dir)
                barrier(self.ctx)
            return None
        if resume == "auto":
            return latest if exists else None
        if resume is True:
            if not exists:
                raise ModelNotFoundError(f"resume requested but {latest} does not exist")
            return latest
        return Path(str(resume)).expanduser()

    def _restore(self, path: Path) -> None:
        ckpt: TrainingCheckpoint = load_training_checkpoint(path)
        state = ckpt.state
        saved_map = LabelMap.from_dict(state["label_map"])
        if saved_map != self.label_map:
            raise CheckpointMismatchError(
                f"{ckpt.path} was trained on other identities ({len(saved_map)} labels) than the current training "
                f"set ({len(self.label_map)} labels); resume needs the same training data")
        if state.get("iters_per_epoch") != self.iters_per_epoch:
            raise CheckpointMismatchError(
                f"{ckpt.path} has {state.get('iters_per_epoch')} steps per epoch, this run {self.iters_per_epoch}: "
                "the batch size, dataset or number of processes changed, so the schedule would not continue")
        load_checkpoint(self.model, ckpt.model, strict=True)
        optimizer_state_from_named(self.optimizer, self.model, ckpt.optimizer)
        if self.amp and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_value = state.get("best_value")
        self.best_epoch = state.get("best_epoch")
        ranks = state.get("rng_by_rank", [])
        if self.ctx.rank < len(ranks) and len(ranks) == self.ctx.world_size:
            _set_rng_state(ranks[self.ctx.rank])
        if self.ctx.is_main:
            logger.info("resumed from %s: epoch %d done, step %d, best %s=%s", ckpt.path, self.epoch,
                        self.global_step, self.config.eval.best_metric, self.best_value)

    def setup(self, resume: Union[bool, str, None] = None) -> None:
        """Build runtime, data, model, optimizer and schedule, and restore a checkpoint (``fit`` calls this)."""
        if self._built:
            return
        resume = self.config.runtime.resume if resume is None else resume
        self._setup_runtime()
        source = self._prepare_output(resume)
        self._setup_data()
        self._setup_model()
        if source is not None:
            self._restore(source)
        if self.ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.config.to_yaml(self.output_dir / "config.yaml")
        self._built = True

    # ---- training ---------------------------------------------------------------------------------------------

    def fit(self, resume: Union[bool, str, None] = None, *, stop_at_epoch: Optional[int] = None) -> TrainResult:
        """Train until ``schedule.epochs`` (or ``stop_at_epoch``), evaluating, checkpointing and exporting.

        Args:
            resume: overrides ``runtime.resume``: ``False`` fresh, ``True`` continue ``checkpoints/latest``,
                ``"auto"`` continue it when present, or a checkpoint directory.
            stop_at_epoch: stop after this epoch (a checkpoint is written), e.g. to split a long run into jobs;
                a later ``fit(resume=True)`` continues with the same schedule. No export when stopped early.

        Returns:
            A :class:`TrainResult`.
        """
        self.setup(resume)
        cfg = self.config
        last_epoch = cfg.schedule.epochs if stop_at_epoch is None else min(stop_at_epoch, cfg.schedule.epochs)
        if cfg.eval.at_start and self.epoch == 0 and self._query_dataset is not None:
            metrics = self.evaluate()
            if self.ctx.is_main:
                logger.info("epoch 0 (initial weights): %s", _format_metrics(metrics))
            self.initial_metrics = metrics
        run: List[EpochRecord] = []
        while self.epoch < last_epoch:
            record = self._train_epoch(self.epoch + 1)
            self.epoch += 1
            if self._eval_due(self.epoch):
                record.metrics = self.evaluate()
            self.history.append(record)
            run.append(record)
            if self.ctx.is_main:
                logger.info("epoch %d/%d: loss %s, lr %.3g, %.1f img/s%s", self.epoch, cfg.schedule.epochs,
                            " ".join(f"{k}={v:.4f}" for k, v in record.loss.items()), record.lr, record.images_per_s,
                            f"; {_format_metrics(record.metrics)}" if record.metrics else "")
            improved = self._update_best(record.metrics)
            finished = self.epoch == last_epoch
            if self.epoch % cfg.output.save_every_n_epochs == 0 or finished or improved:
                self._save(improved)
        export_dir = None
        if self.epoch >= cfg.schedule.epochs and cfg.output.export:
            export_dir = self.export()
        barrier(self.ctx)
        return TrainResult(epochs_completed=self.epoch, global_step=self.global_step, history=run,
                           best_metric=cfg.eval.best_metric, best_value=self.best_value, best_epoch=self.best_epoch,
                           checkpoint_dir=self.checkpoint_dir, export_dir=export_dir)

    def _eval_due(self, epoch: int) -> bool:
        every = self.config.eval.every_n_epochs
        return self._query_dataset is not None and every > 0 and (epoch % every == 0
                                                                   or epoch == self.config.schedule.epochs)

    def _train_epoch(self, epoch: int) -> EpochRecord:
        cfg, rt = self.config, self.config.runtime
        self.train_model.train()
        # Dropout draws from Paddle's global generator: seeding it per (epoch, rank) makes every epoch
        # reproducible on its own, which is what lets a resumed run match an uninterrupted one.
        paddle.seed(_derived_seed(rt.seed, epoch, self.ctx.rank))
        self.train_loader.set_epoch(epoch - 1)
        progress = _Progress(rt.progress_bar if self.ctx.is_main else False, self.iters_per_epoch,
                             f"epoch {epoch}/{cfg.schedule.epochs}")
        sums: Dict[str, float] = {}
        images = 0
        start = time.perf_counter()
        window_start, window_images = start, 0
        lr = self.schedule(self.global_step)
        try:
            for i, batch in enumerate(self.train_loader):
                lr = self.schedule(self.global_step)
                self.optimizer.set_lr(lr)
                parts = self._train_step(batch.images, batch.labels)
                self.lr_trace.append((self.global_step, lr))
                self.loss_trace.append((self.global_step, parts["total"]))
                self.global_step += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                images += len(batch.labels)
                window_images += len(batch.labels)
                progress.update({k: f"{v:.3f}" for k, v in parts.items()} | {"lr": f"{lr:.2e}"})
                if self.ctx.is_main and self.global_step % rt.log_every == 0:
                    now = time.perf_counter()
                    logger.info("epoch %d step %d/%d (global %d): %s lr=%.4g %.1f img/s", epoch, i + 1,
                                self.iters_per_epoch, self.global_step,
                                " ".join(f"{k}={v:.4f}" for k, v in parts.items()), lr,
                                window_images / max(now - window_start, 1e-9))
                    window_start, window_images = now, 0
        finally:
            progress.close()
        seconds = time.perf_counter() - start
        steps = max(1, self.iters_per_epoch)
        return EpochRecord(epoch=epoch, global_step=self.global_step, loss={k: v / steps for k, v in sums.items()},
                           lr=lr, images_per_s=images / max(seconds, 1e-9), seconds=seconds)

    def _train_step(self, images: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
        x = paddle.to_tensor(images)
        y = paddle.to_tensor(labels.astype(np.int64))
        with paddle.amp.auto_cast(enable=self.amp, level=self.config.runtime.amp_level):
            out = self.train_model(x, y)
            loss = self.loss_fn(out, y)
        if self.amp:
            scaled = self.scaler.scale(loss.total)
            scaled.backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.total.backward()
            self.optimizer.step()
        self.optimizer.clear_grad()
        values = {k: float(v) for k, v in loss.parts.items()}
        values["total"] = float(loss.total)
        if not math.isfinite(values["total"]):
            raise FloatingPointError(f"the loss became {values['total']} at step {self.global_step}: lower "
                                     "optimizer.lr or check the data")
        return values

    # ---- evaluation ---------------------------------------------------------------------------------------------

    def extract(self, dataset: ImageDataset) -> np.ndarray:
        """Eval-mode embeddings of every image of ``dataset``, ``[N, D]`` float32 (not normalised), on every rank.

        Under data parallelism each rank embeds a contiguous shard; the shards are gathered in rank order.
        """
        model = self.model
        was_training = model.training
        model.eval()
        sampler = SequentialBatchSampler(len(dataset), self.config.eval.batch_size, rank=self.ctx.rank,
                                         world_size=self.ctx.world_size)
        loader = DataLoader(dataset, sampler, num_workers=self.config.data.num_workers, seed=0, rank=self.ctx.rank)
        embed = model.embed if self.config.eval.feature_from == "features" else model.backbone
        chunks = []
        with paddle.no_grad(), paddle.amp.auto_cast(enable=self.amp, level=self.config.runtime.amp_level):
            for batch in loader:
                feat = embed(paddle.to_tensor(batch.images))
                chunks.append(feat.astype("float32").numpy())
        if was_training:
            model.train()
        local = np.concatenate(chunks, axis=0)
        return all_gather_rows(local, self.ctx)[: len(dataset)]

    def evaluate(self) -> Dict[str, float]:
        """Recall@k and mAP of the current weights on the query/gallery sets (rank 0's result on every rank).

        Returns:
            ``{"recall@1": ..., "recall@5": ..., "mAP": ...}`` (plus query counts).
        """
        if self._query_dataset is None:
            raise ConfigError("no query set to evaluate on (data.query)")
        ev = self.config.eval
        query = self._query_dataset
        q_feat = self.extract(query)
        q_labels = np.asarray(query.original_labels)
        q_cam: Optional[np.ndarray]
        g_cam: Optional[np.ndarray]
        if self._gallery_dataset is None:
            g_feat, g_labels = q_feat, q_labels
            # Each image is excluded from its own ranking through a per-image id (spec §8: unique_id "camera").
            ids = query.unique_ids if query.unique_ids is not None else np.arange(len(query))
            q_cam = g_cam = ids
        else:
            gallery = self._gallery_dataset
            g_feat, g_labels = self.extract(gallery), np.asarray(gallery.original_labels)
            both = query.unique_ids is not None and gallery.unique_ids is not None
            q_cam, g_cam = (query.unique_ids, gallery.unique_ids) if both else (None, None)
        metrics: Dict[str, float] = {}
        if self.ctx.is_main:
            result = retrieval_metrics(q_feat, q_labels, g_feat, g_labels, topk=ev.topk, query_cameras=q_cam,
                                       gallery_cameras=g_cam, normalize=ev.feature_normalize,
                                       reference_compat=ev.reference_compat)
            metrics = {k: float(v) for k, v in result.items()}
        return broadcast_object(metrics, self.ctx)

    def _update_best(self, metrics: Dict[str, float]) -> bool:
        key = self.config.eval.best_metric
        if key not in metrics or not math.isfinite(metrics[key]):
            return False
        if self.best_value is None or metrics[key] > self.best_value:
            self.best_value, self.best_epoch = metrics[key], self.epoch
            return True
        return False

    # ---- checkpoints and export ---------------------------------------------------------------------------------

    def _state(self) -> Dict[str, Any]:
        rng_by_rank = [_rng_state()]
        if self.ctx.enabled:
            gathered: List[Any] = []
            paddle.distributed.all_gather_object(gathered, rng_by_rank[0])
            rng_by_rank = gathered
        state = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "iters_per_epoch": self.iters_per_epoch,
            "world_size": self.ctx.world_size,
            "lr_next": self.schedule(self.global_step) if self.global_step < self.schedule.total_steps else None,
            "rng_by_rank": rng_by_rank,
            "label_map": self.label_map.to_dict(),
            "best_metric": self.config.eval.best_metric,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "metrics": self.history[-1].metrics if self.history else {},
            "config": self.config.to_dict(),
            "versions": _versions(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.amp:
            state["grad_scaler"] = {k: (v.tolist() if hasattr(v, "tolist") else v)
                                    for k, v in self.scaler.state_dict().items()}
        return state

    def _save(self, improved: bool) -> None:
        state = self._state()  # a collective under data parallelism: every rank takes part
        if self.ctx.is_main:
            save_checkpoint(self.checkpoint_dir, "latest", model=self.model.state_dict(),
                            optimizer=optimizer_state_to_named(self.optimizer, self.model), state=state)
            if improved:
                copy_checkpoint(self.checkpoint_dir, "latest", "best")
            logger.info("saved checkpoint %s%s", self.checkpoint_dir / "latest", " (new best)" if improved else "")
        barrier(self.ctx)

    def export(self, directory: Union[str, "os.PathLike[str]", None] = None, *,
               weights: Optional[str] = None) -> Optional[Path]:
        """Export an inference model that :meth:`Extractor.from_pretrained` loads (rank 0 only).

        Args:
            directory: target; default ``output.export_dir`` or ``<output>/inference``. Replaced if present.
            weights: ``"best"`` or ``"last"``; default ``output.export_from`` (``best`` falls back to the last
                weights when no evaluation ran).

        Returns:
            The export directory on rank 0, ``None`` on other ranks.
        """
        if not self.ctx.is_main:
            return None
        from shitu_features.inference.export import export_inference_model

        target = Path(directory or self.config.output.export_dir or self.output_dir / "inference").expanduser()
        which = weights or self.config.output.export_from
        state: Dict[str, Any] = self.model.state_dict()
        source: Dict[str, Any] = {"trained_epochs": self.epoch, "weights": "last"}
        if which == "best" and self.best_epoch is not None and checkpoint_exists(self.checkpoint_dir, "best"):
            best = load_training_checkpoint(self.checkpoint_dir / "best", with_optimizer=False)
            state = best.model
            source = {"trained_epochs": int(best.state["epoch"]), "weights": "best",
                      "checkpoint": str(best.path), self.config.eval.best_metric: self.best_value}
        # A fresh float32 model without head: the export never depends on the training wrapper (DataParallel,
        # AMP O2 float16 parameters) and never touches the weights being trained.
        m = self.config.model
        model = build_rec_model(None, backbone=m.backbone, embedding_size=m.embedding_size, neck=m.neck,
                                dropout_prob=m.dropout_prob)
        load_checkpoint(model, {k: v for k, v in state.items() if not k.startswith("head.")}, strict=True)
        path = export_inference_model(model, target, preprocess=self.preprocess, source=source, overwrite=True)
        (path / "label_map.json").write_text(json.dumps(self.label_map.to_dict()), encoding="utf-8")
        logger.info("exported the %s weights to %s", source["weights"], path)
        return path


def _format_metrics(metrics: Dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not k.startswith("num_"))
