"""WeightedLoss / CombinedLoss and the loss registry."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import paddle
import pytest

from shitu_features.errors import ConfigError, InvalidInputError
from shitu_features.losses import (
    LOSSES,
    CELoss,
    CombinedLoss,
    LossTerm,
    TripletAngularMarginLoss,
    TripletLoss,
    WeightedLoss,
    build_loss,
)


class _Outputs(NamedTuple):
    features: paddle.Tensor
    logits: paddle.Tensor


def _inputs():
    rng = np.random.default_rng(0)
    features = paddle.to_tensor(rng.normal(size=(8, 5)).astype(np.float32))
    logits = paddle.to_tensor(rng.normal(size=(8, 6)).astype(np.float32))
    labels = paddle.to_tensor(np.repeat(np.arange(4), 2))
    return features, logits, labels


def test_parts_are_weighted_and_sum_to_total() -> None:
    features, logits, labels = _inputs()
    loss = WeightedLoss({"ce": (0.5, CELoss(epsilon=0.1)), "tri": (2.0, TripletAngularMarginLoss(add_absolute=True))})
    out = loss({"features": features, "logits": logits}, labels)
    ce = float(CELoss(epsilon=0.1)(logits, labels))
    tri = float(TripletAngularMarginLoss(add_absolute=True)(features, labels))
    assert float(out.parts["ce"]) == pytest.approx(0.5 * ce, rel=1e-6)
    assert float(out.parts["tri"]) == pytest.approx(2.0 * tri, rel=1e-6)
    assert float(out.total) == pytest.approx(0.5 * ce + 2.0 * tri, rel=1e-6)
    total, parts = out  # a plain (total, parts) pair as well
    assert total is out.total and parts is out.parts


def test_outputs_by_attribute_and_explicit_input_key() -> None:
    features, logits, labels = _inputs()
    terms = [LossTerm("euclid_on_logits", TripletLoss(margin=0.3), weight=1.0, input_key="logits")]
    out = CombinedLoss(terms)(_Outputs(features=features, logits=logits), labels)
    assert float(out.total) == pytest.approx(float(TripletLoss(margin=0.3)(logits, labels)), rel=1e-6)


def test_total_backpropagates_to_both_inputs() -> None:
    features, logits, labels = _inputs()
    features.stop_gradient = False
    logits.stop_gradient = False
    loss = WeightedLoss.from_config([{"CELoss": {"epsilon": 0.1}}, {"TripletAngularMarginLoss": {"weight": 1.0}}])
    loss({"features": features, "logits": logits}, labels).total.backward()
    assert np.abs(features.grad.numpy()).max() > 0 and np.abs(logits.grad.numpy()).max() > 0


def test_missing_output_is_named() -> None:
    features, _, labels = _inputs()
    loss = WeightedLoss({"ce": (1.0, CELoss())})
    with pytest.raises(InvalidInputError, match="'logits'"):
        loss({"features": features}, labels)


def test_registry_and_config_errors() -> None:
    assert set(LOSSES) >= {"CELoss", "TripletAngularMarginLoss", "TripletLoss", "TripletLossV2"}
    assert isinstance(build_loss("CELoss", epsilon=0.1), CELoss)
    with pytest.raises(ConfigError, match="did you mean CELoss"):
        build_loss("CELos")
    with pytest.raises(ConfigError, match="does not accept"):
        build_loss("CELoss", margin=0.5)
    with pytest.raises(ConfigError, match="duplicate"):
        WeightedLoss.from_config([{"CELoss": {}}, {"CELoss": {"weight": 2.0}}])
    with pytest.raises(ConfigError, match="one-key"):
        WeightedLoss.from_config([{"CELoss": {}, "TripletLoss": {}}])
    with pytest.raises(ConfigError, match="at least one"):
        WeightedLoss({})
