"""Golden-output parity against ../shared/reference/model (issue 2 acceptance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest

from shitu_features.models import RecModel, build_rec_model

TOL = 1e-5  # max|diff| <= 1e-5 * max|reference|


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """max|a - e| / max|e|: the tolerance measure the reference README suggests."""
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _keys(model_dir: Path) -> list[tuple[str, list[int]]]:
    rows = [line.split("\t") for line in (model_dir / "keys.txt").read_text().splitlines() if line]
    return [(name, eval_shape(shape)) for name, shape, _ in rows]


def eval_shape(text: str) -> list[int]:
    return [int(v) for v in text.strip("[]").split(",") if v.strip()]


def test_state_dict_keys_and_shapes_equal_reference(model_dir: Path) -> None:
    model = build_rec_model(class_num=100)
    sd = model.state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == _keys(model_dir)


def test_paddle_set_state_dict_has_no_missing_or_unexpected(model_dir: Path) -> None:
    model = build_rec_model(class_num=100)
    missing, unexpected = model.set_state_dict(paddle.load(str(model_dir / "rec_model.pdparams")))
    assert list(missing) == [] and list(unexpected) == []


def test_eval_forward_matches_reference(ref_model: RecModel, model_dir: Path) -> None:
    out = ref_model(paddle.to_tensor(np.load(model_dir / "input.npy")))
    assert set(out) == {"backbone", "neck", "features", "logits"}
    for key, fname in [("features", "features"), ("backbone", "backbone"), ("logits", "logits")]:
        assert rel_err(out[key].numpy(), np.load(model_dir / f"{fname}.npy")) <= TOL, key
    feats = out["features"].numpy()
    l2 = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    assert np.abs(l2 - np.load(model_dir / "features_l2.npy")).max() <= 1e-5


def test_reparameterize_matches_reference_and_keeps_keys(ref_model: RecModel, model_dir: Path) -> None:
    keys_before = list(ref_model.state_dict())
    assert not ref_model.is_reparameterized
    ref_model.reparameterize()
    assert ref_model.is_reparameterized
    assert len(ref_model.rep_blocks()) == 8
    assert list(ref_model.state_dict()) == keys_before
    feats = ref_model(paddle.to_tensor(np.load(model_dir / "input.npy")))["features"].numpy()
    assert rel_err(feats, np.load(model_dir / "features_rep.npy")) <= TOL
    # idempotent: fusing twice changes nothing
    before = ref_model.backbone.stages[2][1].dw_conv.weight.numpy().copy()
    ref_model.reparameterize()
    np.testing.assert_array_equal(ref_model.backbone.stages[2][1].dw_conv.weight.numpy(), before)


@pytest.mark.parametrize("suffix", ["160", "odd"])
def test_non_224_inputs_match_reference(ref_model: RecModel, model_dir: Path, suffix: str) -> None:
    x = paddle.to_tensor(np.load(model_dir / f"input_{suffix}.npy"))
    assert rel_err(ref_model(x)["features"].numpy(), np.load(model_dir / f"features_{suffix}.npy")) <= TOL
    ref_model.reparameterize()
    assert rel_err(ref_model(x)["features"].numpy(), np.load(model_dir / f"features_{suffix}_rep.npy")) <= TOL


def test_stale_dw_conv_is_not_used_after_loading(ref_model: RecModel, model_dir: Path) -> None:
    """The checkpoint's dw_conv tensors are random init (spec §4): using them would give other features."""
    x = paddle.to_tensor(np.load(model_dir / "input.npy"))
    for block in ref_model.rep_blocks():
        block.is_repped = True  # what a naive loader would do
    wrong = ref_model(x)["features"].numpy()
    assert rel_err(wrong, np.load(model_dir / "features.npy")) > 1e-2
