"""Data parallelism under Paddle's own launcher: 2 CPU processes (gloo) train, evaluate and write one checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from shitu_features.training import TrainConfig
from shitu_features.training.checkpoint import load_training_checkpoint

MakeConfig = Callable[..., TrainConfig]  # the make_config fixture of conftest.py

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_cpu_run_trains_and_writes_one_checkpoint(make_config: MakeConfig, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = make_config(out, **{"schedule.epochs": 1, "schedule.iters_per_epoch": 2, "eval.every_n_epochs": 1})
    cfg_path = tmp_path / "train.yaml"
    cfg.to_yaml(cfg_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "FLAGS_"))}
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
           str(tmp_path / "logs"), str(REPO / "examples" / "train_ddp.py"), "--config", str(cfg_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "logs").glob("workerlog.*")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs

    ckpt = load_training_checkpoint(out / "checkpoints" / "latest")
    assert ckpt.state["world_size"] == 2 and ckpt.state["epoch"] == 1 and ckpt.state["global_step"] == 2
    assert len(ckpt.state["rng_by_rank"]) == 2  # every rank's generator state is kept
    assert set(ckpt.state["metrics"]) >= {"recall@1", "recall@5", "mAP"}  # eval gathered across ranks
    assert ckpt.state["metrics"]["num_queries"] == 30  # every query image exactly once (no shard padding)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "latest"]
    # rank 0 logs, rank 1 stays quiet
    worker0 = (tmp_path / "logs" / "workerlog.0").read_text(errors="replace")
    worker1 = (tmp_path / "logs" / "workerlog.1").read_text(errors="replace")
    assert "saved checkpoint" in worker0 and "saved checkpoint" not in worker1
