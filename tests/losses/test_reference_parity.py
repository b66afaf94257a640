"""Loss values and gradients against PaddleClas's own outputs (reference/losses/expected.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from shitu_features.losses import (
    CELoss,
    TriHardLoss,
    TripletAngularMarginLoss,
    TripletLoss,
    TripletLossV2,
    WeightedLoss,
)

# Observed: values agree to <= 3.1e-7 relative, gradients to <= 3.3e-7 * max|ref| (the README suggests 1e-4).
VALUE_RTOL = 1e-6
GRAD_TOL = 1e-5  # times max|ref|


@pytest.fixture(scope="module")
def ref(reference_dir: Path) -> dict:
    root = reference_dir / "losses"
    out = {"expected": json.loads((root / "expected.json").read_text()), "root": root}
    for name in ("features", "features_below", "labels", "logits"):
        out[name] = np.load(root / f"{name}.npy", allow_pickle=False)
    return out


def _value_and_grad(loss, x: np.ndarray, labels: np.ndarray):
    t = paddle.to_tensor(x, stop_gradient=False)
    value = loss(t, paddle.to_tensor(labels))
    value.backward()
    return float(value), t.grad.numpy()


def _assert_value(value: float, expected: float) -> None:
    assert value == pytest.approx(expected, rel=VALUE_RTOL, abs=1e-7)  # abs only matters for the 0.0 case


def _assert_grad(grad: np.ndarray, ref: dict, file_name: str) -> None:
    expected = np.load(ref["root"] / file_name, allow_pickle=False)
    assert grad.shape == expected.shape
    np.testing.assert_allclose(grad, expected, rtol=0, atol=GRAD_TOL * np.abs(expected).max())


def _taml_kwargs(config: dict) -> dict:
    return {k: v for k, v in config.items()}  # includes feature_from, a valid keyword here too


@pytest.mark.parametrize("label_shape", ["[B,1]", "[B]"])
def test_celoss_smoothed_value_and_grad(ref: dict, label_shape: str) -> None:
    exp = ref["expected"]["CELoss"]
    labels = ref["labels"][:, None] if label_shape == "[B,1]" else ref["labels"]
    value, grad = _value_and_grad(CELoss(**exp["config"]), ref["logits"], labels)
    _assert_value(value, exp["value"] if label_shape == "[B,1]" else exp["value_labels_shape_[B]"])
    _assert_grad(grad, ref, exp["grad_logits_file"])


def test_celoss_without_smoothing(ref: dict) -> None:
    value, _ = _value_and_grad(CELoss(), ref["logits"], ref["labels"][:, None])
    _assert_value(value, ref["expected"]["CELoss"]["value_no_epsilon"])
    value0, _ = _value_and_grad(CELoss(epsilon=0.0), ref["logits"], ref["labels"])
    assert value0 == value


@pytest.mark.parametrize("case,features", [("mixed", "features"), ("below", "features_below")])
@pytest.mark.parametrize("label_shape", ["[B,1]", "[B]"])
def test_triplet_angular_margin_value_and_grad(ref: dict, case: str, features: str, label_shape: str) -> None:
    exp = ref["expected"][f"TripletAngularMarginLoss_{case}"]
    labels = ref["labels"][:, None] if label_shape == "[B,1]" else ref["labels"]
    loss = TripletAngularMarginLoss(**_taml_kwargs(exp["config"]))
    value, grad = _value_and_grad(loss, ref[features], labels)
    _assert_value(value, exp["value"] if label_shape == "[B,1]" else exp["value_labels_shape_[B]"])
    _assert_grad(grad, ref, exp["grad_features_file"])


def test_triplet_angular_below_is_the_ones_constant(ref: dict) -> None:
    """Every hardest negative <= an_value: the an-term is the reference's constant 1.0 (spec §7.2)."""
    exp = ref["expected"]["TripletAngularMarginLoss_below"]
    value, _ = _value_and_grad(TripletAngularMarginLoss(**exp["config"]), ref["features_below"], ref["labels"])
    assert exp["terms_numpy"]["abs_an_mean"] == 1.0
    _assert_value(value, 0.1 * (1.0 + exp["terms_numpy"]["abs_ap_mean"]))


def test_triplet_v2_value_and_grad(ref: dict) -> None:
    exp = ref["expected"]["TripletLossV2"]
    value, grad = _value_and_grad(TripletLossV2(**exp["config"]), ref["features"], ref["labels"][:, None])
    _assert_value(value, exp["value"])
    _assert_grad(grad, ref, exp["grad_features_file"])
    value_below, _ = _value_and_grad(TripletLossV2(), ref["features_below"], ref["labels"])
    _assert_value(value_below, exp["value_features_below"])


def test_triplet_classic_value(ref: dict) -> None:
    exp = ref["expected"]["TripletLoss"]
    value, grad = _value_and_grad(TripletLoss(**exp["config"]), ref["features"], ref["labels"][:, None])
    _assert_value(value, exp["value"])
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_trihard_value_and_grad(ref: dict) -> None:
    exp = ref["expected"]["TriHardLoss"]
    loss = TriHardLoss(**exp["config"])
    value, grad = _value_and_grad(loss, ref["features"], ref["labels"][:, None])
    _assert_value(value, exp["value"])
    _assert_grad(grad, ref, exp["grad_features_file"])
    # the reference ignores labels and assumes contiguous blocks of samples_each_class: same value without labels
    assert float(loss(paddle.to_tensor(ref["features"]))) == pytest.approx(value, rel=1e-7)


def test_combined_train_loss_parts_and_grads(ref: dict) -> None:
    exp = ref["expected"]["CombinedLoss_Train"]
    loss = WeightedLoss.from_config(exp["config"])
    features = paddle.to_tensor(ref["features"], stop_gradient=False)
    logits = paddle.to_tensor(ref["logits"], stop_gradient=False)
    out = loss({"features": features, "logits": logits}, paddle.to_tensor(ref["labels"][:, None]))
    out.total.backward()
    _assert_value(float(out.total), exp["value"])
    assert list(out.parts) == ["CELoss", "TripletAngularMarginLoss"]
    for name, value in out.parts.items():
        _assert_value(float(value), exp["parts"][name])
    _assert_grad(features.grad.numpy(), ref, exp["grad_features_file"])
    _assert_grad(logits.grad.numpy(), ref, exp["grad_logits_file"])
