"""Softmax cross-entropy with optional label smoothing (PaddleClas ``CELoss``, spec §7.1)."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F

from shitu_features.errors import ConfigError, InvalidInputError
from shitu_features.losses._utils import as_label_vector, check_reduction, reduce

__all__ = ["CELoss", "cross_entropy_loss"]


def _check_epsilon(epsilon: float | None) -> float | None:
    if epsilon is None:
        return None
    if not 0.0 <= float(epsilon) < 1.0:
        # The reference silently turns an out-of-range epsilon into "no smoothing"; we refuse it instead.
        raise ConfigError(f"CELoss epsilon must be in [0, 1) or None, got {epsilon!r}")
    return float(epsilon) if epsilon > 0 else None


def cross_entropy_loss(
    logits: paddle.Tensor,
    labels: paddle.Tensor | np.ndarray,
    *,
    epsilon: float | None = None,
    reduction: str = "mean",
) -> paddle.Tensor:
    """Cross-entropy of ``logits`` against hard labels, optionally label-smoothed.

    With smoothing the target is ``(1 - epsilon) * onehot + epsilon / C`` and the loss per sample is
    ``-sum_c target_c * log_softmax(logits)_c`` (spec §7.1). It is computed as
    ``(1 - epsilon) * nll + epsilon * mean_c(-log_softmax)``, which is the same quantity without materialising
    a ``[B, C]`` one-hot target (C is 192,612 in the reference recipe).

    Args:
        logits: ``[B, C]`` float logits.
        labels: ``[B]`` or ``[B, 1]`` int64 class ids in ``[0, C)``.
        epsilon: label-smoothing factor in ``[0, 1)``; ``None`` or ``0`` means none.
        reduction: ``mean`` (scalar, the reference), ``sum`` (scalar) or ``none`` (``[B]``).

    Returns:
        Scalar float tensor, or ``[B]`` with ``reduction="none"``.

    Raises:
        InvalidInputError: ``logits`` is not ``[B, C]`` or ``labels`` is not ``[B]`` / ``[B, 1]`` integers.
        ConfigError: ``epsilon`` outside ``[0, 1)`` or an unknown ``reduction``.
    """
    epsilon = _check_epsilon(epsilon)
    check_reduction(reduction)
    if not isinstance(logits, paddle.Tensor) or logits.ndim != 2:
        raise InvalidInputError(f"logits must be a 2-D paddle.Tensor [B, C], got {getattr(logits, 'shape', logits)}")
    y = as_label_vector(labels, int(logits.shape[0])).astype("int64")
    log_prob = F.log_softmax(logits, axis=-1)  # [B, C]
    nll = -paddle.take_along_axis(log_prob, y.unsqueeze(1), axis=1).squeeze(1)  # [B]
    if epsilon is None:
        per_sample = nll
    else:
        per_sample = (1.0 - epsilon) * nll - epsilon * log_prob.mean(axis=1)
    return reduce(per_sample, reduction)


class CELoss(paddle.nn.Layer):
    """Label-smoothed softmax cross-entropy, as PaddleClas ``CELoss`` (spec §7.1).

    Args:
        epsilon: label-smoothing factor in ``[0, 1)``; ``None`` or ``0`` disables smoothing. The PP-ShiTuV2
            recipe uses 0.1.
        reduction: ``mean`` (default, the reference), ``sum`` or ``none``.

    Shape:
        - logits: ``[B, C]`` float32.
        - labels: ``[B]`` or ``[B, 1]`` int64.
        - output: scalar (``[B]`` with ``reduction="none"``).

    Relations:
        The reference silently ignores an epsilon outside ``(0, 1)``; this class raises :class:`ConfigError`
        for values outside ``[0, 1)``. Soft (``[B, C]``) labels are not supported.
    """

    #: Which model output a :class:`~shitu_features.losses.WeightedLoss` feeds to this loss.
    input_key = "logits"

    def __init__(self, epsilon: float | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.epsilon = _check_epsilon(epsilon)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """Return the loss of ``logits`` ``[B, C]`` against ``labels`` ``[B]`` / ``[B, 1]``."""
        return cross_entropy_loss(logits, labels, epsilon=self.epsilon, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, reduction={self.reduction!r}"
