"""Triplet angular margin loss with batch-hard mining on cosine similarity (PaddleClas, spec §7.2)."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F

from shitu_features.losses._utils import (
    as_label_vector,
    check_features,
    check_reduction,
    hardest_pairs,
    reduce,
    same_label_mask,
)

__all__ = ["TripletAngularMarginLoss", "triplet_angular_margin_loss"]


def triplet_angular_margin_loss(
    features: paddle.Tensor,
    labels: paddle.Tensor | np.ndarray,
    *,
    margin: float = 0.5,
    normalize_feature: bool = True,
    reduction: str = "mean",
    add_absolute: bool = False,
    absolute_loss_weight: float = 1.0,
    ap_value: float = 0.9,
    an_value: float = 0.5,
) -> paddle.Tensor:
    """Batch-hard triplet loss on cosine similarity, with optional absolute terms (spec §7.2).

    With ``s = f_i . f_j`` (cosine when ``normalize_feature``), per anchor ``i``:
    ``s_ap(i) = min over same-label j (j = i included) of s``, ``s_an(i) = max over other labels of s``,
    and the ranking term is ``max(0, s_an - s_ap + margin)``, reduced by ``reduction``.

    With ``add_absolute`` the result is
    ``absolute_loss_weight * (mean(g_an) + mean(max(0, ap_value - s_ap))) + mean(ranking)`` where
    ``g_an = s_an - an_value`` when that is positive and **1.0 otherwise**. The 1.0 is the reference's
    ``ones_like`` (spec §7.2, §10): a constant with zero gradient that only shifts the reported value, kept for
    value parity. In that case ``reduction`` only decides how the ranking term is reduced before the final
    ``mean`` (so ``sum`` gives ``sum(ranking)``), exactly as the reference does.

    Args:
        features: ``[B, D]`` float features (raw; normalised here when ``normalize_feature``).
        labels: ``[B]`` or ``[B, 1]`` int64 labels. Every anchor should have at least one other-label sample;
            an anchor without one contributes 0 to the ranking term and the constant 1.0 to the an-term.
        margin: ranking margin on cosine similarity.
        normalize_feature: L2-normalise the rows first, without epsilon (as the reference).
        reduction: ``mean``, ``sum`` or ``none`` (``[B]``, only without ``add_absolute``).
        add_absolute: add the absolute ap/an terms.
        absolute_loss_weight: weight of the absolute terms.
        ap_value: target lower bound of the hardest-positive similarity.
        an_value: target upper bound of the hardest-negative similarity.

    Returns:
        Scalar float tensor (``[B]`` with ``reduction="none"`` and no absolute terms).
    """
    check_reduction(reduction)
    batch = check_features(features)
    y = as_label_vector(labels, batch)
    f = features
    if normalize_feature:
        # No epsilon, as the reference: a zero feature row gives NaN there and here.
        f = paddle.divide(f, paddle.norm(f, p=2, axis=-1, keepdim=True))
    sim = paddle.matmul(f, f, transpose_y=True)  # [B, B] cosine similarity
    sim_ap, sim_an = hardest_pairs(sim, same_label_mask(y), kind="similarity")  # [B], [B]
    # Paddle MarginRankingLoss(input=s_ap, other=s_an, label=1): relu(-(s_ap - s_an) + margin).
    loss = reduce(F.relu(-(sim_ap - sim_an) + margin), reduction)
    if add_absolute:
        abs_ap = ap_value - sim_ap
        abs_ap = paddle.where(abs_ap > 0, abs_ap, paddle.zeros_like(abs_ap))
        abs_an = sim_an - an_value
        # spec §7.2 step 6: the reference fills with ones_like, not zeros_like; replicated for value parity.
        abs_an = paddle.where(abs_an > 0, abs_an, paddle.ones_like(abs_an))
        loss = (abs_an.mean() + abs_ap.mean()) * absolute_loss_weight + loss.mean()
    return loss


class TripletAngularMarginLoss(paddle.nn.Layer):
    """PaddleClas ``TripletAngularMarginLoss`` as a layer on tensors (spec §7.2).

    Defaults are the reference class defaults; the PP-ShiTuV2 recipe uses ``margin=0.5, add_absolute=True,
    absolute_loss_weight=0.1, ap_value=0.8, an_value=0.4``. See :func:`triplet_angular_margin_loss`.

    Args:
        margin: ranking margin on cosine similarity.
        normalize_feature: L2-normalise features first.
        reduction: ``mean``, ``sum`` or ``none``.
        add_absolute: add the absolute ap/an terms (with the reference's 1.0 constant in the an-term).
        absolute_loss_weight: weight of the absolute terms.
        ap_value: hardest-positive similarity target.
        an_value: hardest-negative similarity target.
        feature_from: which model output a :class:`~shitu_features.losses.WeightedLoss` feeds to this loss
            (the reference YAML key; ``features`` is the BN-neck output).

    Shape:
        - features: ``[B, D]`` float32.
        - labels: ``[B]`` or ``[B, 1]`` int64.
        - output: scalar.

    References:
        PaddleClas ``ppcls/loss/tripletangularmarginloss.py``; spec §7.2.

    Relations:
        :class:`~shitu_features.losses.TripletLoss` is the Euclidean-distance variant.
    """

    def __init__(
        self,
        margin: float = 0.5,
        normalize_feature: bool = True,
        reduction: str = "mean",
        add_absolute: bool = False,
        absolute_loss_weight: float = 1.0,
        ap_value: float = 0.9,
        an_value: float = 0.5,
        feature_from: str = "features",
    ) -> None:
        super().__init__()
        self.margin = float(margin)
        self.normalize_feature = bool(normalize_feature)
        self.reduction = check_reduction(reduction)
        self.add_absolute = bool(add_absolute)
        self.absolute_loss_weight = float(absolute_loss_weight)
        self.ap_value = float(ap_value)
        self.an_value = float(an_value)
        self.input_key = feature_from

    def forward(self, features: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """Return the loss of ``features`` ``[B, D]`` with ``labels`` ``[B]`` / ``[B, 1]``."""
        return triplet_angular_margin_loss(
            features,
            labels,
            margin=self.margin,
            normalize_feature=self.normalize_feature,
            reduction=self.reduction,
            add_absolute=self.add_absolute,
            absolute_loss_weight=self.absolute_loss_weight,
            ap_value=self.ap_value,
            an_value=self.an_value,
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, normalize_feature={self.normalize_feature}, reduction={self.reduction!r}, "
            f"add_absolute={self.add_absolute}, absolute_loss_weight={self.absolute_loss_weight}, "
            f"ap_value={self.ap_value}, an_value={self.an_value}, feature_from={self.input_key!r}"
        )
