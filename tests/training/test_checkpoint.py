"""Checkpoint files: atomic publication, verification, and recovery from a crash at every point of a save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from shitu_features.errors import CheckpointFormatError, ModelNotFoundError
from shitu_features.training.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    checkpoint_exists,
    copy_checkpoint,
    load_training_checkpoint,
    save_checkpoint,
)


def _save(directory: Path, epoch: int, name: str = "latest") -> Path:
    model = {"w": np.full((3, 4), float(epoch), np.float32), "b": np.arange(4, dtype=np.float32) + epoch}
    optimizer = {"w@velocity_0": np.full((3, 4), 0.5 * epoch, np.float32)}
    return save_checkpoint(directory, name, model=model, optimizer=optimizer, state={"epoch": epoch, "rng": [1, 2]})


def test_round_trip(tmp_path: Path) -> None:
    path = _save(tmp_path, 3)
    assert path == tmp_path / "latest" and checkpoint_exists(tmp_path)
    ckpt = load_training_checkpoint(path)
    assert ckpt.state["epoch"] == 3 and ckpt.state["rng"] == [1, 2]
    np.testing.assert_array_equal(ckpt.model["w"], np.full((3, 4), 3.0, np.float32))
    np.testing.assert_array_equal(ckpt.optimizer["w@velocity_0"], np.full((3, 4), 1.5, np.float32))
    assert sorted(os.listdir(tmp_path)) == ["latest"]  # no temporaries left behind


def test_replacing_keeps_one_directory_and_copy_publishes_best(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    copy_checkpoint(tmp_path, "latest", "best")
    _save(tmp_path, 2)
    assert sorted(os.listdir(tmp_path)) == ["best", "latest"]
    assert load_training_checkpoint(tmp_path / "latest").state["epoch"] == 2
    assert load_training_checkpoint(tmp_path / "best").state["epoch"] == 1  # hard links survive the replace


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    """Crash while writing the new files: a half-written temp dir next to the intact previous checkpoint."""
    _save(tmp_path, 1)
    partial = _save(tmp_path / "scratch", 2)
    tmp = tmp_path / ".latest.tmp-deadbeef"
    partial.rename(tmp)
    data = (tmp / MODEL_FILE).read_bytes()
    (tmp / MODEL_FILE).write_bytes(data[: len(data) // 2])  # truncated new file
    (tmp / STATE_FILE).unlink()  # the state file is written last: it is not there yet
    assert load_training_checkpoint(tmp_path / "latest").state["epoch"] == 1
    _save(tmp_path, 3)  # the next save cleans the leftover
    assert not tmp.exists() and load_training_checkpoint(tmp_path / "latest").state["epoch"] == 3


def test_crash_between_the_two_renames_uses_the_previous_checkpoint(tmp_path: Path) -> None:
    """Old moved aside, new not yet in place: ``latest`` is missing, ``.latest.old-*`` holds the last good one."""
    _save(tmp_path, 1)
    (tmp_path / "latest").rename(tmp_path / ".latest.old-0001")
    assert checkpoint_exists(tmp_path)
    ckpt = load_training_checkpoint(tmp_path / "latest")
    assert ckpt.state["epoch"] == 1 and ckpt.path.name == ".latest.old-0001"


def test_damaged_checkpoint_falls_back_to_the_previous_version(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    _save(tmp_path / "scratch", 1).rename(tmp_path / ".latest.old-0001")  # as a crash after the swap leaves it
    model = tmp_path / "latest" / MODEL_FILE
    model.write_bytes(model.read_bytes()[:-10])  # e.g. a disk that lost the tail of the file
    assert load_training_checkpoint(tmp_path / "latest").state["epoch"] == 1


def test_damaged_checkpoint_without_fallback_is_an_error(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    state = tmp_path / "latest" / STATE_FILE
    data = json.loads(state.read_text())
    data["files"][MODEL_FILE]["sha256"] = "0" * 64
    state.write_text(json.dumps(data))
    with pytest.raises(CheckpointFormatError, match="sha256"):
        load_training_checkpoint(tmp_path / "latest")
    with pytest.raises(ModelNotFoundError):
        load_training_checkpoint(tmp_path / "nothing")


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from shitu_features.training.checkpoint import save_checkpoint
    big = np.zeros((4_000_000,), np.float32)  # 16 MB per file: a save takes a while
    epoch = 0
    while True:
        epoch += 1
        big[:] = epoch
        save_checkpoint(sys.argv[1], "latest", model={"w": big}, optimizer={"w@velocity_0": big},
                        state={"epoch": epoch})
        print(epoch, flush=True)
""")


@pytest.mark.slow
def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """A real crash: a process saving in a loop is killed at arbitrary points; the survivor always loads."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    for delay in (0.3, 0.7):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ckpts")], stdout=subprocess.PIPE,
                                text=True)
        first = proc.stdout.readline()  # at least one save completed
        assert first.strip() == "1"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_training_checkpoint(tmp_path / "ckpts" / "latest")
        epoch = ckpt.state["epoch"]
        assert epoch >= 1 and np.all(ckpt.model["w"] == epoch) and np.all(ckpt.optimizer["w@velocity_0"] == epoch)
