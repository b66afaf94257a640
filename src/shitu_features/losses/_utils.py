"""Helpers shared by the loss modules: label checking and masked hardest-pair mining."""

from __future__ import annotations

from typing import Literal

import numpy as np
import paddle

from shitu_features.errors import ConfigError, InvalidInputError

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of ``mean``, ``sum``, ``none``; raise :class:`ConfigError` otherwise."""
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce(values: paddle.Tensor, reduction: str) -> paddle.Tensor:
    """Reduce a per-sample loss ``[B]`` as ``mean`` (scalar), ``sum`` (scalar) or ``none`` (``[B]``)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def as_label_vector(labels: paddle.Tensor | np.ndarray, batch_size: int) -> paddle.Tensor:
    """Bring integer labels of shape ``[B]`` or ``[B, 1]`` to a ``[B]`` tensor.

    Args:
        labels: class ids, ``[B]`` or ``[B, 1]`` (the reference train engine passes ``[B, 1]``); a numpy array is
            converted.
        batch_size: ``B``, the first dimension of the matching logits or features.

    Returns:
        ``[B]`` tensor of the input's integer dtype.

    Raises:
        InvalidInputError: the shape is neither ``[B]`` nor ``[B, 1]``, or the dtype is not integer.
    """
    if not isinstance(labels, paddle.Tensor):
        labels = paddle.to_tensor(np.asarray(labels))
    shape = list(labels.shape)
    if not (shape == [batch_size] or shape == [batch_size, 1]):
        raise InvalidInputError(f"labels must have shape [{batch_size}] or [{batch_size}, 1], got {shape}")
    if labels.dtype not in (paddle.int64, paddle.int32):
        raise InvalidInputError(f"labels must be int64 or int32, got {labels.dtype}")
    return labels.reshape([batch_size])


def check_features(features: paddle.Tensor, name: str = "features") -> int:
    """Check that ``features`` is a float ``[B, D]`` tensor and return ``B``."""
    if not isinstance(features, paddle.Tensor) or features.ndim != 2:
        got = list(features.shape) if hasattr(features, "shape") else type(features).__name__
        raise InvalidInputError(f"{name} must be a 2-D paddle.Tensor [B, D], got {got}")
    return int(features.shape[0])


def same_label_mask(labels: paddle.Tensor) -> paddle.Tensor:
    """``[B]`` labels -> ``[B, B]`` bool, ``True`` where ``labels[i] == labels[j]`` (the diagonal included)."""
    return labels.unsqueeze(1) == labels.unsqueeze(0)


def hardest_pairs(
    values: paddle.Tensor, is_pos: paddle.Tensor, *, kind: Literal["similarity", "distance"]
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Hardest positive and hardest negative per anchor (row) of a pairwise matrix.

    For a *similarity* the hardest positive is the row minimum over positives and the hardest negative the
    maximum over negatives; for a *distance* it is the other way round. The anchor itself counts as a positive,
    as in the reference (it never wins for a similarity unless all positives have similarity >= 1).

    Unlike the reference (``masked_select`` + ``reshape([B, -1])``, spec §7.2 step 4) rows may hold different
    numbers of positives. A row without any negative gets ``-inf`` (similarity) or ``+inf`` (distance) as its
    hardest negative, which every hinge turns into 0 with a zero gradient.

    Args:
        values: ``[B, B]`` float pairwise similarity or distance.
        is_pos: ``[B, B]`` bool, ``True`` for same-label pairs.
        kind: whether larger values mean more similar (``similarity``) or less (``distance``).

    Returns:
        ``(hardest_positive, hardest_negative)``, each ``[B]`` float.
    """
    inf = paddle.full_like(values, float("inf"))
    if kind == "similarity":
        hardest_pos = paddle.where(is_pos, values, inf).min(axis=1)
        hardest_neg = paddle.where(is_pos, -inf, values).max(axis=1)
    else:
        hardest_pos = paddle.where(is_pos, values, -inf).max(axis=1)
        hardest_neg = paddle.where(is_pos, inf, values).min(axis=1)
    return hardest_pos, hardest_neg
