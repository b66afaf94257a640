"""``shitu-features export``: a training checkpoint (.pdparams) -> an inference model directory."""

from __future__ import annotations

import argparse
import os
from typing import Any

from shitu_features.cli._common import add_subcommand, say

_DESCRIPTION = """\
Export a PaddleClas-format training checkpoint (a RecModel state dict, e.g. the official
general_PPLCNetV2_base_pretrained_v1.0.pdparams or one written by `shitu-features train`) to a Paddle 3
inference directory: inference.json + inference.pdiparams (re-parameterised, without the classification
head), inference.yml (PaddleX layout) and config.json. `--model DIR` of the other commands loads it.

The checkpoint is read with a restricted unpickler (no code runs) and loaded strictly: a missing or
mis-shaped tensor outside the head is an error. The exported model is checked against the checkpoint's
model before the directory is renamed into place."""

_EPILOG = """\
examples:
  shitu-features export general_PPLCNetV2_base_pretrained_v1.0.pdparams -o models/ppshitu
  shitu-features export runs/exp1/checkpoints/best/model.pdparams -o models/exp1 --name exp1 --overwrite
  shitu-features embed photos/ -o feats --model models/exp1"""


def add_parser(subparsers: Any) -> None:
    """Register ``export``."""
    parser = add_subcommand(subparsers, "export", help="export a .pdparams checkpoint to an inference directory",
                            description=_DESCRIPTION, epilog=_EPILOG, run=run)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="training checkpoint (.pdparams)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="inference directory to write")
    parser.add_argument("--name", help="model name recorded in config.json (default: the checkpoint's file name)")
    parser.add_argument("--backbone", default="PPLCNetV2_base_ShiTu", help="backbone architecture")
    parser.add_argument("--fixed-input-size", action="store_true",
                        help="trace the graph for 224x224 inputs only (default: any height and width)")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")


def run(args: argparse.Namespace) -> int:
    """Run ``export``."""
    from shitu_features.errors import ModelNotFoundError
    from shitu_features.inference.export import export_inference_model
    from shitu_features.inference.hub import sha256_file
    from shitu_features.models import build_rec_model, load_checkpoint
    from shitu_features.serialization import load_state_dict

    if not os.path.isfile(args.checkpoint):
        raise ModelNotFoundError(f"checkpoint not found: {args.checkpoint}")
    state = load_state_dict(args.checkpoint)
    # The head (192,612 classes in the official checkpoint) is not part of the exported embedding.
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    bias = state.get("backbone.last_conv.bias")
    embedding_size = int(bias.shape[0]) if bias is not None else 512  # class_expand of the trained model
    model = build_rec_model(class_num=None, backbone=args.backbone, embedding_size=embedding_size)
    report = load_checkpoint(model, state)
    del state
    name = args.name or os.path.splitext(os.path.basename(args.checkpoint))[0]
    source = {"checkpoint": os.path.abspath(args.checkpoint), "sha256": sha256_file(args.checkpoint)}
    out = export_inference_model(model, args.output, model_name=name, source=source, overwrite=args.overwrite,
                                 dynamic_input_size=not args.fixed_input_size)
    say(args, f"exported {name} ({embedding_size}-d, {len(report.loaded)} tensors loaded) -> {out}")
    return 0

