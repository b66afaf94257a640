"""Losses against plain float64 loop restatements, on batches the reference fixtures do not cover."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from shitu_features.errors import ConfigError, InvalidInputError
from shitu_features.losses import (
    CELoss,
    TriHardLoss,
    TripletAngularMarginLoss,
    TripletLoss,
    batch_hard_triplet_loss,
    cross_entropy_loss,
    triplet_angular_margin_loss,
)


def _batch(seed: int, n: int = 14, dim: int = 6):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, dim)).astype(np.float32) * rng.uniform(0.5, 5, size=(n, 1)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 5, 5, 5][:n], dtype=np.int64)  # uneven class sizes
    return features, labels


def _loop_ce(logits: np.ndarray, labels: np.ndarray, eps: float) -> float:
    total = 0.0
    for row, y in zip(logits.astype(np.float64), labels):
        logz = math.log(sum(math.exp(v - row.max()) for v in row)) + row.max()
        c = len(row)
        total += sum(-((1 - eps) * (j == y) + eps / c) * (row[j] - logz) for j in range(c))
    return total / len(labels)


def _loop_taml(f, labels, margin, normalize, add_absolute, weight, ap_value, an_value, reduction="mean"):
    f = f.astype(np.float64)
    if normalize:
        f = f / np.sqrt((f**2).sum(1, keepdims=True))
    n = len(labels)
    ranking, abs_ap, abs_an = [], [], []
    for i in range(n):
        pos = [float(f[i] @ f[j]) for j in range(n) if labels[j] == labels[i]]
        neg = [float(f[i] @ f[j]) for j in range(n) if labels[j] != labels[i]]
        s_ap, s_an = min(pos), max(neg)
        ranking.append(max(0.0, s_an - s_ap + margin))
        abs_ap.append(max(0.0, ap_value - s_ap))
        abs_an.append(s_an - an_value if s_an - an_value > 0 else 1.0)  # the reference's constant
    r = {"mean": np.mean(ranking), "sum": np.sum(ranking), "none": np.array(ranking)}[reduction]
    if add_absolute:
        return weight * (np.mean(abs_an) + np.mean(abs_ap)) + np.mean(r)
    return r


def _loop_triplet(f, labels, margin, normalize, squared=False, eps=1e-12):
    f = f.astype(np.float64)
    if normalize:
        f = f / (np.sqrt((f**2).sum(1, keepdims=True)) + eps)
    n = len(labels)
    d = np.array([[((f[i] - f[j]) ** 2).sum() for j in range(n)] for i in range(n)])
    d = np.maximum(d, 1e-12) if squared else np.sqrt(np.maximum(d, 1e-12))
    losses = []
    for i in range(n):
        d_ap = max(d[i, j] for j in range(n) if labels[j] == labels[i])
        d_an = min(d[i, j] for j in range(n) if labels[j] != labels[i])
        losses.append(max(0.0, d_ap - d_an + margin))
    return float(np.mean(losses))


@pytest.mark.parametrize("eps", [None, 0.1, 0.5])
def test_cross_entropy_matches_loop(eps) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3, size=(9, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=9)
    value = float(CELoss(epsilon=eps)(paddle.to_tensor(logits), paddle.to_tensor(labels)))
    assert value == pytest.approx(_loop_ce(logits, labels, eps or 0.0), rel=1e-6)


def test_cross_entropy_reductions() -> None:
    rng = np.random.default_rng(4)
    logits = paddle.to_tensor(rng.normal(size=(5, 4)).astype(np.float32))
    labels = paddle.to_tensor(np.array([0, 3, 1, 1, 2]))
    per = cross_entropy_loss(logits, labels, epsilon=0.1, reduction="none")
    assert per.shape == [5]
    assert float(cross_entropy_loss(logits, labels, epsilon=0.1, reduction="sum")) == pytest.approx(
        float(per.sum()), rel=1e-6)
    assert float(cross_entropy_loss(logits, labels, epsilon=0.1)) == pytest.approx(float(per.mean()), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # reference defaults: no absolute terms
        {"add_absolute": True, "absolute_loss_weight": 0.1, "ap_value": 0.8, "an_value": 0.4},
        {"add_absolute": True, "ap_value": 0.9, "an_value": -0.9, "margin": 0.2},
        {"normalize_feature": False, "margin": 1.0},
        {"reduction": "sum", "add_absolute": True},
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_triplet_angular_matches_loop(kwargs: dict, seed: int) -> None:
    f, labels = _batch(seed)
    full = {"margin": 0.5, "normalize_feature": True, "add_absolute": False, "absolute_loss_weight": 1.0,
            "ap_value": 0.9, "an_value": 0.5, "reduction": "mean", **kwargs}
    value = float(TripletAngularMarginLoss(**kwargs)(paddle.to_tensor(f), paddle.to_tensor(labels)))
    expected = _loop_taml(f, labels, full["margin"], full["normalize_feature"], full["add_absolute"],
                          full["absolute_loss_weight"], full["ap_value"], full["an_value"], full["reduction"])
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_triplet_angular_reduction_none_is_per_anchor() -> None:
    f, labels = _batch(2)
    out = triplet_angular_margin_loss(paddle.to_tensor(f), paddle.to_tensor(labels), reduction="none")
    np.testing.assert_allclose(out.numpy(), _loop_taml(f, labels, 0.5, True, False, 1, 0.9, 0.5, "none"),
                               rtol=1e-5, atol=1e-6)


def test_triplet_angular_gradient_matches_finite_differences() -> None:
    f, labels = _batch(5, n=8, dim=4)
    f64 = f.astype(np.float64)
    kwargs = {"add_absolute": True, "absolute_loss_weight": 0.3, "ap_value": 0.8, "an_value": 0.1}
    t = paddle.to_tensor(f64, stop_gradient=False)
    triplet_angular_margin_loss(t, paddle.to_tensor(labels[:8]), **kwargs).backward()
    numeric = np.zeros_like(f64)
    h = 1e-6
    for idx in np.ndindex(*f64.shape):
        plus, minus = f64.copy(), f64.copy()
        plus[idx] += h
        minus[idx] -= h
        numeric[idx] = (_loop_taml(plus, labels[:8], 0.5, True, True, 0.3, 0.8, 0.1)
                        - _loop_taml(minus, labels[:8], 0.5, True, True, 0.3, 0.8, 0.1)) / (2 * h)
    np.testing.assert_allclose(t.grad.numpy(), numeric, atol=1e-6)


def test_anchor_without_negative_contributes_constant_only() -> None:
    f = paddle.to_tensor(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), stop_gradient=False)
    labels = paddle.to_tensor(np.zeros(4, dtype=np.int64))
    value = triplet_angular_margin_loss(f, labels, add_absolute=True, ap_value=-2.0, an_value=0.5)
    value.backward()
    assert float(value) == pytest.approx(1.0)  # ranking 0, ap-term 0, an-term the constant 1.0
    assert np.isfinite(f.grad.numpy()).all() and np.abs(f.grad.numpy()).max() == 0
    euclid = batch_hard_triplet_loss(paddle.to_tensor(f.numpy()), labels, margin=0.5)
    assert float(euclid) == 0.0


@pytest.mark.parametrize("margin,normalize", [(1.0, False), (0.5, True), (3.0, False)])
def test_triplet_euclidean_matches_loop(margin: float, normalize: bool) -> None:
    f, labels = _batch(7)
    loss = TripletLoss(margin=margin, normalize_feature=normalize)
    value = float(loss(paddle.to_tensor(f), paddle.to_tensor(labels)))
    assert value == pytest.approx(_loop_triplet(f, labels, margin, normalize), rel=1e-5)


def test_trihard_matches_squared_loop_and_checks_batch() -> None:
    f, _ = _batch(8, n=12)
    blocks = np.repeat(np.arange(4), 3)
    loss = TriHardLoss(batch_size=12, samples_each_class=3, margin=0.3)
    value = float(loss(paddle.to_tensor(f)))
    assert value == pytest.approx(_loop_triplet(f, blocks, 0.3, True, squared=True, eps=0.0), rel=1e-5)
    with pytest.raises(InvalidInputError, match="batch_size=12"):
        loss(paddle.to_tensor(f[:6]))


@pytest.mark.parametrize("bad", [np.zeros((4, 2), np.int64), np.zeros(5, np.int64), np.zeros(4, np.float32)])
def test_bad_labels_are_rejected(bad: np.ndarray) -> None:
    f = paddle.to_tensor(np.ones((4, 3), np.float32))
    with pytest.raises(InvalidInputError):
        TripletAngularMarginLoss()(f, paddle.to_tensor(bad))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        CELoss(epsilon=1.5)
    with pytest.raises(ConfigError, match="reduction"):
        TripletAngularMarginLoss(reduction="avg")
    with pytest.raises(InvalidInputError, match="2-D"):
        CELoss()(paddle.ones([3]), paddle.to_tensor(np.zeros(3, np.int64)))
