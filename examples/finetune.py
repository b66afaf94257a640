"""Fine-tune PP-ShiTuV2 on a folder-per-class dataset, then embed with the result.

    python examples/finetune.py                                  # generated sample images, a few quick steps
    python examples/finetune.py products/ --epochs 20 --image-size 224 --batch-size 64 -o runs/products

``products/<class name>/<image>``: one sub-folder per identity (at least 2 identities). The run starts from the
official PP-ShiTuV2 training checkpoint (downloaded once, then cached; it may hold the 192,612-class head, up to
~410 MB, which is replaced by one for your classes) unless ``--pretrained`` (or ``SHITU_FEATURES_EXAMPLE_CHECKPOINT``) gives another ``.pdparams``
file or URL. It uses the PP-ShiTuV2 recipe (cross entropy + triplet angular margin loss, PK sampling, Momentum,
cosine schedule), evaluates Recall@1 on the training folder after each epoch (a smoke check, not a held-out
score), writes checkpoints under ``OUT/checkpoints`` and exports ``OUT/inference``, which
``Extractor.from_pretrained`` loads. See docs/training.md for the full recipe and multi-GPU training.

The defaults are sized for a laptop CPU demo (tiny images, few steps); they do not produce a useful model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from shitu_features import Extractor
from shitu_features.errors import DownloadError, OfflineError
from shitu_features.inference.registry import DEFAULT_MODEL
from shitu_features.training import TrainConfig, Trainer

CHECKPOINT_ENV = "SHITU_FEATURES_EXAMPLE_CHECKPOINT"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune on a folder-per-class dataset.")
    parser.add_argument("root", nargs="?", type=Path, help="one sub-folder of images per class; "
                        "default: generated sample images")
    parser.add_argument("-o", "--output", type=Path, help="run folder (default: a temporary folder)")
    parser.add_argument("--pretrained", default=os.environ.get(CHECKPOINT_ENV),
                        help=f"initial .pdparams (path or URL); default: ${CHECKPOINT_ENV}, else the official "
                             "PP-ShiTuV2 checkpoint")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps-per-epoch", type=int, default=3, help="0 = one pass over the data per epoch")
    parser.add_argument("--batch-size", type=int, default=8, help="P x K images per step (K = 2 here)")
    parser.add_argument("--image-size", type=int, default=64, help="training and inference input side (224 for "
                        "the official recipe)")
    parser.add_argument("--lr", type=float, default=0.001)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            from _sample_images import make_sample_dataset

            root = Path(tmp) / "samples"
            make_sample_dataset(root, per_class=4, size=96)
        output = args.output or Path(tmp) / "run"

        overrides = {
            # An official name resolves to its training checkpoint, through the mirror when one is set.
            "model.pretrained": args.pretrained or DEFAULT_MODEL,
            "data.train": {"format": "folder", "root": str(root)},
            "data.query": {"format": "folder", "root": str(root)},   # no gallery: each image searches the others
            "data.batch_size": args.batch_size,
            "data.sample_per_id": 2,
            "data.image_size": [args.image_size, args.image_size],
            "data.num_workers": 2,
            "optimizer.lr": args.lr,
            "schedule.epochs": args.epochs,
            "schedule.warmup_epochs": 0,
            "schedule.iters_per_epoch": args.steps_per_epoch or None,
            "eval.batch_size": 16,
            "output.dir": str(output),
            "output.export_from": "last",
            "runtime.seed": 0,
            "runtime.progress_bar": False,
            "runtime.log_every": 1,
        }
        config = TrainConfig().with_overrides(overrides)      # validated: a wrong key or value is a ConfigError
        try:
            result = Trainer(config).fit()
        except (OfflineError, DownloadError) as exc:
            sys.exit(f"error: {exc}\n\nNo network? Pass a local checkpoint: --pretrained /path/to/model.pdparams "
                     f"(or set {CHECKPOINT_ENV}).")

        for record in result.history:
            print(f"epoch {record.epoch}: loss {record.loss['total']:.4f}, "
                  f"Recall@1 {record.metrics.get('recall@1', float('nan')):.3f}, {record.images_per_s:.1f} img/s")
        assert result.export_dir is not None
        extractor = Extractor.from_pretrained(result.export_dir)   # the fine-tuned model, as for inference
        vec = extractor.embed(next(p for p in sorted(root.rglob("*.png"))))
        print(f"exported {result.export_dir.name}/: input {extractor.input_size}, embedding {vec.shape} {vec.dtype}")
        if args.output is None:
            print("(temporary run folder removed; pass -o DIR to keep the checkpoints and the exported model)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
