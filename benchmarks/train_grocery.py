"""Benchmark: train on half of the Grocery Store classes, retrieve among the other half.

Protocol (class-disjoint metric learning, as in SOP/CUB): the 81 fine-grained classes of
``../shared/data/grocery_store`` (all splits, iconic images excluded) are split with a seeded permutation; the
training half trains the model, the other half is the query set retrieving among itself (each image excluded
from its own ranking). Prints Recall@1/5 and mAP before and after training, training images/s and wall time.

Run (one process)::

    python benchmarks/train_grocery.py --epochs 3 --image-size 64

Two data-parallel CPU processes (the fast path on a 2-core machine, see docs/training.md)::

    python -m paddle.distributed.launch --nproc_per_node 2 benchmarks/train_grocery.py --epochs 3

``--pretrained PATH`` starts from an ImageNet or PP-ShiTuV2 ``.pdparams`` instead of random weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from shitu_features.data import ImageDataset, class_disjoint_split, eval_transform
from shitu_features.training import TrainConfig, Trainer
from shitu_features.training.trainer import preprocess_config_of, train_transform_of

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "grocery_store"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("GROCERY_DIR", DEFAULT_DATA)))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="per process (P x K with K=4)")
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--warmup-epochs", type=float, default=0.25)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--num-threads", type=int, default=1,
                        help="Paddle CPU threads per process (0 = Paddle default)")
    parser.add_argument("--max-eval-images", type=int, default=1000,
                        help="evaluate on a seeded subset of the held-out images (0 = all)")
    parser.add_argument("--iters-per-epoch", type=int, default=None, help="cap the steps per epoch (speed runs)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluations (speed runs)")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)

    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                        format=f"%(asctime)s [rank {rank}] %(message)s")
    output = args.output or Path(tempfile.gettempdir()) / f"train_grocery_seed{args.seed}"
    size = (args.image_size, args.image_size)
    cfg = TrainConfig().with_overrides({
        "model.pretrained": args.pretrained,
        "data.batch_size": args.batch_size, "data.image_size": list(size), "data.num_workers": args.num_workers,
        "schedule.epochs": args.epochs, "schedule.warmup_epochs": args.warmup_epochs,
        "optimizer.lr": args.lr, "schedule.iters_per_epoch": args.iters_per_epoch,
        "eval.every_n_epochs": 0 if args.no_eval else args.epochs, "eval.at_start": not args.no_eval,
        "output.dir": str(output), "output.overwrite": True, "output.export": False,
        "runtime.seed": args.seed, "runtime.num_threads": args.num_threads or None, "runtime.progress_bar": None if rank == 0 else False,
    })

    # Every rank builds the same split in memory (no files to race on).
    full = ImageDataset.from_csv(args.data / "labels.csv", label_column="fine_id",
                                 where={"split": ["train", "val", "test"]})
    train, held_out = class_disjoint_split(full, 0.5, seed=args.seed)
    if args.max_eval_images and len(held_out) > args.max_eval_images:
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(held_out))[: args.max_eval_images])
        held_out = held_out.subset(keep, relabel=False)
    train.transform = train_transform_of(cfg)
    held_out.transform = eval_transform(preprocess_config_of(cfg))

    start = time.perf_counter()
    trainer = Trainer(cfg, train_dataset=train, query_dataset=None if args.no_eval else held_out)
    result = trainer.fit()
    wall = time.perf_counter() - start
    if rank != 0:
        return
    train_s = sum(r.seconds for r in result.history)
    images = sum(r.images_per_s * r.seconds for r in result.history)
    final = result.history[-1].metrics
    summary = {
        "processes": world,
        "train_classes": int(len(train.label_map)), "train_images": len(train),
        "eval_classes": int(len(np.unique(held_out.labels))), "eval_images": len(held_out),
        "image_size": args.image_size, "batch_per_process": args.batch_size, "epochs": args.epochs,
        "steps": result.global_step,
        "initial": {k: round(v, 4) for k, v in (trainer.initial_metrics or {}).items() if not k.startswith("num_")},
        "final": {k: round(v, 4) for k, v in final.items() if not k.startswith("num_")},
        "loss_first_epoch": round(result.history[0].loss["total"], 4),
        "loss_last_epoch": round(result.history[-1].loss["total"], 4),
        "train_images_per_s_per_process": round(images / max(train_s, 1e-9), 2),
        "train_images_per_s_total": round(world * images / max(train_s, 1e-9), 2),
        "last_epoch_images_per_s_total": round(world * result.history[-1].images_per_s, 2),
        "wall_time_s": round(wall, 1),
    }
    print(json.dumps(summary, indent=1))
    if final:
        print(f"Recall@1 {final['recall@1']:.4f}  mAP {final['mAP']:.4f}  "
              f"{summary['train_images_per_s_total']:.1f} images/s  wall {wall:.0f} s")
    else:
        print(f"{summary['train_images_per_s_total']:.1f} images/s  wall {wall:.0f} s")


if __name__ == "__main__":
    main()
