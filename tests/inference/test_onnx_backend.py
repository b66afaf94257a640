"""ONNX Runtime backend: parity with Paddle, conversion cache, selection, and the message when it is missing.

The tests that convert or run a model need ``paddle2onnx`` and ``onnxruntime`` (the ``[onnx]`` extra) and skip
without them; the selection and missing-dependency tests always run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from shitu_features.errors import ConfigError
from shitu_features.inference.extractor import Extractor
from shitu_features.inference.predictor import physical_cpu_count


@pytest.fixture(scope="module")
def onnx_deps() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("paddle2onnx")


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx_cache")


@pytest.fixture(scope="module")
def onnx_extractor(onnx_deps: None, exported_dir: Path, onnx_cache: Path) -> Extractor:
    return Extractor.from_pretrained(exported_dir, backend="onnxruntime", cache_dir=onnx_cache)


def test_onnxruntime_matches_paddle_within_1e4(onnx_extractor: Extractor, extractor: Extractor,
                                              preprocess_images: list[Path], reference_dir: Path) -> None:
    got = onnx_extractor.embed(preprocess_images, batch_size=4)
    want = extractor.embed(preprocess_images)
    assert got.shape == want.shape == (len(preprocess_images), 512)
    assert np.abs(got - want).max() <= 1e-4
    expected = np.load(reference_dir / "preprocess" / "expected_features_l2.npy")
    assert np.abs(got - expected).max() <= 1e-4
    # Raw features too (relative to their scale): the converted graph computes the same BN-neck output.
    raw_onnx = onnx_extractor.embed(preprocess_images, normalize=False)
    raw_paddle = extractor.embed(preprocess_images, normalize=False)
    assert np.abs(raw_onnx - raw_paddle).max() <= 2e-5 * np.abs(raw_paddle).max()


def test_legacy_pdmodel_converts_too(onnx_deps: None, legacy_extractor: Extractor, reference_dir: Path,
                                     onnx_cache: Path, preprocess_images: list[Path]) -> None:
    onnx_legacy = Extractor.from_pretrained(reference_dir / "legacy_infer", backend="onnxruntime",
                                            cache_dir=onnx_cache)
    assert np.abs(onnx_legacy.embed(preprocess_images[:3]) - legacy_extractor.embed(preprocess_images[:3])).max() \
        <= 1e-4


def test_conversion_is_cached_and_keyed_by_the_files(onnx_extractor: Extractor, exported_dir: Path,
                                                     onnx_cache: Path) -> None:
    onnx_file = onnx_extractor.predictor.onnx_file
    assert onnx_file.is_file() and onnx_file.name == "inference.onnx"
    assert onnx_file.parent.parent == onnx_cache / "onnx"
    stamp = onnx_file.stat().st_mtime_ns
    again = Extractor.from_pretrained(exported_dir, backend="onnxruntime", cache_dir=onnx_cache)
    assert again.predictor.onnx_file == onnx_file and onnx_file.stat().st_mtime_ns == stamp  # not converted again
    # The Paddle files stay what save_pretrained copies.
    assert again.predictor.model_file.parent == exported_dir and again.predictor.params_file.parent == exported_dir


def test_batch_size_and_threads_do_not_change_results(onnx_extractor: Extractor, exported_dir: Path,
                                                      onnx_cache: Path, preprocess_images: list[Path]) -> None:
    single = Extractor.from_pretrained(exported_dir, backend="onnxruntime", cache_dir=onnx_cache, num_threads=1)
    want = onnx_extractor.embed(preprocess_images, batch_size=len(preprocess_images))
    assert np.abs(onnx_extractor.embed(preprocess_images, batch_size=1) - want).max() <= 1e-5
    assert np.abs(single.embed(preprocess_images, batch_size=2) - want).max() <= 1e-5


def test_properties_and_options(onnx_extractor: Extractor, onnx_deps: None, exported_dir: Path,
                                onnx_cache: Path) -> None:
    assert onnx_extractor.backend == "onnxruntime" and onnx_extractor.device == "cpu"
    assert "backend='onnxruntime'" in repr(onnx_extractor) and "onednn" not in repr(onnx_extractor)
    assert onnx_extractor.predictor.releases_gil
    assert onnx_extractor.num_workers == max(1, min(8, physical_cpu_count()))
    with pytest.raises(ConfigError, match="fp32"):
        Extractor.from_pretrained(exported_dir, backend="onnxruntime", cache_dir=onnx_cache, precision="fp16")
    with pytest.raises(ConfigError, match="float32"):
        onnx_extractor.predictor.run(np.zeros((1, 3, 224, 224), np.float64))


def test_paddle_is_the_default_and_unknown_backends_are_refused(extractor: Extractor, exported_dir: Path) -> None:
    assert extractor.backend == "paddle" and type(extractor.predictor).__name__ == "Predictor"
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        Extractor.from_pretrained(exported_dir, backend="tensorrt")  # type: ignore[arg-type]


def test_missing_onnxruntime_is_a_clear_import_error(exported_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import onnxruntime` raise ImportError, as on a machine without it.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r'pip install "shitu-features\[onnx\]"'):
        Extractor.from_pretrained(exported_dir, backend="onnxruntime")


def test_missing_paddle2onnx_is_a_clear_import_error(tmp_path: Path, exported_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from shitu_features.inference.onnx_backend import convert_to_onnx

    monkeypatch.setitem(sys.modules, "paddle2onnx", None)
    with pytest.raises(ImportError, match="paddle2onnx"):
        convert_to_onnx(exported_dir / "inference.json", exported_dir / "inference.pdiparams",
                        tmp_path / "inference.onnx")
    assert not (tmp_path / "inference.onnx").exists()
