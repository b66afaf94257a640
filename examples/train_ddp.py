"""Train with shitu_features on one or many processes.

Alone::

    python examples/train_ddp.py --config train.yaml --set schedule.epochs=10

Data parallel, two processes on this machine (gloo on CPU, NCCL on GPUs)::

    python -m paddle.distributed.launch --nproc_per_node 2 examples/train_ddp.py --config train.yaml

Several machines: run the same command on each, adding ``--nnodes N --master <ip of node 0>:<port>`` to the
launcher (see docs/training.md). Every process runs this same script; rank 0 logs, writes the checkpoints and
exports the model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from shitu_features.training import TrainConfig, Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="a shitu_features training YAML (TrainConfig.to_yaml format)")
    source.add_argument("--paddleclas-config", help="a PaddleClas GeneralRecognitionV2 YAML to translate")
    parser.add_argument("--set", "-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. -o optimizer.lr=0.01 (repeatable)")
    parser.add_argument("--resume", default=None, help="'auto', 'true', or a checkpoint directory")
    parser.add_argument("--stop-at-epoch", type=int, default=None, help="stop after this epoch (resume later)")
    parser.add_argument("--print-config", action="store_true", help="print the final config and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    # Rank 0 reports; the others only warn, so N processes do not print N copies of every line.
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    if args.config:
        config = TrainConfig.from_yaml(args.config)
    elif args.paddleclas_config:
        config = TrainConfig.from_paddleclas_yaml(args.paddleclas_config)
    else:
        config = TrainConfig()
    config = config.with_overrides(args.overrides)
    if args.print_config:
        print(config.to_yaml())
        return 0
    resume = None
    if args.resume is not None:
        resume = {"true": True, "false": False}.get(args.resume.lower(), args.resume)
    result = Trainer(config).fit(resume=resume, stop_at_epoch=args.stop_at_epoch)
    if rank == 0:
        summary = {"epochs": result.epochs_completed, "steps": result.global_step,
                   result.best_metric: result.best_value, "export": str(result.export_dir)}
        logging.getLogger("train_ddp").info("done: %s", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
