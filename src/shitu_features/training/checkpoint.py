"""Training checkpoints: written atomically, verified when read, recoverable after a crash.

A checkpoint is a directory ``<output>/checkpoints/<name>/`` (``latest``, ``best``) holding:

- ``model.pdparams``: the model's state dict in PaddleClas format (loads with ``load_checkpoint``, PaddleClas
  ``Global.pretrained_model`` and ``paddle.load``);
- ``optimizer.pdparams``: the optimizer's accumulators keyed by *structured* parameter name
  (``backbone.stem.0.conv.weight@velocity_0``), so they load into a model built in another process, whose
  internal tensor names (``conv2d_57.w_0``) differ;
- ``trainer_state.json``: written last; epoch, global step, RNG states, label mapping, config, metrics,
  library versions, and the sha256 and size of both ``.pdparams`` files.

Writing (:func:`save_checkpoint`): everything goes to a fresh hidden sibling ``.<name>.tmp-<id>/``, each file is
fsynced, then the previous ``<name>`` is renamed to ``.<name>.old-<id>``, the new directory renamed to ``<name>``
and the old one deleted. Reading (:func:`load_training_checkpoint`) verifies the state file and the hashes; if
``<name>`` is missing or fails verification (a crash between the two renames, a damaged file), the newest valid
``.<name>.old-*`` is used instead, with a warning. A crash at any point therefore leaves a loadable checkpoint:
the new one or the previous one. Leftover temporary directories are removed by the next save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Union

import numpy as np

from shitu_features.errors import CheckpointFormatError, ModelNotFoundError
from shitu_features.inference.hub import sha256_file
from shitu_features.serialization import load_state_dict, save_state_dict

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "TrainingCheckpoint",
    "save_checkpoint",
    "load_training_checkpoint",
    "checkpoint_exists",
    "remove_stale_temporaries",
    "copy_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.pdparams"
OPTIMIZER_FILE = "optimizer.pdparams"
STATE_FILE = "trainer_state.json"

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class TrainingCheckpoint:
    """A checkpoint as read back.

    Attributes:
        path: the directory it was read from (``latest``, or a ``.latest.old-*`` after a crash).
        model: model state dict, ``name -> array`` with each tensor's stored shape and dtype (float32 unless the
            model was trained in AMP O2, float16), e.g. ``backbone.stem.0.conv.weight`` ``[32, 3, 3, 3]``.
        optimizer: optimizer state keyed by structured name (see the module docstring), arrays shaped like their
            parameters (float32); empty when read with ``with_optimizer=False``.
        state: the parsed ``trainer_state.json`` (``epoch``, ``global_step``, ``rng``, ``label_map``, ...).
    """

    path: Path
    model: Dict[str, np.ndarray]
    optimizer: Dict[str, np.ndarray]
    state: Dict[str, Any]


def _fsync_dir(path: Path) -> None:
    # Makes the renames durable on POSIX; directories cannot be opened this way on Windows.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: PathLike, name: str) -> None:
    """Delete ``.<name>.tmp-*`` leftovers of an interrupted save (only the single writer may call this)."""
    for tmp in Path(directory).glob(f".{name}.tmp-*"):
        logger.info("removing the incomplete checkpoint %s left by an interrupted save", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(directory: PathLike, name: str, *, model: Mapping[str, Any], optimizer: Mapping[str, Any],
                    state: Mapping[str, Any]) -> Path:
    """Write checkpoint ``<directory>/<name>`` atomically (see the module docstring).

    Args:
        directory: the checkpoints folder (created if needed).
        name: ``"latest"``, ``"best"``, ...
        model: model state dict (arrays or tensors).
        optimizer: optimizer state keyed by structured name (arrays or tensors).
        state: JSON-serialisable trainer state; the file hashes and ``format_version`` are added.

    Returns:
        The checkpoint directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _staged(directory, name) as tmp:
        save_state_dict(model, tmp / MODEL_FILE)
        save_state_dict(optimizer, tmp / OPTIMIZER_FILE)
        files = {f: {"sha256": sha256_file(tmp / f), "size": (tmp / f).stat().st_size}
                 for f in (MODEL_FILE, OPTIMIZER_FILE)}
        full_state = {**dict(state), "format_version": FORMAT_VERSION, "files": files}
        state_path = tmp / STATE_FILE
        with state_path.open("w", encoding="utf-8") as fh:
            json.dump(full_state, fh, indent=1, sort_keys=False)
            fh.flush()
            os.fsync(fh.fileno())
    return directory / name


@contextmanager
def _staged(directory: Path, name: str) -> Iterator[Path]:
    """A fresh hidden temporary folder; on a clean exit it is fsynced and published as ``directory / name``.

    Whatever happens, the temporary folder is gone afterwards; a crash inside leaves the old checkpoint in place.
    """
    remove_stale_temporaries(directory, name)
    tmp = directory / f".{name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        _publish(tmp, directory / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        os.replace(final, final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}")
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    # The new checkpoint is in place: the previous version, and any left by a crash, are no longer needed.
    for stale in final.parent.glob(f".{final.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _candidates(directory: Path, name: str) -> List[Path]:
    olds = sorted(directory.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [directory / name, *olds]


def checkpoint_exists(directory: PathLike, name: str = "latest") -> bool:
    """True when ``<directory>/<name>`` (or a recoverable previous version of it) has a state file."""
    return any((p / STATE_FILE).is_file() for p in _candidates(Path(directory), name))


def _read(path: Path, with_optimizer: bool) -> TrainingCheckpoint:
    state_path = path / STATE_FILE
    if not state_path.is_file():
        raise CheckpointFormatError(f"{path} has no {STATE_FILE}: the save did not finish")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{state_path} is unreadable: {exc}") from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(f"{state_path}: unknown checkpoint format {state.get('format_version')!r} "
                                    f"(this version reads {FORMAT_VERSION})")
    files = state.get("files", {})
    wanted = [MODEL_FILE, OPTIMIZER_FILE] if with_optimizer else [MODEL_FILE]
    for fname in wanted:
        fpath, meta = path / fname, files.get(fname)
        if not fpath.is_file() or meta is None:
            raise CheckpointFormatError(f"{fpath} is missing")
        if fpath.stat().st_size != meta["size"] or sha256_file(fpath) != meta["sha256"]:
            raise CheckpointFormatError(f"{fpath} does not match the size/sha256 recorded in {STATE_FILE} "
                                        "(truncated or modified)")
    model = load_state_dict(path / MODEL_FILE)
    optimizer = load_state_dict(path / OPTIMIZER_FILE) if with_optimizer else {}
    return TrainingCheckpoint(path=path, model=model, optimizer=optimizer, state=state)


def load_training_checkpoint(path: PathLike, *, with_optimizer: bool = True) -> TrainingCheckpoint:
    """Read and verify a checkpoint directory, falling back to its previous version after a crash.

    Args:
        path: the checkpoint directory (``<output>/checkpoints/latest``); it may be absent when a crash left
            only ``.latest.old-*``.
        with_optimizer: also read ``optimizer.pdparams`` (not needed to evaluate or export).

    Returns:
        The :class:`TrainingCheckpoint` of the first valid candidate.

    Raises:
        ModelNotFoundError: neither the directory nor a previous version exists.
        CheckpointFormatError: every candidate is damaged (each reason is listed).
    """
    path = Path(path)
    candidates = [p for p in _candidates(path.parent, path.name) if p.exists()]
    if not candidates:
        raise ModelNotFoundError(f"no checkpoint at {path}")
    problems: List[str] = []
    for candidate in candidates:
        try:
            ckpt = _read(candidate, with_optimizer)
        except (CheckpointFormatError, ModelNotFoundError) as exc:
            problems.append(f"{candidate.name}: {exc}")
            continue
        if problems:
            logger.warning("checkpoint %s is not usable (%s); using the previous good one, %s", path,
                           "; ".join(problems), candidate)
        return ckpt
    raise CheckpointFormatError(f"no usable checkpoint at {path}: " + "; ".join(problems))


def copy_checkpoint(directory: PathLike, source: str, target: str) -> Path:
    """Publish ``<directory>/<source>`` also as ``<directory>/<target>`` atomically (e.g. ``latest`` -> ``best``).

    Files are hard-linked when the filesystem allows it (they are never modified in place, only replaced), and
    copied otherwise.
    """
    directory = Path(directory)
    src = directory / source
    with _staged(directory, target) as tmp:
        for item in src.iterdir():
            try:
                os.link(item, tmp / item.name)
            except OSError:
                shutil.copy2(item, tmp / item.name)
    return directory / target
