"""Fixtures of the command-line tests: run the real console script in a subprocess, an exported model, images.

The model is the reference architecture with random weights (``reference/model/rec_model.pdparams``), exported
once per session with ``shitu-features export`` itself. Images are real faces from ``data/att_faces``, copied
into a temporary folder (never into the repository).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pytest

#: The installed console script next to the interpreter running the tests (``pip install -e .`` puts it there).
SCRIPT = Path(sys.executable).with_name("shitu-features" + (".exe" if os.name == "nt" else ""))
SUBJECTS = ("s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8")
PER_SUBJECT = 4
#: Small batches and chunks: a run has many chunks to interrupt, and the suite stays fast.
RUN_OPTS = ("--batch-size", "2", "--chunk-size", "2")


def command(*args: str, module: bool = False) -> list[str]:
    """The argv that runs ``shitu-features ARGS`` (the console script, or ``python -m shitu_features``)."""
    if module or not SCRIPT.exists():
        return [sys.executable, "-m", "shitu_features", *args]
    return [str(SCRIPT), *args]


def cli_env(home: os.PathLike[str] | str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: the test's cache home, offline, no colour/terminal assumptions."""
    env = dict(os.environ)
    if home is not None:
        env["SHITU_FEATURES_HOME"] = str(home)
    env["SHITU_FEATURES_OFFLINE"] = "1"  # a test never downloads
    env.update(extra or {})
    return env


@dataclass
class Result:
    """A finished CLI run."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: os.PathLike[str] | str | None = None, home: os.PathLike[str] | str | None = None,
            module: bool = False, timeout: float = 300) -> Result:
    """Run ``shitu-features ARGS`` to completion and capture its output."""
    proc = subprocess.run(command(*args, module=module), cwd=cwd, env=cli_env(home or os.environ.get(
        "SHITU_FEATURES_HOME")), capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def copy_faces(data_dir: Path, dest: Path, subjects: Sequence[str] = SUBJECTS, per_subject: int = PER_SUBJECT) -> Path:
    """Copy ``per_subject`` att_faces images of each subject to ``dest/<subject>/<n>.pgm``; return ``dest``."""
    for subject in subjects:
        (dest / subject).mkdir(parents=True, exist_ok=True)
        for n in range(1, per_subject + 1):
            shutil.copyfile(data_dir / "att_faces" / "images" / subject / f"{n}.pgm", dest / subject / f"{n}.pgm")
    return dest


@pytest.fixture(scope="session")
def cli_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache home shared by the session's CLI runs (the export fixture runs before any per-test home exists)."""
    return tmp_path_factory.mktemp("cli_home")


@pytest.fixture(scope="session")
def model_dir(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory, cli_home: Path) -> Path:
    """The reference checkpoint exported once with ``shitu-features export``."""
    out = tmp_path_factory.mktemp("cli_model") / "model"
    result = run_cli("export", str(reference_dir / "model" / "rec_model.pdparams"), "-o", str(out), home=cli_home)
    assert result.returncode == 0, result.stderr
    assert "exported" in result.stderr and str(out) in result.stderr
    return out


@pytest.fixture(scope="session")
def faces(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 real face images in 8 subject folders (read-only for the tests: copy before modifying)."""
    return copy_faces(data_dir, tmp_path_factory.mktemp("faces") / "faces")


@dataclass
class WholeRun:
    """The uninterrupted, unsharded ``embed`` of :func:`faces`."""

    workdir: Path
    npy: Path
    paths: Path

    @property
    def vectors(self) -> np.ndarray:
        return np.load(self.npy)

    @property
    def path_list(self) -> list[str]:
        return self.paths.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def whole_run(faces: Path, model_dir: Path, cli_home: Path) -> WholeRun:
    """``shitu-features embed faces -o out/whole`` run once, from the faces' parent folder (relative paths)."""
    workdir = faces.parent
    result = run_cli("embed", "faces", "-o", "out/whole", "--model", str(model_dir), *RUN_OPTS, cwd=workdir,
                     home=cli_home)
    assert result.returncode == 0, result.stderr
    return WholeRun(workdir, workdir / "out" / "whole.npy", workdir / "out" / "whole.paths.txt")
