"""Batch-hard triplet losses on Euclidean distance (PaddleClas ``TripletLoss``, ``TripletLossV2``, ``TriHardLoss``)."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F

from shitu_features.errors import InvalidInputError
from shitu_features.losses._utils import as_label_vector, check_features, hardest_pairs, same_label_mask

__all__ = ["TriHardLoss", "TripletLoss", "TripletLossV2", "batch_hard_triplet_loss", "pairwise_distance"]


def pairwise_distance(features: paddle.Tensor, *, squared: bool = False) -> paddle.Tensor:
    """Pairwise Euclidean distance of the rows of ``features``, as the reference computes it.

    ``d2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j`` (one ``addmm``), clipped below at 1e-12 so the square root has a
    finite gradient, then ``sqrt`` unless ``squared``.

    Args:
        features: ``[B, D]`` float.
        squared: return squared distances.

    Returns:
        ``[B, B]`` float distances.
    """
    batch = int(features.shape[0])
    sq = paddle.pow(features, 2).sum(axis=1, keepdim=True).expand([batch, batch])  # [B, B]
    d2 = paddle.addmm(input=sq + sq.t(), x=features, y=features.t(), alpha=-2.0, beta=1.0)
    d2 = paddle.clip(d2, min=1e-12)
    return d2 if squared else d2.sqrt()


def batch_hard_triplet_loss(
    features: paddle.Tensor,
    labels: paddle.Tensor | np.ndarray,
    *,
    margin: float = 1.0,
    normalize_feature: bool = False,
    normalize_epsilon: float = 1e-12,
    squared: bool = False,
) -> paddle.Tensor:
    """Classic batch-hard triplet loss (Hermans et al. 2017) on Euclidean distance.

    Per anchor ``i``: ``d_ap = max`` distance to a same-label sample (itself included), ``d_an = min`` distance
    to an other-label sample; the loss is ``mean_i max(0, d_ap - d_an + margin)``.

    Args:
        features: ``[B, D]`` float features.
        labels: ``[B]`` or ``[B, 1]`` int64 labels. An anchor without other-label samples contributes 0.
        margin: distance margin.
        normalize_feature: divide rows by ``norm + normalize_epsilon`` first (``TripletLossV2`` uses 1e-12).
        normalize_epsilon: added to the norm when normalising.
        squared: use squared distances (``TriHardLoss``).

    Returns:
        Scalar float tensor.
    """
    batch = check_features(features)
    y = as_label_vector(labels, batch)
    f = features
    if normalize_feature:
        norm = paddle.norm(f, p=2, axis=-1, keepdim=True)
        f = f / (norm + normalize_epsilon) if normalize_epsilon else f / norm
    dist = pairwise_distance(f, squared=squared)
    dist_ap, dist_an = hardest_pairs(dist, same_label_mask(y), kind="distance")
    # Paddle MarginRankingLoss(input=d_an, other=d_ap, label=1): relu(-(d_an - d_ap) + margin), then mean.
    return F.relu(-(dist_an - dist_ap) + margin).mean()


class TripletLoss(paddle.nn.Layer):
    """Batch-hard triplet loss on Euclidean distance (PaddleClas ``TripletLoss``; optional normalisation).

    With the defaults it is the reference ``TripletLoss(margin=1.0)`` (raw features). With
    ``normalize_feature=True`` it is ``TripletLossV2`` (rows divided by ``norm + 1e-12``).

    Args:
        margin: distance margin (reference default 1.0).
        normalize_feature: L2-normalise rows (with 1e-12 added to the norm) before the distances.
        feature_from: which model output a :class:`~shitu_features.losses.WeightedLoss` feeds to this loss.

    Shape:
        - features: ``[B, D]`` float32.
        - labels: ``[B]`` or ``[B, 1]`` int64.
        - output: scalar.

    References:
        Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person Re-Identification", arXiv:1703.07737;
        PaddleClas ``ppcls/loss/triplet.py``.

    Relations:
        :class:`TripletLossV2` only changes the defaults; :class:`TriHardLoss` uses squared distances of
        normalised features; :class:`~shitu_features.losses.TripletAngularMarginLoss` works on cosine similarity.
    """

    def __init__(self, margin: float = 1.0, normalize_feature: bool = False, feature_from: str = "features") -> None:
        super().__init__()
        self.margin = float(margin)
        self.normalize_feature = bool(normalize_feature)
        self.input_key = feature_from

    def forward(self, features: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """Return the loss of ``features`` ``[B, D]`` with ``labels`` ``[B]`` / ``[B, 1]``."""
        return batch_hard_triplet_loss(
            features, labels, margin=self.margin, normalize_feature=self.normalize_feature
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, normalize_feature={self.normalize_feature}, feature_from={self.input_key!r}"


class TripletLossV2(TripletLoss):
    """PaddleClas ``TripletLossV2``: :class:`TripletLoss` with ``margin=0.5`` and normalised features by default.

    Args:
        margin: distance margin.
        normalize_feature: divide rows by ``norm + 1e-12`` first.
        feature_from: which model output a :class:`~shitu_features.losses.WeightedLoss` feeds to this loss.

    Shape:
        As :class:`TripletLoss`.
    """

    def __init__(self, margin: float = 0.5, normalize_feature: bool = True, feature_from: str = "features") -> None:
        super().__init__(margin=margin, normalize_feature=normalize_feature, feature_from=feature_from)


class TriHardLoss(paddle.nn.Layer):
    """PaddleClas ``TriHardLoss``: batch-hard triplet on squared distances of L2-normalised features.

    The reference ignores the labels and assumes classes come in contiguous blocks of ``samples_each_class``
    (the P x K layout). Here the labels are used when given; without labels the block layout is assumed, as in
    the reference. Both agree on a P x K batch from :class:`~shitu_features.data.PKSampler`.

    Args:
        batch_size: expected batch size (checked when not ``None``, as the reference asserts it).
        samples_each_class: K, used to build block labels when ``labels`` is ``None``.
        margin: squared-distance margin (reference default 0.1).
        feature_from: which model output a :class:`~shitu_features.losses.WeightedLoss` feeds to this loss.

    Shape:
        - features: ``[B, D]`` float32.
        - labels: ``[B]`` / ``[B, 1]`` int64, or ``None``.
        - output: scalar.
    """

    def __init__(
        self,
        batch_size: int | None = None,
        samples_each_class: int = 2,
        margin: float = 0.1,
        feature_from: str = "features",
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.samples_each_class = int(samples_each_class)
        self.margin = float(margin)
        self.input_key = feature_from

    def forward(self, features: paddle.Tensor, labels: paddle.Tensor | None = None) -> paddle.Tensor:
        """Return the loss of ``features`` ``[B, D]`` (labels optional, see the class docstring)."""
        batch = check_features(features)
        if self.batch_size is not None and batch != self.batch_size:
            raise InvalidInputError(f"TriHardLoss was built for batch_size={self.batch_size}, got {batch}")
        if labels is None:
            labels = paddle.arange(batch, dtype="int64") // self.samples_each_class
        return batch_hard_triplet_loss(
            features, labels, margin=self.margin, normalize_feature=True, normalize_epsilon=0.0, squared=True
        )

    def extra_repr(self) -> str:
        return f"batch_size={self.batch_size}, samples_each_class={self.samples_each_class}, margin={self.margin}"
