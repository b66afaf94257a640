"""Restricted .pdparams loading (crafted pickles must not run) and atomic, Paddle-compatible saving."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shitu_features.errors import (
    CheckpointFormatError,
    InvalidInputError,
    ModelNotFoundError,
    UnsafeCheckpointError,
)
from shitu_features.serialization import ALLOWED_GLOBALS, load_state_dict, save_state_dict


def _keys_txt(reference_dir: Path) -> list[tuple[str, list[int], str]]:
    rows = []
    for line in (reference_dir / "model" / "keys.txt").read_text().splitlines():
        name, shape, dtype = line.split("\t")
        rows.append((name, [int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype))
    return rows


@pytest.fixture(scope="module")
def fixture_state(reference_dir: Path) -> dict[str, np.ndarray]:
    return load_state_dict(reference_dir / "model" / "rec_model.pdparams")


# ------------------------------------------------------------------------------------------------ genuine files


def test_reference_checkpoint_loads_with_exact_keys_shapes_dtypes(
    fixture_state: dict[str, np.ndarray], reference_dir: Path
) -> None:
    expected = _keys_txt(reference_dir)
    assert len(fixture_state) == 287
    assert [(k, list(v.shape), str(v.dtype)) for k, v in fixture_state.items()] == expected
    assert "StructuredToParameterName@@" not in fixture_state


def test_reference_values_match_paddle_load(fixture_state: dict[str, np.ndarray], reference_dir: Path) -> None:
    paddle = pytest.importorskip("paddle")
    ref = paddle.load(str(reference_dir / "model" / "rec_model.pdparams"), return_numpy=True)
    assert set(ref) == set(fixture_state)
    assert all(np.array_equal(ref[k], fixture_state[k]) for k in ref)


def test_paddle_save_of_a_layer_state_dict_loads(tmp_path: Path) -> None:
    paddle = pytest.importorskip("paddle")
    layer = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4))
    paddle.save(layer.state_dict(), str(tmp_path / "layer.pdparams"))
    loaded = load_state_dict(tmp_path / "layer.pdparams")
    expected = {k: v.numpy() for k, v in layer.state_dict().items()}
    assert list(loaded) == list(expected)
    assert all(np.array_equal(loaded[k], expected[k]) for k in expected)


def test_protocol_2_file_loads(tmp_path: Path) -> None:
    paddle = pytest.importorskip("paddle")
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    paddle.save({"w": paddle.to_tensor(weight)}, str(tmp_path / "p2.pdparams"), protocol=2)
    assert np.array_equal(load_state_dict(tmp_path / "p2.pdparams")["w"], weight)


def test_nested_checkpoint_is_unwrapped_when_unambiguous(tmp_path: Path) -> None:
    paddle = pytest.importorskip("paddle")
    weights = {"fc.weight": np.ones((2, 3), np.float32), "fc.bias": np.zeros(3, np.float32)}
    tensors = {k: paddle.to_tensor(v) for k, v in weights.items()}
    # Nested tensors are pickled by Paddle as ("tensor_name", ndarray) tuples.
    paddle.save({"model": tensors, "epoch": 3, "optimizer": {"lr": 0.1}}, str(tmp_path / "ckpt.pdparams"))
    loaded = load_state_dict(tmp_path / "ckpt.pdparams")
    assert list(loaded) == list(weights) and all(np.array_equal(loaded[k], weights[k]) for k in weights)
    paddle.save({"model": tensors, "ema": tensors}, str(tmp_path / "two.pdparams"))
    with pytest.raises(CheckpointFormatError, match="several nested tensor dicts"):
        load_state_dict(tmp_path / "two.pdparams")


def test_sliced_big_tensors_are_reassembled_like_paddle_load(tmp_path: Path) -> None:
    # The layout paddle.save(protocol=2|3) writes for tensors over 1 GiB (io_utils._unpack_saved_dict), in small.
    weight = np.arange(10, dtype=np.float32).reshape(2, 5)
    flat = weight.flatten()
    saved = {
        "b": np.ones(2, np.float32),
        "w@@.0": flat[:6],
        "w@@.1": flat[6:],
        "UnpackBigParamInfor@@": {"w": {"OriginShape": (2, 5), "slices": ["w@@.0", "w@@.1"]}},
    }
    path = tmp_path / "sliced.pdparams"
    path.write_bytes(pickle.dumps(saved, protocol=2))
    loaded = load_state_dict(path)
    assert sorted(loaded) == ["b", "w"] and np.array_equal(loaded["w"], weight)
    paddle = pytest.importorskip("paddle")
    assert np.array_equal(paddle.load(str(path), return_numpy=True)["w"], weight)


# ------------------------------------------------------------------------------------------------ crafted files


class _Reduce:
    """Pickles as ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, tuple[object, str]]:
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "os.system": (_Reduce(os.system, f"touch '{marker}'"), f"{os.system.__module__}.system"),
        "builtins.exec": (_Reduce(builtins.exec, code), "builtins.exec"),
        "builtins.eval": (_Reduce(builtins.eval, code), "builtins.eval"),
        "subprocess.Popen": (_Reduce(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        "numpy runstring": (_Reduce(np.testing._private.utils.runstring, code, {}), "numpy.testing._private.utils"),
    }


PAYLOADS = ["os.system", "builtins.exec", "builtins.eval", "subprocess.Popen", "numpy runstring"]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("position", ["alone", "after_real_tensors"])
def test_crafted_pickle_is_refused_and_does_not_run(tmp_path: Path, payload: str, position: str) -> None:
    marker = tmp_path / "pwned"
    evil, global_name = _payloads(marker)[payload]
    state: dict[str, object] = {}
    if position == "after_real_tensors":  # a genuine-looking checkpoint with one poisoned entry at the end
        state = {"backbone.w": np.ones((4, 4), np.float32), "neck.b": np.zeros(4, np.float32)}
    state["head.fc.weight"] = evil
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps(state, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match=global_name.replace(".", r"\.")):
        load_state_dict(path)
    assert not marker.exists()


def test_unpickling_the_same_bytes_normally_would_run_the_payload(tmp_path: Path) -> None:
    # Guards the test above: the crafted file really is harmful when loaded with plain pickle.
    marker = tmp_path / "pwned"
    data = pickle.dumps({"w": _payloads(marker)["builtins.exec"][0]})
    pickle.loads(data)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        # _codecs.encode is allowed only for the latin1 round trip protocol 2 uses for bytes.
        (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.", "latin1"),
        (b"\x80\x02cbuiltins\ngetattr\n.", r"builtins\.getattr"),
        (b"\x80\x02cnumpy\nload\n.", r"numpy\.load"),
        (b"\x80\x02cnumpy.core.multiarray\n_frompyfunc\n.", r"numpy\.core\.multiarray\._frompyfunc"),
        (b"\x80\x02Pfoo\n.", "persistent id"),
    ],
    ids=["codecs-rot13", "getattr", "numpy.load", "numpy-prefix", "persid"],
)
def test_handcrafted_opcodes_are_refused(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "x.pdparams"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match=match):
        load_state_dict(path)


def test_allow_list_is_exact_names_only() -> None:
    modules = {module for module, _ in ALLOWED_GLOBALS}
    assert modules <= {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "builtins", "__builtin__",
                       "collections", "_codecs"}  # fmt: skip
    assert ("builtins", "tuple") in ALLOWED_GLOBALS and ("builtins", "eval") not in ALLOWED_GLOBALS


# ------------------------------------------------------------------------------------------------ bad files


def test_truncated_checkpoint_is_a_format_error(tmp_path: Path, reference_dir: Path) -> None:
    data = (reference_dir / "model" / "rec_model.pdparams").read_bytes()
    for cut in (len(data) // 2, 100, 0):
        path = tmp_path / f"cut{cut}.pdparams"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointFormatError, match="truncated, corrupted"):
            load_state_dict(path)


def test_garbage_and_non_state_dicts_are_format_errors(tmp_path: Path) -> None:
    (tmp_path / "png.pdparams").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    with pytest.raises(CheckpointFormatError):
        load_state_dict(tmp_path / "png.pdparams")
    (tmp_path / "list.pdparams").write_bytes(pickle.dumps([np.ones(2)]))
    with pytest.raises(CheckpointFormatError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pdparams")
    (tmp_path / "mixed.pdparams").write_bytes(pickle.dumps({"w": np.ones(2), "epoch": 3}))
    with pytest.raises(CheckpointFormatError, match="'epoch'"):
        load_state_dict(tmp_path / "mixed.pdparams")


def test_missing_path_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pdparams")
    with pytest.raises(ModelNotFoundError, match="is a directory"):
        load_state_dict(tmp_path)


# ------------------------------------------------------------------------------------------------ saving


def test_round_trip_of_the_reference_is_bit_identical(fixture_state: dict[str, np.ndarray], tmp_path: Path) -> None:
    out = save_state_dict(fixture_state, tmp_path / "sub" / "copy.pdparams")
    again = load_state_dict(out)
    assert list(again) == list(fixture_state)
    for key, value in fixture_state.items():
        assert again[key].dtype == value.dtype and again[key].shape == value.shape
        assert again[key].tobytes() == value.tobytes(), key
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.pdparams"]  # no temp file left


def test_saved_file_is_what_paddle_load_reads(tmp_path: Path) -> None:
    paddle = pytest.importorskip("paddle")
    arrays = {
        "f32": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32),
        "f16": np.array([1.5, -2.0], np.float16),
        "i64": np.arange(5, dtype=np.int64),
        "flag": np.array([True, False]),
        "scalar": np.array(3.0, np.float32),
    }
    path = save_state_dict({**arrays, "tensor": paddle.to_tensor(arrays["f32"])}, tmp_path / "m.pdparams")
    ours = load_state_dict(path)
    theirs = paddle.load(str(path))
    assert isinstance(theirs["f32"], paddle.Tensor)
    for key, value in {**arrays, "tensor": arrays["f32"]}.items():
        assert ours[key].dtype == value.dtype and ours[key].tobytes() == value.tobytes()
        assert np.array_equal(theirs[key].numpy(), value)


def test_failed_save_keeps_the_previous_file(tmp_path: Path) -> None:
    path = save_state_dict({"w": np.ones(3, np.float32)}, tmp_path / "m.pdparams")
    before = path.read_bytes()
    with pytest.raises(InvalidInputError, match="'bad'"):
        save_state_dict({"w": np.zeros(3, np.float32), "bad": [1, 2]}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pdparams"]


def test_loading_does_not_import_paddle(reference_dir: Path) -> None:
    # The loader needs numpy only, so checking a checkpoint is cheap and cannot touch Paddle state.
    code = (
        "import sys; from shitu_features.serialization import load_state_dict; "
        f"d = load_state_dict({str(reference_dir / 'model' / 'rec_model.pdparams')!r}); "
        "assert len(d) == 287; assert 'paddle' not in sys.modules, 'paddle imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
