"""Safe loading and atomic saving of Paddle ``.pdparams`` state dicts.

A ``.pdparams`` file is a Python pickle. ``paddle.load`` (like ``pickle.load``) runs whatever callable
the pickle names, so opening a checkpoint downloaded from a URL or a hub with it can execute arbitrary
code. :func:`load_state_dict` uses a restricted unpickler instead: it resolves only the handful of
globals that ``paddle.save`` actually writes for a state dict and refuses every other global with
:class:`~shitu_features.errors.UnsafeCheckpointError` *before* calling anything, so the payload never runs.

What ``paddle.save(layer.state_dict())`` writes (checked on the reference fixture written by Paddle 3.3.1
with numpy 1.x, and on files written by this environment's Paddle 3.3.1 with numpy 2.x):

* a plain ``dict`` of ``name -> numpy.ndarray`` plus a ``"StructuredToParameterName@@"`` table
  (``name -> internal tensor name``), pickled with protocol 4;
* the only globals are ``numpy.ndarray``, ``numpy.dtype`` and the array reconstructor
  ``numpy.core.multiarray._reconstruct`` (numpy 1.x) / ``numpy._core.multiarray._reconstruct`` (numpy 2.x);
* tensors nested deeper than the top level (``paddle.save({"model": sd, "epoch": 3})``) are written by
  Paddle's ``reduce_varbase`` as ``builtins.tuple((tensor_name, ndarray))``;
* ``protocol=2`` files store raw bytes through ``_codecs.encode(str, "latin1")`` and split tensors larger
  than 1 GiB into slices described by an ``"UnpackBigParamInfor@@"`` entry.

Those globals (plus ``collections.OrderedDict`` and numpy's scalar reconstructor, for metadata next to the
weights) are the whole allow-list, matched by exact ``(module, name)``. ``_codecs.encode`` is replaced by a
function that only performs the ``latin1`` round trip that pickle itself needs.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from shitu_features.errors import (
    CheckpointFormatError,
    InvalidInputError,
    ModelNotFoundError,
    ShituFeaturesError,
    UnsafeCheckpointError,
)

__all__ = ["load_state_dict", "save_state_dict", "ALLOWED_GLOBALS"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Keys Paddle adds next to the tensors (see paddle/framework/io.py and io_utils.py).
_NAME_TABLE_KEY = "StructuredToParameterName@@"
_BIG_PARAM_KEY = "UnpackBigParamInfor@@"  # sic: Paddle's spelling

# The numpy callables that pickled arrays and scalars name, taken from numpy itself so that both the
# numpy 1.x (``numpy.core``) and 2.x (``numpy._core``) spellings map to the same function without
# importing the deprecated ``numpy.core`` alias.
_NP_RECONSTRUCT: Callable[..., Any] = np.zeros(1).__reduce__()[0]
_NP_SCALAR: Callable[..., Any] = np.float32(0).__reduce__()[0]


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (latin1 only)."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1") or errors != "strict":
        raise UnsafeCheckpointError(
            f"checkpoint asks for _codecs.encode(..., {encoding!r}, {errors!r}); only the 'latin1' round trip "
            "that pickle uses for bytes is allowed"
        )
    if not isinstance(text, str):
        raise UnsafeCheckpointError(f"checkpoint calls _codecs.encode on a {type(text).__name__}, not a str")
    return text.encode("latin1")


#: ``(module, name)`` -> the object the restricted unpickler hands out for it. Nothing else resolves.
ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
    # Paddle's reduce_varbase writes nested tensors as tuple((name, ndarray)).
    ("builtins", "tuple"): tuple,
    ("__builtin__", "tuple"): tuple,  # Python 2 era pickles
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint: it references the global '{module}.{name}', which a Paddle "
                "state dict never contains (it could run code). Only load checkpoints from sources you trust; "
                "if this file is genuine, re-save it with paddle.save(model.state_dict(), path)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint: it uses a pickle persistent id ({type(pid).__name__}), which "
            "paddle.save never writes"
        )


def _is_tensor(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype != object
    # Tensors nested below the top level: Paddle's reduce_varbase writes (tensor_name, ndarray).
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], np.ndarray)
        and value[1].dtype != object
    )


def _as_array(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value[1]


def _repack_big_params(obj: dict[Any, Any]) -> dict[Any, Any]:
    """Join the slices Paddle writes for >1 GiB tensors with pickle protocol 2/3 (``_pack_loaded_dict``)."""
    info = obj.pop(_BIG_PARAM_KEY, None)
    if info is None:
        return obj
    if not isinstance(info, dict):
        raise CheckpointFormatError(f"{_BIG_PARAM_KEY} entry is a {type(info).__name__}, expected a dict")
    for key, spec in info.items():
        try:
            parts = [obj.pop(part) for part in spec["slices"]]
            obj[key] = np.concatenate(parts).reshape(tuple(spec["OriginShape"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointFormatError(f"cannot re-assemble the sliced tensor {key!r}: {exc}") from exc
    return obj


def _clean(obj: dict[Any, Any]) -> dict[Any, Any]:
    obj = _repack_big_params(obj)
    obj.pop(_NAME_TABLE_KEY, None)
    return obj


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and _is_tensor(v) for k, v in obj.items())


def _select_state_dict(obj: Any, path: Path) -> dict[str, np.ndarray]:
    """Pick the tensor dict out of what was unpickled, or explain why there is none."""
    if not isinstance(obj, dict):
        raise CheckpointFormatError(
            f"{path} holds a pickled {type(obj).__name__}, not a state dict (a dict of tensors); "
            "save weights with paddle.save(model.state_dict(), path)"
        )
    obj = _clean(obj)
    if _is_state_dict(obj):
        return {key: _as_array(value) for key, value in obj.items()}
    # A training checkpoint such as {"model": state_dict, "epoch": 3}: accepted only when exactly one
    # value is a tensor dict and nothing else at the top level is a tensor, so the choice is unambiguous.
    candidates = [k for k, v in obj.items() if isinstance(v, dict) and v and _is_state_dict(_clean(v))]
    top_level_tensors = [k for k, v in obj.items() if _is_tensor(v)]
    if len(candidates) == 1 and not top_level_tensors:
        key = candidates[0]
        logger.info("%s is a nested checkpoint; using its %r entry as the state dict", path, key)
        return {name: _as_array(value) for name, value in obj[key].items()}
    non_tensors = [repr(k) for k, v in obj.items() if not _is_tensor(v)][:10]
    raise CheckpointFormatError(
        f"{path} is not a Paddle state dict: the entries {', '.join(non_tensors)} are not tensors, and "
        f"{'several' if candidates else 'no'} nested tensor dicts were found ({candidates}). "
        "Extract the model weights and save them with paddle.save(model.state_dict(), path)."
    )


def load_state_dict(path: PathLike) -> dict[str, np.ndarray]:
    """Load a Paddle ``.pdparams`` state dict without executing code from the file.

    Accepts what ``paddle.save(layer.state_dict(), path)`` writes (any pickle protocol 2-4, numpy 1.x or
    2.x), and a nested checkpoint (``{"model": state_dict, "epoch": 3, ...}``) when exactly one entry is a
    dict of tensors. Paddle's ``"StructuredToParameterName@@"`` name table is dropped. bfloat16 tensors come
    back as ``uint16`` arrays, as with ``paddle.load(..., return_numpy=True)``.

    Args:
        path: The ``.pdparams`` file.

    Returns:
        ``{parameter_name: array}`` in file order; each array keeps its stored dtype (usually ``float32``)
        and shape, e.g. ``backbone.stem.0.conv.weight`` -> ``float32 [32, 3, 3, 3]``.

    Raises:
        ModelNotFoundError: ``path`` does not exist or is a directory.
        UnsafeCheckpointError: The pickle references a global outside :data:`ALLOWED_GLOBALS`
            (e.g. ``posix.system``); nothing it names was called.
        CheckpointFormatError: The file is truncated, corrupted, not a pickle, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ModelNotFoundError(f"checkpoint {path} {what}; pass the path of a .pdparams file")
    with path.open("rb") as stream:
        head = stream.read(2)
    # paddle.save always pickles with protocol 2-4, which starts with PROTO (0x80) and the version byte;
    # checking it first keeps other files (images, zips) from being interpreted as pickle opcodes.
    if len(head) == 2 and (head[0] != 0x80 or not 2 <= head[1] <= 5):
        raise CheckpointFormatError(
            f"{path} is not a Paddle checkpoint: it does not start like a pickle of protocol 2-5 "
            f"(first bytes {head!r}); pass a file written by paddle.save"
        )
    try:
        with path.open("rb") as stream:
            # latin1 keeps numpy arrays pickled by Python 2 era Paddle readable, as paddle.load does.
            obj = _RestrictedUnpickler(stream, encoding="latin1").load()
    except ShituFeaturesError:
        raise
    except Exception as exc:  # pickle raises many types on bad input; re-raised with context
        raise CheckpointFormatError(
            f"cannot read checkpoint {path} ({path.stat().st_size} bytes): it is truncated, corrupted or not a "
            f"pickle ({type(exc).__name__}: {exc}). Download or save it again."
        ) from exc
    return _select_state_dict(obj, path)


def save_state_dict(state_dict: Mapping[str, Any], path: PathLike, *, protocol: int = 4) -> Path:
    """Write a state dict atomically in the format ``paddle.save(layer.state_dict())`` produces.

    The values are converted to CPU Paddle tensors and written with ``paddle.save`` to a unique temporary
    file in the destination folder, which is then renamed over ``path``; a reader never sees a partial file
    and an interrupted save leaves the previous file intact. The result loads with ``paddle.load``,
    PaddleClas (``Global.pretrained_model``) and :func:`load_state_dict`, bit for bit.

    Args:
        state_dict: ``{name: array}``; values are ``numpy.ndarray`` (any numeric or bool dtype) or
            ``paddle.Tensor``.
        path: Destination file, conventionally ending in ``.pdparams``. Missing folders are created.
        protocol: Pickle protocol passed to ``paddle.save`` (2, 3 or 4).

    Returns:
        The destination path.

    Raises:
        InvalidInputError: A key is not a string or a value is not an array or tensor.
    """
    import paddle  # heavy import kept out of load_state_dict, which needs only numpy

    path = Path(path)
    tensors: dict[str, Any] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"state dict keys must be str, got {type(key).__name__} {key!r}")
        if isinstance(value, paddle.Tensor):
            tensors[key] = value
        elif isinstance(value, np.ndarray) and value.dtype != object:
            tensors[key] = paddle.to_tensor(value, place=paddle.CPUPlace())
        else:
            raise InvalidInputError(
                f"state dict entry {key!r} is a {type(value).__name__}, expected a numpy array or paddle.Tensor"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        paddle.save(tensors, str(tmp), protocol=protocol)
        with tmp.open("rb") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.debug("saved %d tensors to %s", len(tensors), path)
    return path
