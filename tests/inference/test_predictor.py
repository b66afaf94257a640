"""Predictor: both export formats by explicit file paths, oneDNN on/off, devices and options."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shitu_features.errors import ConfigError, DeviceError, ModelNotFoundError
from shitu_features.inference.predictor import Predictor, parse_device, physical_cpu_count


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.sum(np.square(x), axis=1, keepdims=True))


@pytest.fixture(scope="module")
def model_input(reference_dir: Path) -> np.ndarray:
    return np.load(reference_dir / "model" / "input.npy", allow_pickle=False)


@pytest.fixture(scope="module")
def legacy_files(reference_dir: Path) -> tuple[Path, Path]:
    folder = reference_dir / "legacy_infer"
    return folder / "inference.pdmodel", folder / "inference.pdiparams"


@pytest.mark.parametrize("use_mkldnn", [True, False])
def test_legacy_pdmodel_loads_by_file_paths(legacy_files: tuple[Path, Path], model_input: np.ndarray,
                                            reference_dir: Path, use_mkldnn: bool) -> None:
    expected = np.load(reference_dir / "legacy_infer" / "expected_features.npy")
    predictor = Predictor(*legacy_files, use_mkldnn=use_mkldnn)
    got = predictor.run(model_input)
    assert got.shape == expected.shape and got.dtype == np.float32
    # reference/README: raw features agree to ~1e-5 relative (oneDNN), L2-normalised to ~1e-6.
    assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()
    assert np.abs(l2(got) - l2(expected)).max() <= 1e-5


def test_pir_export_loads_and_matches_fused_dygraph(exported_dir: Path, model_input: np.ndarray,
                                                   reference_dir: Path) -> None:
    expected = np.load(reference_dir / "model" / "features_rep.npy")
    predictor = Predictor(exported_dir / "inference.json", exported_dir / "inference.pdiparams")
    got = predictor.run(model_input)
    assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()
    # The export has a dynamic height and width: the odd-size reference input runs too.
    odd = np.load(reference_dir / "model" / "input_odd.npy")
    odd_expected = np.load(reference_dir / "model" / "features_odd_rep.npy")
    assert np.abs(predictor.run(odd) - odd_expected).max() <= 2e-5 * np.abs(odd_expected).max()


def test_io_found_by_position_not_name(exported_dir: Path, legacy_files: tuple[Path, Path],
                                       model_input: np.ndarray) -> None:
    pir = Predictor(exported_dir / "inference.json", exported_dir / "inference.pdiparams", num_threads=1)
    legacy = Predictor(*legacy_files, num_threads=1)
    # The output tensors are named differently in the two formats; both are found.
    assert pir._predictor.get_output_names() != legacy._predictor.get_output_names()
    assert np.abs(l2(pir.run(model_input)) - l2(legacy.run(model_input))).max() <= 1e-5


def test_batch_of_one_equals_batch_of_two(legacy_files: tuple[Path, Path], model_input: np.ndarray) -> None:
    predictor = Predictor(*legacy_files)
    both = l2(predictor.run(model_input))
    one = l2(np.concatenate([predictor.run(model_input[i:i + 1]) for i in range(len(model_input))]))
    assert np.abs(both - one).max() <= 1e-5


def test_large_batches_run_in_chunks_with_the_same_results(exported_dir: Path, model_input: np.ndarray) -> None:
    files = exported_dir / "inference.json", exported_dir / "inference.pdiparams"
    batch = np.concatenate([model_input] * 3 + [model_input[:1]])  # 7 images
    whole = Predictor(*files, num_threads=1, max_batch_size=None).run(batch)
    chunked = Predictor(*files, num_threads=1, max_batch_size=3)  # forward passes of 3, 3 and 1
    assert chunked.max_batch_size == 3 and "max_batch_size=3" in repr(chunked)
    got = chunked.run(batch)
    assert got.shape == (7, 512) and np.abs(got - whole).max() <= 1e-5 * np.abs(whole).max()
    # "auto": at least 4 images per CPU thread, and never fewer than 8.
    assert Predictor(*files, num_threads=1).max_batch_size == 8
    assert Predictor(*files, num_threads=4).max_batch_size == 16
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ConfigError, match="max_batch_size"):
            Predictor(*files, max_batch_size=bad)  # type: ignore[arg-type]


def test_options_are_recorded(legacy_files: tuple[Path, Path]) -> None:
    predictor = Predictor(*legacy_files, num_threads=1, use_mkldnn=False)
    assert predictor.device == "cpu" and predictor.num_threads == 1 and predictor.use_mkldnn is False
    assert "threads=1" in repr(predictor) and "onednn=False" in repr(predictor)
    assert Predictor(*legacy_files).num_threads == physical_cpu_count()


def test_missing_files_and_bad_options(legacy_files: tuple[Path, Path], tmp_path: Path) -> None:
    model_file, params_file = legacy_files
    with pytest.raises(ModelNotFoundError, match="model file"):
        Predictor(tmp_path / "inference.json", params_file)
    with pytest.raises(ModelNotFoundError, match="params file"):
        Predictor(model_file, tmp_path / "inference.pdiparams")
    with pytest.raises(ModelNotFoundError):  # a directory is not a model file (no (dir, prefix) form)
        Predictor(model_file.parent, params_file)
    with pytest.raises(ConfigError, match="fp16"):
        Predictor(model_file, params_file, precision="fp16")
    with pytest.raises(ConfigError, match="precision"):
        Predictor(model_file, params_file, precision="int8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_threads"):
        Predictor(model_file, params_file, num_threads=0)
    with pytest.raises(ConfigError, match="device"):
        Predictor(model_file, params_file, device="tpu")


def test_run_checks_its_input(legacy_files: tuple[Path, Path]) -> None:
    predictor = Predictor(*legacy_files, num_threads=1)
    with pytest.raises(ConfigError, match="float32"):
        predictor.run(np.zeros((1, 3, 224, 224), np.float64))
    with pytest.raises(ConfigError, match="float32"):
        predictor.run(np.zeros((3, 224, 224), np.float32))


def test_corrupted_model_file_is_a_typed_error(legacy_files: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "inference.json"
    bad.write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="could not load"):
        Predictor(bad, legacy_files[1])


def test_gpu_without_cuda_is_a_device_error(legacy_files: tuple[Path, Path]) -> None:
    import paddle

    if paddle.device.is_compiled_with_cuda():
        pytest.skip("this Paddle has CUDA")
    with pytest.raises(DeviceError, match="without CUDA"):
        Predictor(*legacy_files, device="gpu:1")


def test_parse_device() -> None:
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("GPU") == ("gpu", 0)
    assert parse_device("gpu:1") == ("gpu", 1)
    assert parse_device("cuda:2") == ("gpu", 2)
    for bad in ("cpu:1", "gpu:-1", "npu", "gpu:x", ""):
        with pytest.raises(ConfigError):
            parse_device(bad)


def test_physical_cpu_count_is_sane() -> None:
    n = physical_cpu_count()
    assert 1 <= n <= (os.cpu_count() or 1)


# --- bf16 on CPU ----------------------------------------------------------------------------------------------

def _needs_native_bf16() -> None:
    from shitu_features.inference.predictor import cpu_bf16_support

    if not cpu_bf16_support()[1]:
        pytest.skip("this CPU has no AVX512-BF16 / AMX (the CI machine has both)")


def test_bf16_on_cpu_is_close_to_fp32_and_really_bf16(exported_dir: Path, model_input: np.ndarray,
                                                      reference_dir: Path) -> None:
    _needs_native_bf16()
    expected = l2(np.load(reference_dir / "model" / "features_rep.npy"))
    predictor = Predictor(exported_dir / "inference.json", exported_dir / "inference.pdiparams", precision="bf16")
    assert predictor.precision == "bf16" and "precision='bf16'" in repr(predictor)
    got = l2(predictor.run(model_input))
    assert got.shape == expected.shape and got.dtype == np.float32 and np.isfinite(got).all()
    cosine = np.sum(got * expected, axis=1)
    assert cosine.min() >= 0.999, cosine
    # Not silently fp32: bfloat16 has an 8-bit mantissa, so the vectors must move well beyond fp32 noise.
    assert np.abs(got - expected).max() > 1e-4
    # Odd input sizes run as well (the model has dynamic height and width).
    odd = np.load(reference_dir / "model" / "input_odd.npy")
    odd_expected = l2(np.load(reference_dir / "model" / "features_odd_rep.npy"))
    assert np.sum(l2(predictor.run(odd)) * odd_expected, axis=1).min() >= 0.999


def test_bf16_option_errors(legacy_files: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="use_mkldnn=False"):
        Predictor(*legacy_files, precision="bf16", use_mkldnn=False)
    with pytest.raises(ConfigError, match="CPU"):
        Predictor(*legacy_files, precision="bf16", device="gpu")


def test_bf16_on_a_cpu_without_bfloat16_is_a_device_error(legacy_files: tuple[Path, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from paddle.base import core

    # Paddle's own CPU probe answers "no", as it does on CPUs older than AVX-512.
    monkeypatch.setattr(core, "supports_bfloat16", lambda: False)
    monkeypatch.setattr(core, "supports_bfloat16_fast_performance", lambda: False)
    with pytest.raises(DeviceError, match="bfloat16"):
        Predictor(*legacy_files, precision="bf16")


def test_bf16_emulated_warns_but_runs(legacy_files: tuple[Path, Path], model_input: np.ndarray,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from paddle.base import core

    monkeypatch.setattr(core, "supports_bfloat16", lambda: True)
    monkeypatch.setattr(core, "supports_bfloat16_fast_performance", lambda: False)
    with pytest.warns(RuntimeWarning, match="emulates bfloat16"):
        predictor = Predictor(*legacy_files, precision="bf16", num_threads=1)
    assert predictor.run(model_input[:1]).shape == (1, 512)
