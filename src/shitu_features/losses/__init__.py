"""Training losses of PP-ShiTuV2 as Paddle layers on tensors (spec §7).

Each loss is a pure function plus a thin :class:`paddle.nn.Layer` taking ``(input, labels)`` with labels
``[B]`` or ``[B, 1]``; :class:`WeightedLoss` combines named terms and reports each one. :data:`LOSSES` maps the
reference YAML names to the classes.
"""

from __future__ import annotations

from shitu_features.losses.combined import LOSSES, CombinedLoss, LossOutput, LossTerm, WeightedLoss, build_loss
from shitu_features.losses.cross_entropy import CELoss, cross_entropy_loss
from shitu_features.losses.triplet import (
    TriHardLoss,
    TripletLoss,
    TripletLossV2,
    batch_hard_triplet_loss,
    pairwise_distance,
)
from shitu_features.losses.triplet_angular import TripletAngularMarginLoss, triplet_angular_margin_loss

__all__ = [
    "LOSSES",
    "CELoss",
    "CombinedLoss",
    "LossOutput",
    "LossTerm",
    "TriHardLoss",
    "TripletAngularMarginLoss",
    "TripletLoss",
    "TripletLossV2",
    "WeightedLoss",
    "batch_hard_triplet_loss",
    "build_loss",
    "cross_entropy_loss",
    "pairwise_distance",
    "triplet_angular_margin_loss",
]
