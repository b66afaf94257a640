"""Tiny real datasets and configs for the trainer tests (att_faces images at 32x32, a few steps)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from shitu_features.training import TrainConfig


@pytest.fixture(scope="session")
def att_faces(data_dir: Path) -> Path:
    path = data_dir / "att_faces"
    if not (path / "labels.csv").is_file():
        pytest.skip(f"{path}/labels.csv not found")
    return path


@pytest.fixture
def tiny_lists(att_faces: Path, tmp_path: Path) -> Dict[str, Path]:
    """List files over att_faces: 6 training identities x 10 images, and a query set of 3 other identities."""
    rows = list(csv.DictReader((att_faces / "labels.csv").open()))
    train = [r for r in rows if int(r["subject_id"]) < 6]
    query = [r for r in rows if 30 <= int(r["subject_id"]) < 33]
    paths = {"train": tmp_path / "train.txt", "query": tmp_path / "query.txt"}
    paths["train"].write_text("".join(f"{r['path']} {r['subject_id']}\n" for r in train))
    paths["query"].write_text("".join(f"{r['path']} {r['subject_id']} {i}\n" for i, r in enumerate(query)))
    return paths


def tiny_config(att_faces: Path, lists: Dict[str, Path], out: Path, **overrides: Any) -> TrainConfig:
    """A config that trains a couple of steps on 32x32 images (batch 8 = 2 identities x 4) into ``out``."""
    values: Dict[str, Any] = {
        "model.pretrained": None,
        "data.train": {"format": "list", "file": str(lists["train"]), "root": str(att_faces)},
        "data.query": {"format": "list", "file": str(lists["query"]), "root": str(att_faces)},
        "data.batch_size": 8,
        "data.image_size": [32, 32],
        "data.num_workers": 1,
        "schedule.epochs": 2,
        "schedule.iters_per_epoch": 2,
        "schedule.warmup_epochs": 1,
        "optimizer.lr": 0.01,
        "eval.every_n_epochs": 0,
        "eval.batch_size": 16,
        "output.dir": str(out),
        "output.export": False,
        "runtime.progress_bar": False,
        "runtime.log_every": 1,
    }
    values.update(overrides)
    return TrainConfig().with_overrides(values)


@pytest.fixture
def make_config(att_faces: Path, tiny_lists: Dict[str, Path]) -> Callable[..., TrainConfig]:
    """``make_config(out_dir, **overrides)`` -> :func:`tiny_config` over :func:`tiny_lists`."""

    def make(out: Path, **overrides: Any) -> TrainConfig:
        return tiny_config(att_faces, tiny_lists, out, **overrides)

    return make
