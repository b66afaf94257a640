"""Tests of shitu_features.evaluation: reference fixtures, hand-checked cases, a brute-force cross-check."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

import shitu_features.evaluation as evaluation
from shitu_features.errors import ConfigError, InvalidInputError
from shitu_features.evaluation import l2_normalize, mean_average_precision, recall_at_k, retrieval_metrics
from shitu_features.evaluation import metrics as metrics_module

KEYS = {"recall@1": "recall1", "recall@5": "recall5", "mAP": "mAP"}
CASES = ["separate_no_camera", "separate_with_camera", "self_with_unique_id", "self_no_unique_id"]


def _load_case(reference_dir: Path, name: str) -> tuple[dict, tuple, dict]:
    folder = reference_dir / "metrics"
    expected = json.loads((folder / "expected.json").read_text())["cases"][name]

    def load(file: str) -> np.ndarray:
        return np.load(folder / file, allow_pickle=False)

    if name.startswith("separate"):
        args = (load("sep_query_features.npy"), load("sep_query_labels.npy"),
                load("sep_gallery_features.npy"), load("sep_gallery_labels.npy"))
        kwargs = {}
        if name == "separate_with_camera":
            kwargs = {"query_cameras": load("sep_query_cameras.npy"),
                      "gallery_cameras": load("sep_gallery_cameras.npy")}
    else:
        feats, labels = load("self_features.npy"), load("self_labels.npy")
        args = (feats, labels, feats, labels)
        kwargs = {}
        if name == "self_with_unique_id":
            ids = load("self_unique_ids.npy")
            kwargs = {"query_cameras": ids, "gallery_cameras": ids}
    return expected, args, kwargs


def _assert_close(result: dict, expected: dict, atol: float = 1e-6) -> None:
    for ours, theirs in KEYS.items():
        assert abs(result[ours] - expected[theirs]) <= atol, (ours, result[ours], expected[theirs])


@pytest.mark.parametrize("name", CASES)
def test_reference_compat_reproduces_blockwise_numbers(reference_dir: Path, name: str) -> None:
    expected, args, kwargs = _load_case(reference_dir, name)
    result = retrieval_metrics(*args, **kwargs, reference_compat=True)
    _assert_close(result, expected["blockwise_64"])
    assert result["num_valid_queries"] == expected["valid_queries"]
    assert result["num_queries"] == expected["num_query"]
    # One block covering every query gives the reference's whole-set numbers.
    _assert_close(retrieval_metrics(*args, **kwargs, reference_compat=True, block_size=10_000),
                  expected["whole_set_one_block"])


@pytest.mark.parametrize("name", CASES)
def test_reference_compat_per_block_values(reference_dir: Path, name: str) -> None:
    expected, (q, ql, g, gl), kwargs = _load_case(reference_dir, name)
    qc = kwargs.get("query_cameras")
    start = 0
    for size, block in zip(expected["block_sizes"], expected["per_block"]):
        sl = slice(start, start + size)
        sub_kwargs = dict(kwargs, query_cameras=qc[sl]) if qc is not None else kwargs
        _assert_close(retrieval_metrics(q[sl], ql[sl], g, gl, **sub_kwargs, reference_compat=True), block)
        start += size


@pytest.mark.parametrize("name", CASES)
def test_exact_mode_matches_excluded_dropped_whole_set(reference_dir: Path, name: str) -> None:
    expected, args, kwargs = _load_case(reference_dir, name)
    result = retrieval_metrics(*args, **kwargs)
    _assert_close(result, expected["diagnostic_if_excluded_items_were_dropped_from_ranking"])
    assert result["num_valid_queries"] == expected["valid_queries"]
    assert result["num_excluded_queries"] == expected["num_query"] - expected["valid_queries"]
    if name in ("separate_with_camera", "self_with_unique_id"):
        # The two modes really differ here: dropping excluded items moves mAP by more than the tolerance.
        assert abs(result["mAP"] - expected["numpy_restatement_whole"]["mAP"]) > 1e-6


# -------------------------------------------------------------------------------------- hand-checked cases


def _on_circle(angles_deg: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def test_hand_checked_ranks() -> None:
    query = _on_circle([0.0])
    gallery = _on_circle([10.0, 20.0, 40.0, 80.0])  # ranked in this order by cosine
    result = retrieval_metrics(query, [7], gallery, [3, 7, 7, 3], topk=(1, 2, 3, 10))
    # Matches at ranks 2 and 3: AP = (1/2 + 2/3) / 2.
    assert result["mAP"] == pytest.approx(7 / 12, abs=1e-12)
    assert (result["recall@1"], result["recall@2"], result["recall@3"], result["recall@10"]) == (0, 1, 1, 1)
    assert (result["num_queries"], result["num_valid_queries"], result["num_excluded_queries"]) == (1, 1, 0)


def test_excluded_items_dropped_versus_kept_at_zero() -> None:
    query = _on_circle([0.0])
    # g0: same label and camera (excluded), cosine 0.98; g1: other label, cosine 0.5; g2: positive at cosine -0.17.
    gallery = _on_circle([10.0, 60.0, 100.0])
    args = (query, ["a"], gallery, ["a", "b", "a"])
    cams = {"query_cameras": [0], "gallery_cameras": [0, 5, 1]}
    exact = retrieval_metrics(*args, **cams, topk=(1, 2, 3))
    compat = retrieval_metrics(*args, **cams, topk=(1, 2, 3), reference_compat=True)
    assert exact["mAP"] == pytest.approx(1 / 2)  # g1, g2
    assert (exact["recall@1"], exact["recall@2"]) == (0, 1)
    assert compat["mAP"] == pytest.approx(1 / 3)  # g1 (0.5), g0 (zeroed), g2 (-0.17)
    assert (compat["recall@2"], compat["recall@3"]) == (0, 1)
    # Without cameras g0 is an ordinary match at rank 1.
    plain = retrieval_metrics(*args, topk=1)
    assert plain["recall@1"] == 1 and plain["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_self_retrieval_with_unique_ids_removes_self_match() -> None:
    feats = _on_circle([0.0, 5.0, 90.0, 95.0])
    labels = [1, 1, 2, 2]
    ids = np.arange(4)
    assert retrieval_metrics(feats, labels, feats, labels, topk=1)["recall@1"] == 1.0
    result = retrieval_metrics(feats, labels, feats, labels, topk=1, query_cameras=ids, gallery_cameras=ids)
    assert result["recall@1"] == 1.0 and result["mAP"] == 1.0
    result = retrieval_metrics(feats, [1, 2, 1, 2], feats, [1, 2, 1, 2], topk=1, query_cameras=ids,
                               gallery_cameras=ids)
    # The other item of the label ranks 2nd, 3rd, 3rd and 2nd for the four queries.
    assert result["recall@1"] == 0.0 and result["mAP"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)


def test_ties_rank_non_matches_first() -> None:
    same = np.ones((4, 3), dtype=np.float32)  # a degenerate model: every similarity is 1
    result = retrieval_metrics(same[:1], [0], same, [1, 0, 1, 1], topk=(1, 3, 4))
    assert (result["recall@1"], result["recall@3"], result["recall@4"]) == (0, 0, 1)
    assert result["mAP"] == pytest.approx(1 / 4)
    two = retrieval_metrics(same[:1], [0], same, [0, 1, 0, 1], topk=1)
    assert two["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_queries_without_match_are_excluded_and_counted() -> None:
    query = _on_circle([0.0, 45.0, 90.0])
    gallery = _on_circle([1.0, 46.0])
    result = retrieval_metrics(query, [1, 2, 3], gallery, [1, 2], topk=1)
    assert result == {"recall@1": 1.0, "mAP": 1.0, "num_queries": 3, "num_valid_queries": 2,
                      "num_excluded_queries": 1}


def test_no_valid_query_gives_nan_with_warning() -> None:
    query, gallery = _on_circle([0.0]), _on_circle([1.0])
    with pytest.warns(RuntimeWarning, match="no query has a match"):
        result = retrieval_metrics(query, [1], gallery, [2], topk=1)
    assert math.isnan(result["recall@1"]) and math.isnan(result["mAP"]) and result["num_valid_queries"] == 0
    with pytest.warns(RuntimeWarning):
        empty = retrieval_metrics(query, [1], np.zeros((0, 2), np.float32), np.zeros(0, np.int64), topk=1)
    assert math.isnan(empty["mAP"]) and empty["num_excluded_queries"] == 1


def test_compat_block_without_valid_query_is_nan_like_the_reference() -> None:
    query = _on_circle([0.0, 10.0, 20.0])
    gallery = _on_circle([0.0, 50.0])
    args = (query, [9, 1, 1], gallery, [1, 2])
    with pytest.warns(RuntimeWarning, match=r"block\(s\) \[0\]"):
        compat = retrieval_metrics(*args, topk=1, reference_compat=True, block_size=1)
    assert math.isnan(compat["recall@1"]) and math.isnan(compat["mAP"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = retrieval_metrics(*args, topk=1, block_size=1)
        whole = retrieval_metrics(*args, topk=1, reference_compat=True, block_size=3)
    assert exact["recall@1"] == 1.0 and exact["num_valid_queries"] == 2
    assert whole["recall@1"] == 1.0


def test_compat_weighting_is_a_mean_of_block_ratios() -> None:
    # Block 0 = queries 0,1 (one valid, a hit); block 1 = query 2 (valid, a miss): 1 * 2/3 + 0 * 1/3.
    query = _on_circle([0.0, 0.0, 90.0])
    gallery = _on_circle([0.0, 90.0])
    args = (query, [1, 5, 1], gallery, [1, 2])
    compat = retrieval_metrics(*args, topk=1, reference_compat=True, block_size=2)
    exact = retrieval_metrics(*args, topk=1)
    assert compat["recall@1"] == pytest.approx(2 / 3)
    assert exact["recall@1"] == pytest.approx(1 / 2)


# ------------------------------------------------------------------------------------------ brute force


def _brute_force(q, ql, g, gl, qc=None, gc=None, *, compat=False, normalize=True, ks=(1, 5)):
    """Loop-based restatement: one query at a time, float64, explicit sort key (score desc, non-match first)."""
    q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
    if normalize:
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    first, ap = [], []
    for i in range(len(q)):
        scores = g @ q[i]
        items = []
        for j in range(len(g)):
            is_match = gl[j] == ql[i]
            excluded = qc is not None and is_match and gc[j] == qc[i]
            if excluded and not compat:
                continue
            items.append((0.0 if excluded else scores[j], is_match and not excluded))
        items.sort(key=lambda item: (-item[0], item[1]))
        ranks = [r + 1 for r, (_, m) in enumerate(items) if m]
        first.append(ranks[0] if ranks else 0)
        ap.append(np.mean([(n + 1) / r for n, r in enumerate(ranks)]) if ranks else np.nan)
    return np.array(first), np.array(ap)


def _reduce(first, ap, ks, blocks=None):
    blocks = blocks or [slice(0, len(first))]
    out = dict.fromkeys([f"recall@{k}" for k in ks] + ["mAP"], 0.0)
    for sl in blocks:
        valid = first[sl] > 0
        weight = (sl.stop - sl.start) / len(first)
        for k in ks:
            out[f"recall@{k}"] += np.mean(first[sl][valid] <= k) * weight
        out["mAP"] += np.mean(ap[sl][valid]) * weight
    return out


@pytest.mark.parametrize("compat", [False, True])
def test_matches_brute_force_with_ties(compat: bool) -> None:
    rng = np.random.default_rng(1)
    # Small integer features: inner products are exact in float32 and full of ties.
    q = rng.integers(-2, 3, size=(37, 4)).astype(np.float32)
    g = rng.integers(-2, 3, size=(23, 4)).astype(np.float32)
    ql, gl = rng.integers(0, 4, 37), rng.integers(0, 4, 23)
    qc, gc = rng.integers(0, 2, 37), rng.integers(0, 2, 23)
    ks = (1, 3, 5, 30)
    first, ap = _brute_force(q, ql, g, gl, qc, gc, compat=compat, normalize=False)
    blocks = [slice(s, min(s + 8, 37)) for s in range(0, 37, 8)] if compat else None
    expected = _reduce(first, ap, ks, blocks)
    result = retrieval_metrics(q, ql, g, gl, topk=ks, query_cameras=qc, gallery_cameras=gc, normalize=False,
                               block_size=8, reference_compat=compat)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-6), key
    assert result["num_valid_queries"] == int((first > 0).sum())


def test_matches_brute_force_normalized_and_block_size_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    q, g = rng.standard_normal((50, 16)) * 30, rng.standard_normal((40, 16)) * 0.01
    ql, gl = rng.integers(0, 6, 50), rng.integers(0, 6, 40)
    first, ap = _brute_force(q, ql, g, gl)
    expected = _reduce(first, ap, (1, 5))
    reference = retrieval_metrics(q, ql, g, gl)
    for key, value in expected.items():
        assert reference[key] == pytest.approx(value, abs=1e-9), key
    for block_size in (1, 7, 49, 1000):
        assert retrieval_metrics(q, ql, g, gl, block_size=block_size) == reference
    # A tiny similarity budget forces one query per block whatever block_size says.
    monkeypatch.setattr(metrics_module, "_MAX_BLOCK_ELEMENTS", 10)
    assert retrieval_metrics(q, ql, g, gl, block_size=1000) == reference


def test_string_labels_equal_int_labels() -> None:
    rng = np.random.default_rng(3)
    q, g = rng.standard_normal((20, 8)), rng.standard_normal((30, 8))
    ql, gl = rng.integers(0, 5, 20), rng.integers(0, 5, 30)
    names = np.array(["apple", "pear", "fig", "kiwi", "lime"])
    as_int = retrieval_metrics(q, ql, g, gl)
    as_str = retrieval_metrics(q, names[ql].tolist(), g, list(names[gl]))
    assert as_int == as_str
    # PaddleClas-style [N, 1] columns are accepted.
    assert retrieval_metrics(q, ql[:, None], g, gl[:, None]) == as_int


def test_normalize_flag_and_zero_vectors() -> None:
    query = np.array([[1.0, 0.0]], np.float32)
    gallery = np.array([[10.0, 10.0], [0.9, 0.0], [0.0, 0.0]], np.float32)  # big but 45 degrees vs aligned
    labels = [0, 1, 2]
    assert retrieval_metrics(query, [1], gallery, labels, topk=1)["recall@1"] == 1.0  # cosine: aligned wins
    assert retrieval_metrics(query, [1], gallery, labels, topk=1, normalize=False)["recall@1"] == 0.0
    # A zero vector scores 0 instead of NaN and ranks between positive and negative similarities.
    with_zero = retrieval_metrics(query, [2], gallery, labels, topk=(1, 2, 3))
    assert (with_zero["recall@2"], with_zero["recall@3"], with_zero["mAP"]) == (0, 1, pytest.approx(1 / 3))
    np.testing.assert_array_equal(l2_normalize(np.zeros((2, 3))), np.zeros((2, 3), np.float32))
    unit = l2_normalize(np.array([3.0, 4.0]))
    np.testing.assert_allclose(unit, [0.6, 0.8], rtol=1e-7)
    assert unit.dtype == np.float32 and unit.shape == (2,)
    huge = l2_normalize(np.array([[1e30, 1e30]], np.float32))  # the norm would overflow in float32
    np.testing.assert_allclose(huge, [[2**-0.5, 2**-0.5]], rtol=1e-6)


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(4)
    q = rng.standard_normal((5, 4)).astype(np.float32)
    g = rng.standard_normal((6, 4)).astype(np.float32)
    q0, g0 = q.copy(), g.copy()
    retrieval_metrics(q, np.arange(5) % 2, g, np.arange(6) % 2, query_cameras=np.arange(5),
                      gallery_cameras=np.arange(6), reference_compat=True)
    np.testing.assert_array_equal(q, q0)
    np.testing.assert_array_equal(g, g0)


def test_helpers_and_exports() -> None:
    rng = np.random.default_rng(5)
    q, g = rng.standard_normal((12, 8)), rng.standard_normal((15, 8))
    ql, gl = rng.integers(0, 3, 12), rng.integers(0, 3, 15)
    full = retrieval_metrics(q, ql, g, gl, topk=(1, 3))
    assert recall_at_k(q, ql, g, gl, k=3) == full["recall@3"]
    assert mean_average_precision(q, ql, g, gl) == full["mAP"]
    assert recall_at_k(q, ql, g, gl, k=1, reference_compat=True, block_size=4) == retrieval_metrics(
        q, ql, g, gl, topk=1, reference_compat=True, block_size=4)["recall@1"]
    assert set(evaluation.__all__) >= {"retrieval_metrics", "recall_at_k", "mean_average_precision", "l2_normalize"}
    assert all(hasattr(evaluation, name) for name in evaluation.__all__)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"query": np.zeros((3,))}, InvalidInputError, r"shape \[N, D\]"),
        ({"gallery": np.zeros((4, 5))}, InvalidInputError, "differ in dimension"),
        ({"query_labels": [1, 2]}, InvalidInputError, r"query labels must have shape \[3\]"),
        ({"gallery_labels": np.zeros((4, 2))}, InvalidInputError, "gallery labels"),
        ({"query_labels": [0.5, 1.0, 2.0]}, InvalidInputError, "integers or strings"),
        ({"query_labels": ["a", "b", "c"]}, InvalidInputError, "both be integers or both strings"),
        ({"query": np.array([[np.nan] * 4] * 3)}, InvalidInputError, "NaN"),
        ({"query": np.zeros((3, 4), bool)}, InvalidInputError, "real numeric"),
        ({"query": np.zeros((0, 4)), "query_labels": []}, InvalidInputError, "no queries"),
        ({"query_cameras": [0, 0, 0]}, ConfigError, "given together"),
        ({"query_cameras": [0, 0, 0], "gallery_cameras": [0]}, InvalidInputError, "gallery cameras"),
        ({"topk": 0}, ConfigError, "topk"),
        ({"topk": ()}, ConfigError, "topk"),
        ({"topk": (1, 2.5)}, ConfigError, "topk"),
        ({"block_size": 0}, ConfigError, "block_size"),
    ],
)
def test_invalid_inputs(kwargs: dict, error: type, match: str) -> None:
    args = {"query": np.ones((3, 4)), "query_labels": [0, 1, 2], "gallery": np.ones((4, 4)),
            "gallery_labels": [0, 1, 2, 3]}
    args.update(kwargs)
    positional = [args.pop(name) for name in ("query", "query_labels", "gallery", "gallery_labels")]
    with pytest.raises(error, match=match):
        retrieval_metrics(*positional, **args)
