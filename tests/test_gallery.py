"""Tests of shitu_features.gallery.Gallery: exact search, mutation, the on-disk format and its failure modes."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import shitu_features.gallery as gallery_module
from shitu_features.errors import ConfigError, GalleryFormatError, GalleryIdError, InvalidInputError
from shitu_features.gallery import REFERENCE_SCORE_THRESHOLD, Gallery

DIM = 16


def _random(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    return rng.standard_normal((n, dim)).astype(np.float32)


def _brute_force(gallery: np.ndarray, queries: np.ndarray, k: int, *, cosine: bool = True):
    """Full similarity matrix and a stable sort: the top-k rows and scores (k <= len(gallery))."""
    if cosine:
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


def _filled(rng: np.random.Generator, n: int = 300, **kwargs) -> tuple[Gallery, np.ndarray, list]:
    gallery = Gallery(DIM, **kwargs)
    vectors = _random(rng, n)
    labels = [f"sku-{i % 37}" if i % 3 else i % 11 for i in range(n)]  # str and int labels together
    gallery.add(vectors, labels, metadata=[{"row": i, "tags": ["x"] * (i % 3)} for i in range(n)])
    return gallery, vectors, labels


@pytest.mark.parametrize("metric", ["cosine", "ip"])
@pytest.mark.parametrize("k", [1, 7, 300])
def test_exact_search_equals_brute_force(metric: str, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    # A small block size and similarity budget force many gallery blocks and query chunks.
    monkeypatch.setattr(gallery_module, "_MAX_BLOCK_ELEMENTS", 500)
    gallery, vectors, labels = _filled(rng, metric=metric, block_size=23)
    queries = _random(rng, 41)
    scores, found_labels, ids = gallery.search(queries, k=k)
    want_scores, want_rows = _brute_force(vectors, queries, k, cosine=metric == "cosine")
    np.testing.assert_array_equal(ids, want_rows)  # ids were assigned 0..n-1 in row order
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=2e-5 * (1 if metric == "cosine" else 20))
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and found_labels.dtype == object
    assert found_labels.tolist() == [[labels[r] for r in row] for row in want_rows]


def test_ties_are_broken_by_insertion_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gallery_module, "_MAX_BLOCK_ELEMENTS", 64)
    rng = np.random.default_rng(8)
    # Integer vectors and metric="ip": scores are exact, with many ties inside and across blocks.
    vectors = rng.integers(-1, 2, size=(500, 3)).astype(np.float32)
    queries = rng.integers(-1, 2, size=(20, 3)).astype(np.float32)
    gallery = Gallery(3, metric="ip", block_size=16)
    gallery.add(vectors, ["x"] * 500)
    for k in (1, 5, 40):
        scores, _, ids = gallery.search(queries, k=k)
        want_scores, want_rows = _brute_force(vectors, queries, k, cosine=False)
        np.testing.assert_array_equal(ids, want_rows)
        np.testing.assert_array_equal(scores, want_scores)
    same = Gallery(2, block_size=7)
    same.add(np.ones((50, 2), np.float32), list(range(50)))
    assert same.search(np.ones(2, np.float32), k=4)[2].tolist() == [0, 1, 2, 3]


def test_gallery_sorted_worst_first_still_exact() -> None:
    # Each block beats the previous one, so every block takes the partition path.
    angles = np.linspace(np.pi / 2, 0.0, 1000)
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    gallery = Gallery(2, block_size=64)
    gallery.add(vectors, [0] * 1000)
    scores, _, ids = gallery.search(np.array([1.0, 0.0], np.float32), k=5)
    assert ids.tolist() == [999, 998, 997, 996, 995] and (np.diff(scores) <= 0).all()


def test_k_larger_than_gallery_is_padded() -> None:
    rng = np.random.default_rng(1)
    gallery, vectors, _ = _filled(rng, n=5)
    queries = _random(rng, 3)
    scores, labels, ids = gallery.search(queries, k=8)
    assert scores.shape == labels.shape == ids.shape == (3, 8)
    want_scores, want_rows = _brute_force(vectors, queries, 5)
    np.testing.assert_array_equal(ids[:, :5], want_rows)
    np.testing.assert_allclose(scores[:, :5], want_scores, atol=2e-6)
    assert np.isneginf(scores[:, 5:]).all() and (ids[:, 5:] == -1).all()
    assert all(label is None for label in labels[:, 5:].ravel())


def test_single_query_returns_1d() -> None:
    rng = np.random.default_rng(2)
    gallery, vectors, labels = _filled(rng, n=20)
    scores, found, ids = gallery.search(vectors[4] * 3.0, k=3)
    assert scores.shape == found.shape == ids.shape == (3,)
    assert ids[0] == 4 and found[0] == labels[4] and scores[0] == pytest.approx(1.0, abs=1e-6)


def test_save_load_search_identical(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    gallery, _, labels = _filled(rng, n=257)
    gallery.remove([0, 100])  # next_id must survive the round trip, not be recomputed from the ids
    queries = _random(rng, 13)
    before = gallery.search(queries, k=9, score_threshold=0.1)
    path = gallery.save(tmp_path / "sub" / "catalogue.gallery")
    loaded = Gallery.load(path)
    after = loaded.search(queries, k=9, score_threshold=0.1)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert (len(loaded), loaded.dim, loaded.metric) == (255, DIM, "cosine")
    assert loaded.labels == gallery.labels and [type(x) for x in loaded.labels] == [type(x) for x in gallery.labels]
    np.testing.assert_array_equal(loaded.ids, gallery.ids)
    np.testing.assert_array_equal(loaded.vectors, gallery.vectors)
    assert loaded.get_metadata([5, 256]) == [{"row": 5, "tags": ["x", "x"]}, {"row": 256, "tags": ["x"]}]
    assert loaded.add(_random(rng, 2), ["new", "new"]).tolist() == [257, 258]
    assert [p.name for p in path.parent.iterdir()] == ["catalogue.gallery"]  # no temporary file left


def test_ip_metric_round_trip_keeps_raw_vectors(tmp_path: Path) -> None:
    gallery = Gallery(3, metric="ip")
    gallery.add(np.array([[3.0, 0, 0], [0, 1, 0]], np.float32), [1, 2])
    loaded = Gallery.load(gallery.save(tmp_path / "g"))
    scores, labels, _ = loaded.search(np.array([1.0, 1.0, 0], np.float32), k=2)
    assert scores.tolist() == [3.0, 1.0] and labels.tolist() == [1, 2] and loaded.metric == "ip"


def test_add_then_remove_leaves_results_as_before() -> None:
    rng = np.random.default_rng(4)
    gallery, _, _ = _filled(rng, n=120)
    queries = _random(rng, 10)
    before = gallery.search(queries, k=15)
    extra = gallery.add(_random(rng, 40) * 5, ["extra"] * 40, ids=np.arange(1000, 1040))
    assert not np.array_equal(gallery.search(queries, k=15)[2], before[2])  # the extra items do show up
    gallery.remove(extra[::-1])
    after = gallery.search(queries, k=15)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert len(gallery) == 120 and 1000 not in gallery and 5 in gallery


def test_remove_keeps_order_and_metadata() -> None:
    gallery = Gallery(2)
    gallery.add(np.eye(2, dtype=np.float32)[[0, 1, 0, 1]], ["a", "b", "c", "d"], metadata=[{"i": i} for i in range(4)])
    gallery.remove(2)
    assert gallery.labels == ["a", "b", "d"] and gallery.ids.tolist() == [0, 1, 3]
    assert gallery.get_metadata([3, 0]) == [{"i": 3}, {"i": 0}]
    with pytest.raises(GalleryIdError, match=r"not in the gallery: \[2\]"):
        gallery.remove([0, 2])
    assert len(gallery) == 3  # nothing was removed


def test_labels_of_str_and_int_types() -> None:
    gallery = Gallery(2)
    gallery.add(np.array([[1.0, 0]], np.float32), "cat")
    gallery.add(np.array([[0, 1.0]], np.float32), np.array([7]))
    gallery.add(np.array([[1.0, 1.0]], np.float32), np.array(["dog"]))
    _, labels, _ = gallery.search(np.array([[1.0, 0.1]], np.float32), k=3)
    assert labels[0].tolist() == ["cat", "dog", 7]
    assert [type(x) for x in gallery.labels] == [str, int, str]
    for bad in ([True], [1.5], [None]):
        with pytest.raises(InvalidInputError, match="labels must be ints or strs"):
            gallery.add(np.ones((1, 2), np.float32), bad)
    with pytest.raises(InvalidInputError, match="2 labels for 1 items"):
        gallery.add(np.ones((1, 2), np.float32), ["a", "b"])


def test_empty_gallery(tmp_path: Path) -> None:
    gallery = Gallery(DIM)
    assert len(gallery) == 0 and gallery.vectors.shape == (0, DIM)
    scores, labels, ids = gallery.search(np.ones((2, DIM), np.float32), k=3)
    assert np.isneginf(scores).all() and (ids == -1).all() and labels.tolist() == [[None] * 3] * 2
    assert gallery.search(np.ones((0, DIM), np.float32), k=3)[0].shape == (0, 3)
    with pytest.raises(GalleryIdError):
        gallery.remove([0])
    loaded = Gallery.load(gallery.save(tmp_path / "empty.gallery"))
    assert len(loaded) == 0 and loaded.search(np.ones(DIM, np.float32), k=1)[2].tolist() == [-1]
    assert gallery.add(np.ones((0, DIM), np.float32), []).shape == (0,)


def test_ids_are_checked() -> None:
    gallery = Gallery(2)
    assert gallery.add(np.ones((2, 2), np.float32), [1, 2], ids=[10, 3]).tolist() == [10, 3]
    assert gallery.add(np.ones((1, 2), np.float32), [1]).tolist() == [11]  # auto ids follow the largest
    with pytest.raises(GalleryIdError, match=r"already in the gallery: \[3\]"):
        gallery.add(np.ones((1, 2), np.float32), [1], ids=[3])
    with pytest.raises(GalleryIdError, match="repeated ids"):
        gallery.add(np.ones((2, 2), np.float32), [1, 1], ids=[20, 20])
    with pytest.raises(InvalidInputError, match="non-negative"):
        gallery.add(np.ones((1, 2), np.float32), [1], ids=[-1])
    with pytest.raises(InvalidInputError, match="1 ids for 2 items"):
        gallery.add(np.ones((2, 2), np.float32), [1, 1], ids=[30])
    assert len(gallery) == 3
    gallery.remove(np.int64(10))
    assert 10 not in gallery and 3 in gallery and len(gallery) == 2
    with pytest.raises(KeyError):  # GalleryIdError is a KeyError
        gallery.remove(10)


def test_score_threshold_and_zero_vectors() -> None:
    gallery = Gallery(2)
    gallery.add(np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 0.0]], np.float32), ["a", "b", "zero"])
    scores, labels, ids = gallery.search(np.array([[1.0, 0.0]], np.float32), k=3)
    assert scores[0].tolist() == pytest.approx([1.0, 0.6, 0.0]) and not np.isnan(scores).any()
    scores, labels, ids = gallery.search(np.array([[1.0, 0.0]], np.float32), k=3,
                                         score_threshold=REFERENCE_SCORE_THRESHOLD)
    assert labels[0].tolist() == ["a", "b", None] and ids[0].tolist() == [0, 1, -1] and np.isneginf(scores[0, 2])
    # The comparison is ``score >= threshold``, like the reference's.
    query = np.array([0.6, 0.8], np.float32)
    best = gallery.search(query, k=1)[0][0]
    assert gallery.search(query, k=1, score_threshold=float(best))[2].tolist() == [1]
    assert gallery.search(query, k=1, score_threshold=float(np.nextafter(best, np.float32(2))))[2].tolist() == [-1]
    assert REFERENCE_SCORE_THRESHOLD == 0.5


def test_metadata_is_json_and_copied() -> None:
    gallery = Gallery(2)
    meta = {"path": "a.jpg", "box": (1, 2, 3, 4)}
    gallery.add(np.ones((1, 2), np.float32), ["a"], metadata=[meta])
    meta["path"] = "changed"
    got = gallery.get_metadata(0)
    assert got == [{"path": "a.jpg", "box": [1, 2, 3, 4]}]
    got[0]["path"] = "mutated"
    assert gallery.get_metadata([0])[0]["path"] == "a.jpg"
    for bad, match in (([{"x": object()}], "JSON-serializable"), ([{"x": float("nan")}], "JSON-serializable"),
                       (["text"], "must be a dict"), ([None, None], "2 metadata entries")):
        with pytest.raises(InvalidInputError, match=match):
            gallery.add(np.ones((1, 2), np.float32), ["b"], metadata=bad)
    assert len(gallery) == 1


@pytest.mark.parametrize(
    ("kwargs", "call", "error", "match"),
    [
        ({"dim": 0}, None, ConfigError, "dim"),
        ({"metric": "l2"}, None, ConfigError, "metric"),
        ({"backend": "annoy"}, None, ConfigError, "backend"),
        ({"block_size": 0}, None, ConfigError, "block_size"),
        ({}, ("add", np.ones((2, 3), np.float32)), InvalidInputError, r"shape \[N, 4\]"),
        ({}, ("add", np.full((1, 4), np.nan, np.float32)), InvalidInputError, "NaN"),
        ({}, ("add", ["a.jpg"]), InvalidInputError, "extractor"),
        ({}, ("add", np.zeros((8, 8, 3), np.uint8)), InvalidInputError, "extractor"),
        ({}, ("search", np.ones((2, 5), np.float32)), InvalidInputError, "shape"),
        ({}, ("search", "a.jpg"), InvalidInputError, "extractor"),
        ({}, ("k", 0), ConfigError, "k must be"),
        ({}, ("threshold", float("nan")), ConfigError, "score_threshold"),
        ({}, ("threshold", "0.5"), ConfigError, "score_threshold"),
    ],
)
def test_invalid_arguments(kwargs: dict, call: tuple | None, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        gallery = Gallery(**{"dim": 4, **kwargs})
        if call is None:
            return
        what, value = call
        if what == "add":
            gallery.add(value, ["x"] * len(value))
        elif what == "search":
            gallery.search(value)
        elif what == "k":
            gallery.search(np.ones(4, np.float32), k=value)
        else:
            gallery.search(np.ones(4, np.float32), score_threshold=value)


class _MeanColorEmbedder:
    """A tiny real embedder for images given as HWC uint8 arrays: the mean colour, L2-normalized."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, images: list) -> np.ndarray:
        self.calls.append(len(images))
        feats = np.stack([np.asarray(img, np.float32).reshape(-1, 3).mean(0) for img in images])
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def test_images_go_through_the_extractor() -> None:
    embedder = _MeanColorEmbedder()
    gallery = Gallery(3, extractor=embedder)
    red, green = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    red[..., 0], green[..., 1] = 200, 200
    gallery.add([red, green], ["red", "green"])
    gallery.add(np.ones((1, 3), np.float32), "grey")  # vectors still work
    scores, labels, ids = gallery.search(red, k=2)  # one image: 1-D results
    assert labels.tolist() == ["red", "grey"] and ids.tolist() == [0, 2]
    assert gallery.search([green, red], k=1)[1].tolist() == [["green"], ["red"]]
    assert embedder.calls == [2, 1, 2]


def test_extractor_output_is_checked() -> None:
    class WrongDim:
        def embed(self, images: list) -> np.ndarray:
            return np.ones((len(images), 5), np.float32)

    with pytest.raises(InvalidInputError, match="gallery dim is 4"):
        Gallery(4, extractor=WrongDim()).add(["a.jpg"], ["a"])


# --------------------------------------------------------------------------------------- file corruption


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    gallery, _, _ = _filled(np.random.default_rng(5), n=50)
    return gallery.save(tmp_path / "g.gallery")


def _header_end(data: bytes) -> int:
    return 48 + struct.unpack("<I", data[12:16])[0]


@pytest.mark.parametrize("cut", [0, 7, 15, 30, 60, "header", "vectors", "records"])
def test_truncated_file_is_rejected(saved: Path, cut: int | str) -> None:
    data = saved.read_bytes()
    if isinstance(cut, str):
        header = json.loads(data[48:_header_end(data)])
        cut = {"header": _header_end(data) - 5, "vectors": header["vectors_offset"] + 100,
               "records": len(data) - 1}[cut]
    saved.write_bytes(data[:cut])
    with pytest.raises(GalleryFormatError, match="truncated|not a shitu-features gallery"):
        Gallery.load(saved)


@pytest.mark.parametrize("where", ["magic", "header", "vectors", "records", "trailing"])
def test_corrupted_file_is_rejected(saved: Path, where: str) -> None:
    data = bytearray(saved.read_bytes())
    header = json.loads(bytes(data[48:_header_end(data)]))
    if where == "trailing":
        data += b"\0"
    else:
        offset = {"magic": 0, "header": 60, "vectors": header["vectors_offset"] + 77,
                  "records": header["records_offset"] + 3}[where]
        data[offset] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(GalleryFormatError, match="corrupted|not a shitu-features gallery"):
        Gallery.load(saved)


def _rewrite_header(path: Path, **changes: object) -> None:
    """Re-sign a modified header, as a buggy or hostile writer would: only the layout checks can catch it."""
    import hashlib

    data = path.read_bytes()
    header = json.loads(data[48:_header_end(data)])
    header.update(changes)
    new = json.dumps(header).encode()
    body = data[header["vectors_offset"]:]
    pad = b"\0" * (header["vectors_offset"] - 48 - len(new))
    path.write_bytes(data[:12] + struct.pack("<I", len(new)) + hashlib.sha256(new).digest() + new + pad + body)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"count": 51}, "inconsistent gallery header"),
        ({"dim": 8}, "inconsistent gallery header"),
        ({"metric": "euclid"}, "invalid gallery header"),
        ({"unexpected": 1}, "invalid gallery header"),
        ({"next_id": 3}, "ids must be unique ints"),
        ({"records_nbytes": 10**12}, "truncated"),
    ],
)
def test_inconsistent_header_is_rejected(saved: Path, changes: dict, match: str) -> None:
    _rewrite_header(saved, **changes)
    with pytest.raises(GalleryFormatError, match=match):
        Gallery.load(saved)


def test_unsupported_version_and_foreign_files(saved: Path, tmp_path: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[8:12] = struct.pack("<I", 2)
    saved.write_bytes(bytes(data))
    with pytest.raises(GalleryFormatError, match="version 2 is not supported"):
        Gallery.load(saved)
    npy = tmp_path / "vectors.npy"
    np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickle inside: never unpickled
    with pytest.raises(GalleryFormatError, match="not a shitu-features gallery"):
        Gallery.load(npy)
    with pytest.raises(FileNotFoundError):
        Gallery.load(tmp_path / "missing.gallery")


def test_failed_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    gallery, _, _ = _filled(np.random.default_rng(6), n=3)
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(OSError):
        gallery.save(target)  # os.replace cannot replace a non-empty directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# ------------------------------------------------------------------------------------------------- faiss


def test_faiss_backend_matches_numpy(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    numpy_gallery, vectors, labels = _filled(rng, n=400)
    faiss_gallery = Gallery(DIM, backend="faiss")
    faiss_gallery.add(vectors, labels)
    queries = _random(rng, 30)
    for k in (1, 10, 500):
        want, got = numpy_gallery.search(queries, k=k), faiss_gallery.search(queries, k=k)
        np.testing.assert_array_equal(got[2], want[2])
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    for g in (numpy_gallery, faiss_gallery):
        g.remove(np.arange(0, 400, 3))
    reloaded = Gallery.load(faiss_gallery.save(tmp_path / "f.gallery"), backend="faiss")
    np.testing.assert_array_equal(reloaded.search(queries, k=20)[2], numpy_gallery.search(queries, k=20)[2])
    assert reloaded.backend == "faiss"


def test_faiss_backend_without_faiss_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail, installed or not
    with pytest.raises(ImportError, match=r"pip install shitu-features\[faiss\]"):
        Gallery(DIM, backend="faiss")
