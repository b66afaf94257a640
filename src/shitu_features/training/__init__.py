"""Training: ``Trainer(TrainConfig(...)).fit()`` reproduces the PP-ShiTuV2 recipe (spec §1, §6, §7).

- :class:`TrainConfig`: typed configuration (YAML, dict, ``key=value`` overrides, PaddleClas YAML import);
- :class:`Trainer`: the loop, evaluation, atomic checkpoints, resume, export, data parallelism;
- :func:`cosine_with_warmup`: the learning-rate schedule as a pure function of the step;
- :func:`build_optimizer`: Momentum + L2 with the reference's exemptions.

See ``docs/training.md``. Inference code never imports this package.
"""

from __future__ import annotations

from shitu_features.training.checkpoint import TrainingCheckpoint, load_training_checkpoint, save_checkpoint
from shitu_features.training.config import (
    CELossConfig,
    DataConfig,
    DatasetConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    OutputConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
    TripletAngularMarginLossConfig,
    TripletLossConfig,
    scale_lr,
)
from shitu_features.training.distributed import DistributedContext, init_distributed
from shitu_features.training.optim import ParamGroups, build_optimizer, parameter_groups
from shitu_features.training.schedule import CosineWarmupSchedule, cosine_with_warmup
from shitu_features.training.trainer import EpochRecord, Trainer, TrainResult, build_dataset

__all__ = [
    "TrainConfig",
    "ModelConfig",
    "DataConfig",
    "DatasetConfig",
    "LossConfig",
    "CELossConfig",
    "TripletAngularMarginLossConfig",
    "TripletLossConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "EvalConfig",
    "OutputConfig",
    "RuntimeConfig",
    "scale_lr",
    "Trainer",
    "TrainResult",
    "EpochRecord",
    "build_dataset",
    "cosine_with_warmup",
    "CosineWarmupSchedule",
    "build_optimizer",
    "parameter_groups",
    "ParamGroups",
    "TrainingCheckpoint",
    "save_checkpoint",
    "load_training_checkpoint",
    "DistributedContext",
    "init_distributed",
]
