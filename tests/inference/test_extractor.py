"""Extractor: reference parity (both formats and the .pdparams path), inputs, errors, batching, streaming."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import paddle
import pytest

from shitu_features.errors import (
    ConfigError,
    DeviceError,
    ImageDecodeError,
    ImageNotFoundError,
    InvalidInputError,
    ModelNotFoundError,
    OfflineError,
    OutputExistsError,
)
from shitu_features.inference.extractor import EmbedResult, Extractor, ZeroNormWarning, l2_normalize
from shitu_features.inference.preprocess import preprocess

if TYPE_CHECKING:
    from _http_server import LoopbackServer  # tests/_http_server.py, served by conftest's loopback_server


def l2(x: np.ndarray) -> np.ndarray:
    """The reference post-processing: x / sqrt(sum(x^2)), no epsilon (spec §5.1 step 6)."""
    return x / np.sqrt(np.sum(np.square(x), axis=1, keepdims=True))


def reference_embedding(extractor: Extractor, rgb: np.ndarray) -> np.ndarray:
    """Oracle: the reference's arithmetic preprocessing of an RGB image, the predictor, then the reference L2."""
    return l2(extractor.predictor.run(preprocess(rgb)[None]))[0]


@pytest.fixture(scope="module")
def expected_l2(reference_dir: Path) -> np.ndarray:
    return np.load(reference_dir / "preprocess" / "expected_features_l2.npy", allow_pickle=False)


@pytest.fixture(scope="module")
def sixteen_inputs(preprocess_images: list[Path]) -> list:
    """16 different inputs of mixed kinds built from the reference images."""
    items: list = list(preprocess_images)
    for path in preprocess_images:
        rgb = cv2.imread(str(path))[:, :, ::-1]
        items.append(np.ascontiguousarray(rgb[:, ::-1]))  # mirrored
    items += [path.read_bytes() for path in preprocess_images[:4]]
    return items


# ------------------------------------------------------------------------------------------------------------
# Acceptance: parity with the reference


def test_embeddings_match_expected_features_l2(extractor: Extractor, preprocess_images: list[Path],
                                               expected_l2: np.ndarray) -> None:
    got = extractor.embed(preprocess_images)
    assert got.shape == expected_l2.shape and got.dtype == np.float32
    assert np.abs(got - expected_l2).max() <= 1e-5


def test_legacy_format_loads_and_matches(legacy_extractor: Extractor, reference_dir: Path,
                                         preprocess_images: list[Path], expected_l2: np.ndarray) -> None:
    assert legacy_extractor.predictor.model_file.suffix == ".pdmodel"
    model_input = np.load(reference_dir / "model" / "input.npy")
    expected = np.load(reference_dir / "legacy_infer" / "expected_features.npy")
    assert np.abs(l2(legacy_extractor.predictor.run(model_input)) - l2(expected)).max() <= 1e-4
    assert np.abs(legacy_extractor.embed(preprocess_images) - expected_l2).max() <= 1e-5


def test_legacy_export_and_pdparams_give_the_same_vectors(extractor: Extractor, legacy_extractor: Extractor,
                                                          sixteen_inputs: list) -> None:
    assert extractor.predictor.model_file.name == "inference.json"  # the library's own Paddle 3 export
    assert np.abs(extractor.embed(sixteen_inputs) - legacy_extractor.embed(sixteen_inputs)).max() <= 1e-5


def test_pdparams_export_is_cached_by_sha256(extractor: Extractor, reference_checkpoint: Path,
                                             export_cache: Path) -> None:
    exports = export_cache / "exports"
    before = {p.name: p.stat().st_mtime_ns for p in exports.iterdir()}
    again = Extractor.from_pretrained(reference_checkpoint, cache_dir=export_cache)
    assert again.model_dir == extractor.model_dir
    assert {p.name: p.stat().st_mtime_ns for p in exports.iterdir()} == before  # not exported twice
    assert extractor.model_dir.name.startswith(extractor_sha_prefix(reference_checkpoint))


def extractor_sha_prefix(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


def test_batch_size_does_not_change_results(extractor: Extractor, sixteen_inputs: list) -> None:
    assert len(sixteen_inputs) == 16
    one = extractor.embed(sixteen_inputs, batch_size=1)
    sixteen = extractor.embed(sixteen_inputs, batch_size=16)
    assert np.abs(one - sixteen).max() <= 1e-5


def test_thread_count_does_not_change_results(exported_dir: Path, extractor: Extractor,
                                              preprocess_images: list[Path]) -> None:
    single = Extractor.from_pretrained(exported_dir, num_threads=1, num_workers=3)
    plain = Extractor.from_pretrained(exported_dir, use_mkldnn=False)
    want = extractor.embed(preprocess_images)
    assert np.abs(single.embed(preprocess_images) - want).max() <= 1e-5
    assert np.abs(plain.embed(preprocess_images) - want).max() <= 1e-5


def test_bf16_precision_on_cpu(exported_dir: Path, extractor: Extractor, preprocess_images: list[Path]) -> None:
    from shitu_features.inference.predictor import cpu_bf16_support

    if not cpu_bf16_support()[1]:
        pytest.skip("this CPU has no AVX512-BF16 / AMX (the CI machine has both)")
    fast = Extractor.from_pretrained(exported_dir, precision="bf16")
    assert fast.predictor.precision == "bf16"
    got, want = fast.embed(preprocess_images), extractor.embed(preprocess_images)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.sum(got * want, axis=1).min() >= 0.999
    # bf16 results do not depend on the batch size either (each image is computed independently).
    assert np.abs(fast.embed(preprocess_images, batch_size=1) - got).max() <= 1e-5


# ------------------------------------------------------------------------------------------------------------
# Inputs


def test_single_input_is_one_dimensional(extractor: Extractor, preprocess_images: list[Path],
                                         expected_l2: np.ndarray) -> None:
    path = preprocess_images[0]
    for source in (path, str(path), path.read_bytes(), cv2.imread(str(path))[:, :, ::-1].copy()):
        got = extractor.embed(source)
        assert got.shape == (512,) and got.dtype == np.float32
        assert np.abs(got - expected_l2[0]).max() <= 1e-5
    assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5


def test_iterables_generators_and_batch_arrays(extractor: Extractor, preprocess_images: list[Path]) -> None:
    want = extractor.embed(preprocess_images)
    assert np.array_equal(extractor.embed(tuple(preprocess_images)), want)
    assert np.abs(extractor.embed(p for p in preprocess_images) - want).max() <= 1e-6
    assert np.abs(extractor.embed(map(str, preprocess_images)) - want).max() <= 1e-6
    rgb = [cv2.imread(str(p))[:, :, ::-1] for p in preprocess_images[:3]]
    same = np.stack([cv2.resize(img, (100, 80)) for img in rgb])  # [3, 80, 100, 3] uint8 batch array
    assert np.abs(extractor.embed(same) - extractor.embed(list(same))).max() <= 1e-6


def test_bgr_arrays_with_channel_order(extractor: Extractor, preprocess_images: list[Path],
                                       expected_l2: np.ndarray) -> None:
    bgr = [cv2.imread(str(p)) for p in preprocess_images]
    got = extractor.embed(bgr, channel_order="bgr")
    assert np.abs(got - expected_l2).max() <= 1e-5
    assert np.abs(extractor.embed(bgr[0], channel_order="bgr") - expected_l2[0]).max() <= 1e-5


def test_exif_alpha_and_gray_behaviour(extractor: Extractor, reference_dir: Path) -> None:
    folder = reference_dir / "preprocess"
    # RGBA: alpha dropped without compositing -> identical to the landscape JPEG's pixels (reference README).
    assert np.array_equal(extractor.embed(folder / "img4_rgba.png"), extractor.embed(folder / "img2_landscape.jpg"))
    # EXIF orientation applied: same as rotating the stored pixels 90 degrees clockwise by hand.
    stored = cv2.imread(str(folder / "img5_exif_rot90.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    rotated = np.ascontiguousarray(cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE)[:, :, ::-1])
    assert np.abs(extractor.embed(folder / "img5_exif_rot90.jpg") - extractor.embed(rotated)).max() <= 1e-6
    # Grayscale file == grayscale 2-D array == the array replicated to 3 channels.
    gray = cv2.imread(str(folder / "img3_gray.png"), cv2.IMREAD_GRAYSCALE)
    want = extractor.embed(folder / "img3_gray.png")
    assert np.abs(extractor.embed(gray) - want).max() <= 1e-6
    assert np.abs(extractor.embed(np.repeat(gray[..., None], 3, 2)) - want).max() <= 1e-6


def test_pil_images(extractor: Extractor, preprocess_images: list[Path], expected_l2: np.ndarray) -> None:
    image = pytest.importorskip("PIL.Image")
    pils = [image.open(p) for p in preprocess_images]
    try:
        assert np.abs(extractor.embed(pils) - expected_l2).max() <= 1e-5
    finally:
        for img in pils:
            img.close()


def test_tiny_and_sixteen_bit_images(extractor: Extractor, tmp_path: Path) -> None:
    one = np.array([[[200, 30, 90]]], np.uint8)
    assert np.abs(extractor.embed(one) - reference_embedding(extractor, one)).max() <= 1e-5
    deep = (np.random.default_rng(0).integers(0, 65536, (50, 60, 3))).astype(np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), deep)
    want = reference_embedding(extractor, cv2.imread(str(path))[:, :, ::-1])
    assert np.abs(extractor.embed(path) - want).max() <= 1e-5


def test_huge_image(extractor: Extractor, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    huge = cv2.resize(small, (8000, 8000), interpolation=cv2.INTER_NEAREST)
    path = tmp_path / "huge.jpg"
    assert cv2.imwrite(str(path), huge)
    del huge
    got = extractor.embed(path)
    assert np.isfinite(got).all()
    assert np.abs(got - reference_embedding(extractor, cv2.imread(str(path))[:, :, ::-1])).max() <= 1e-5


def test_empty_sequence(extractor: Extractor) -> None:
    assert extractor.embed([]).shape == (0, 512)
    assert extractor.embed(iter([])).dtype == np.float32
    result = extractor.embed([], on_error="skip")
    assert isinstance(result, EmbedResult) and result.embeddings.shape == (0, 512) and result.ok


# ------------------------------------------------------------------------------------------------------------
# Bad inputs and errors


@pytest.fixture(scope="module")
def bad_inputs(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_bytes(b"hello, not an image\n")
    jpeg = (reference_dir / "preprocess" / "img0_square.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return {
        "missing": (folder / "missing.jpg", ImageNotFoundError),
        "empty": (folder / "empty.jpg", ImageDecodeError),
        "non-image": (folder / "text.jpg", ImageDecodeError),
        "truncated": (folder / "truncated.jpg", ImageDecodeError),
        "empty-bytes": (b"", ImageDecodeError),
        "float-array": (np.zeros((10, 10, 3), np.float32), InvalidInputError),
        "rgba-array": (np.zeros((10, 10, 4), np.uint8), InvalidInputError),
        "wrong-shape": (np.zeros((10, 10, 5), np.uint8), InvalidInputError),
        "none": (None, InvalidInputError),
    }


@pytest.mark.parametrize("kind", ["missing", "empty", "non-image", "truncated", "empty-bytes", "float-array",
                                  "rgba-array", "wrong-shape", "none"])
def test_each_bad_input_raises_a_typed_error_naming_it(extractor: Extractor, preprocess_images: list[Path],
                                                       bad_inputs: dict, kind: str) -> None:
    bad, error = bad_inputs[kind]
    with pytest.raises(error, match="^input 2 ") as info:
        extractor.embed([preprocess_images[0], preprocess_images[1], bad, preprocess_images[2]])
    assert info.value.__cause__ is not None
    if kind != "none":
        with pytest.raises(error):
            extractor.embed(bad)


def test_skip_loses_no_good_image(extractor: Extractor, preprocess_images: list[Path], bad_inputs: dict,
                                  expected_l2: np.ndarray) -> None:
    items: list = []
    good_positions: list[int] = []
    bads = list(bad_inputs.values())
    for i, path in enumerate(preprocess_images):  # interleave: bad ones on every batch boundary
        items.append(bads[i][0])
        good_positions.append(len(items))
        items.append(path)
    items += [b for b, _ in bads[len(preprocess_images):]]
    result = extractor.embed(items, batch_size=4, on_error="skip")
    assert isinstance(result, EmbedResult) and not result.ok
    assert result.indices.tolist() == good_positions
    assert np.abs(result.embeddings - expected_l2).max() <= 1e-5
    assert len(result.failed) == len(bads) == len(items) - len(good_positions)
    assert sorted(f.index for f in result.failed) == sorted(set(range(len(items))) - set(good_positions))
    by_index = {f.index: f for f in result.failed}
    assert by_index[0].error == "ImageNotFoundError" and "missing.jpg" in by_index[0].input
    assert all(f.reason for f in result.failed)


def test_skip_when_the_first_batch_is_all_bad_and_the_width_is_not_yet_known(
        reference_dir: Path, preprocess_images: list[Path], bad_inputs: dict) -> None:
    # The legacy export has no config.json: the embedding size is only known after a forward pass.
    fresh = Extractor.from_pretrained(reference_dir / "legacy_infer")
    assert fresh._embedding_size is None
    bads = [b for b, _ in bad_inputs.values()][:2]
    result = fresh.embed([*bads, *preprocess_images[:3]], batch_size=2, on_error="skip")
    assert result.embeddings.shape == (3, 512) and result.indices.tolist() == [2, 3, 4]
    batches = list(Extractor.from_pretrained(reference_dir / "legacy_infer").iter_embed(
        [*bads, preprocess_images[0]], batch_size=2, on_error="skip"))
    assert [b.embeddings.shape for b in batches] == [(0, 512), (1, 512)]


def test_skip_with_every_input_bad_and_single_input(extractor: Extractor, bad_inputs: dict) -> None:
    result = extractor.embed([b for b, _ in bad_inputs.values()], batch_size=3, on_error="skip")
    assert result.embeddings.shape == (0, 512) and len(result.failed) == len(bad_inputs)
    single = extractor.embed(b"", on_error="skip")
    assert single.embeddings.shape == (0, 512) and [f.index for f in single.failed] == [0]


def test_options_are_checked(extractor: Extractor, preprocess_images: list[Path]) -> None:
    with pytest.raises(TypeError):
        extractor.embed(preprocess_images, normalise=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Extractor.from_pretrained(preprocess_images[0].parent, devise="cpu")  # type: ignore[call-arg]
    for kwargs in ({"batch_size": 0}, {"batch_size": 2.5}, {"on_error": "ignore"}, {"channel_order": "rbg"},
                   {"num_workers": 0}):
        with pytest.raises(ConfigError):
            extractor.embed(preprocess_images, **kwargs)
    with pytest.raises(InvalidInputError, match="iterable"):
        extractor.embed(42)


def test_errors_when_loading(tmp_path: Path, exported_dir: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        Extractor.from_pretrained(tmp_path)  # an empty folder
    with pytest.raises(ConfigError, match="device"):
        Extractor.from_pretrained(exported_dir, device="tpu")
    if not paddle.device.is_compiled_with_cuda():
        with pytest.raises(DeviceError):
            Extractor.from_pretrained(exported_dir, device="gpu")
    with pytest.raises(ConfigError, match="fp16"):
        Extractor.from_pretrained(exported_dir, precision="fp16")


def test_offline_default_model_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHITU_FEATURES_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        Extractor.from_pretrained()
    assert "PP-ShiTuV2" in str(info.value) or "http" in str(info.value)


# ------------------------------------------------------------------------------------------------------------
# Normalisation


def test_l2_normalize_keeps_zero_rows_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]], np.float32)
    y, zero = l2_normalize(x)
    assert not np.isnan(y).any() and zero.tolist() == [False, True, False]
    assert np.allclose(y, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]])


class ZeroFeatures(paddle.nn.Layer):
    """A tiny model whose features are exactly zero (a zero-weight linear layer on the mean colour)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = paddle.nn.Linear(3, 512)
        for param in self.fc.parameters():
            param.set_value(np.zeros(param.shape, np.float32))

    def embed(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc(paddle.mean(x, axis=[2, 3]))


@pytest.fixture(scope="module")
def zero_extractor(tmp_path_factory: pytest.TempPathFactory) -> Extractor:
    """An extractor whose model outputs all-zero features (exported by the library like any model)."""
    from shitu_features.inference.export import export_inference_model

    folder = export_inference_model(ZeroFeatures(), tmp_path_factory.mktemp("zero") / "model", model_name="zero")
    return Extractor.from_pretrained(folder)


def test_all_zero_feature_does_not_become_nan(zero_extractor: Extractor, preprocess_images: list[Path]) -> None:
    with pytest.warns(ZeroNormWarning, match="zero norm"):
        got = zero_extractor.embed(preprocess_images[:3])
    assert got.shape == (3, 512) and not np.isnan(got).any() and not got.any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZeroNormWarning)
        result = zero_extractor.embed(preprocess_images[:3], on_error="skip")
        raw = zero_extractor.embed(preprocess_images[0], normalize=False)
    assert result.zero_norm == [0, 1, 2] and not raw.any()


def test_unnormalised_features_are_the_raw_bn_neck_output(extractor: Extractor, preprocess_images: list[Path],
                                                          expected_l2: np.ndarray) -> None:
    raw = extractor.embed(preprocess_images, normalize=False)
    assert np.linalg.norm(raw, axis=1).min() > 1.5  # not normalised
    assert np.abs(l2(raw) - expected_l2).max() <= 1e-5


# ------------------------------------------------------------------------------------------------------------
# Streaming, saving, properties


def test_streaming_consumes_the_input_lazily(extractor: Extractor, preprocess_images: list[Path]) -> None:
    consumed = 0

    def paths():
        nonlocal consumed
        for i in range(100):
            consumed += 1
            yield preprocess_images[i % len(preprocess_images)]

    stream = extractor.iter_embed(paths(), batch_size=4, prefetch=2)
    first = next(stream)
    assert first.indices.tolist() == [0, 1, 2, 3] and first.embeddings.shape == (4, 512)
    assert consumed <= 4 * 3  # the batch being returned, plus at most `prefetch` batches decoded ahead
    stream.close()  # stopping early cancels the pending work
    assert consumed <= 4 * 3


def test_paddle_decodes_between_forward_passes(extractor: Extractor, preprocess_images: list[Path]) -> None:
    # Paddle's run() holds the GIL, so the next batch is queued right after each forward pass (not before it),
    # and enough batches are queued to give every worker an image.
    assert not extractor.predictor.releases_gil
    consumed = 0

    def paths():
        nonlocal consumed
        for i in range(40):
            consumed += 1
            yield preprocess_images[i % len(preprocess_images)]

    for batch_size, workers, queued_at_first_result in ((4, 2, 8), (1, 2, 2), (1, 3, 3)):
        consumed = 0
        stream = extractor.iter_embed(paths(), batch_size=batch_size, num_workers=workers)
        first = next(stream)
        assert len(first.indices) == batch_size
        # batch 4: the first batch, plus the next one queued after its forward pass; batch 1: one image per worker,
        # decoded together, the second already waiting when the first result is returned
        assert consumed == queued_at_first_result, (batch_size, workers)
        stream.close()


def test_default_decode_workers_use_every_core_with_paddle(extractor: Extractor) -> None:
    from shitu_features.inference.predictor import physical_cpu_count

    assert extractor.num_workers == max(1, min(8, physical_cpu_count()))


def test_streamed_batches_equal_embed(extractor: Extractor, sixteen_inputs: list) -> None:
    batches = list(extractor.iter_embed(iter(sixteen_inputs), batch_size=6))
    assert [len(b.indices) for b in batches] == [6, 6, 4]
    stacked = np.concatenate([b.embeddings for b in batches])
    assert np.abs(stacked - extractor.embed(sixteen_inputs, batch_size=6)).max() == 0


def test_save_pretrained_round_trip(extractor: Extractor, legacy_extractor: Extractor, tmp_path: Path,
                                    preprocess_images: list[Path]) -> None:
    saved = extractor.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == [
        "config.json", "inference.json", "inference.pdiparams", "inference.yml"]
    reloaded = Extractor.from_pretrained(saved)
    assert reloaded.name == extractor.name and reloaded.preprocess_config == extractor.preprocess_config
    assert reloaded.embedding_size == 512
    assert np.abs(reloaded.embed(preprocess_images) - extractor.embed(preprocess_images)).max() <= 1e-6
    with pytest.raises(OutputExistsError):
        extractor.save_pretrained(saved)
    # A legacy model is saved in its own format, now with a config.json and an inference.yml.
    legacy_saved = legacy_extractor.save_pretrained(tmp_path / "legacy", overwrite=True)
    assert (legacy_saved / "inference.pdmodel").is_file() and (legacy_saved / "inference.pdiparams.info").is_file()
    assert (legacy_saved / "config.json").is_file()
    again = Extractor.from_pretrained(legacy_saved)
    assert np.abs(again.embed(preprocess_images[:2]) - legacy_extractor.embed(preprocess_images[:2])).max() == 0


def test_properties_and_repr(extractor: Extractor, legacy_extractor: Extractor) -> None:
    assert extractor.embedding_size == 512 and legacy_extractor.embedding_size == 512
    assert extractor.input_size == (224, 224) and extractor.device == "cpu"
    assert extractor.preprocess_config.scale == 0.00392157
    assert legacy_extractor.name == "legacy_infer" and legacy_extractor.source is not None
    text = repr(extractor)
    for part in ("Extractor(", "name='rec_model'", "device='cpu'", "embedding_size=512", "onednn=True"):
        assert part in text
    assert os.fspath(legacy_extractor.model_dir).endswith("legacy_infer")


def test_inference_yml_preprocessing_is_used(exported_dir: Path, tmp_path: Path,
                                             preprocess_images: list[Path]) -> None:
    # A PaddleX-style folder (json + pdiparams + yml, no config.json) takes its preprocessing from the yml.
    import shutil

    folder = tmp_path / "paddlex"
    folder.mkdir()
    for name in ("inference.json", "inference.pdiparams"):
        shutil.copy(exported_dir / name, folder / name)
    (folder / "inference.yml").write_text(
        "Global: {model_name: PP-ShiTuV2_rec}\nPreProcess:\n  transform_ops:\n"
        "  - ResizeImage: {size: [160, 160]}\n  - NormalizeImage: {scale: 1.0/255.0}\n  - ToCHWImage: null\n")
    loaded = Extractor.from_pretrained(folder)
    assert loaded.name == "PP-ShiTuV2_rec" and loaded.input_size == (160, 160)
    assert loaded.preprocess_config.scale == 1 / 255
    assert loaded.embed(preprocess_images[0]).shape == (512,)


def test_buffer_bytes_input(extractor: Extractor, preprocess_images: list[Path], expected_l2: np.ndarray) -> None:
    data = preprocess_images[1].read_bytes()
    for source in (bytearray(data), memoryview(data), io.BytesIO(data).getvalue()):
        assert np.abs(extractor.embed(source) - expected_l2[1]).max() <= 1e-5


def test_concurrent_embed_calls_share_one_extractor(extractor: Extractor, preprocess_images: list[Path],
                                                    expected_l2: np.ndarray) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: extractor.embed(preprocess_images, batch_size=2), range(3)))
    for got in results:
        assert np.abs(got - expected_l2).max() <= 1e-5


def test_progress_bar_and_iter_embed_input_check(extractor: Extractor, preprocess_images: list[Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    extractor.embed(preprocess_images, batch_size=2, show_progress=True)
    assert "6/6" in capsys.readouterr().err
    extractor.embed(preprocess_images, batch_size=2, show_progress=False)
    assert "6/6" not in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="iterable"):
        next(extractor.iter_embed(preprocess_images[0]))


def test_model_tar_over_http_is_downloaded_once_and_served_from_cache(
        exported_dir: Path, preprocess_images: list[Path], expected_l2: np.ndarray, tmp_path: Path,
        loopback_server: LoopbackServer) -> None:
    import tarfile

    archive = tmp_path / "model_infer.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(exported_dir, arcname="model_infer")
    url = loopback_server.add("/models/model_infer.tar", archive.read_bytes())
    first = Extractor.from_pretrained(url, cache_dir=tmp_path / "cache")
    assert loopback_server.hits["/models/model_infer.tar"] == 1
    loopback_server.stop()
    # The server is gone: the second load must come from the cache.
    second = Extractor.from_pretrained(url, cache_dir=tmp_path / "cache")
    assert second.model_dir == first.model_dir and first.source == url
    assert np.abs(second.embed(preprocess_images) - expected_l2).max() <= 1e-5
