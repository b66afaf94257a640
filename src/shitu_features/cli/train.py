"""``shitu-features train``: train (or fine-tune) a model from a YAML config plus ``key=value`` overrides."""

from __future__ import annotations

import argparse
import json
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
  shitu-features train train.yaml schedule.epochs=10 data.batch_size=64 output.directory=runs/exp1
  shitu-features train GeneralRecognitionV2_PPLCNetV2_base.yaml --paddleclas --print-config
then export the checkpoint it writes:
  shitu-features export runs/exp1/checkpoints/best.pdparams -o models/exp1"""


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
    say(args, "training finished" + (f": {_summary(result)}" if result is not None else ""))
    return 0


def _summary(result: Any) -> str:
    """A one-line rendering of what ``Trainer.fit`` returned."""
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    elif hasattr(result, "__dataclass_fields__"):
        import dataclasses

        result = dataclasses.asdict(result)
    try:
        return json.dumps(result, default=str)
    except (TypeError, ValueError):
        return str(result)
