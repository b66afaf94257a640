"""``shitu-features train``: train (or fine-tune) a model from a YAML config plus ``key=value`` overrides."""

from __future__ import annotations

import argparse
from typing import Any

from shitu_features.cli._common import add_subcommand, say

_DESCRIPTION = """\
Train a PP-ShiTuV2-style recognition model. CONFIG is a training YAML (the format of TrainConfig.to_yaml;
`--print-config` shows every key with its value), or a PaddleClas GeneralRecognitionV2 YAML with
--paddleclas. Each OVERRIDE is section.key=value, parsed as YAML (1e-3, true, null, [1, 5]); list items are
addressed by index (loss.terms.0.epsilon=0.2). Unknown keys and invalid values are errors that name the key."""

_EPILOG = """\
examples:
  shitu-features train train.yaml
  shitu-features train train.yaml schedule.epochs=10 data.batch_size=64 output.dir=runs/exp1
  shitu-features train GeneralRecognitionV2_PPLCNetV2_base.yaml --paddleclas --print-config
fit() exports the final model to <output.dir>/inference (output.export); to export a checkpoint yourself:
  shitu-features export runs/exp1/checkpoints/best/model.pdparams -o models/exp1"""


def add_parser(subparsers: Any) -> None:
    """Register ``train``."""
    parser = add_subcommand(subparsers, "train", help="train a model from a YAML config",
                            description=_DESCRIPTION, epilog=_EPILOG, run=run)
    parser.add_argument("config", metavar="CONFIG", help="training YAML")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="section.key=value")
    parser.add_argument("--paddleclas", action="store_true", help="CONFIG is a PaddleClas YAML")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (YAML) on stdout and exit without training")


def run(args: argparse.Namespace) -> int:
    """Run ``train``."""
    from shitu_features.training.config import TrainConfig

    config = TrainConfig.from_paddleclas_yaml(args.config) if args.paddleclas else TrainConfig.from_yaml(args.config)
    if args.overrides:
        config = config.with_overrides(args.overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    from shitu_features.training import Trainer

    result = Trainer(config).fit()
    say(args, _summary(result))
    return 0


def _summary(result: Any) -> str:
    """One line about what :meth:`Trainer.fit` did (a ``TrainResult``)."""
    parts = [f"training finished: {result.epochs_completed} epochs, {result.global_step} steps"]
    if result.best_value is not None:
        parts.append(f"best {result.best_metric} {result.best_value:.4f} (epoch {result.best_epoch})")
    parts.append(f"checkpoints in {result.checkpoint_dir}")
    if result.export_dir is not None:
        parts.append(f"inference model in {result.export_dir}")
    return "; ".join(parts)
