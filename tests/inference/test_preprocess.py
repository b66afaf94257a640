"""Preprocessing: bit-exact with the reference deploy tensors; inference.yml / config.json round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shitu_features.data.images import DecodedImage, decode_image, load_image
from shitu_features.errors import ConfigError
from shitu_features.inference.preprocess import PreprocessConfig, Preprocessor, parse_scale, preprocess

# The PaddleX inference.yml of PP-ShiTuV2_rec as spec §11.1.3 reconstructs it.
PADDLEX_YML = """
Global: {model_name: PP-ShiTuV2_rec}
PreProcess:
  transform_ops:
    - ResizeImage: {size: [224, 224], return_numpy: false, interpolation: bilinear, backend: cv2}
    - NormalizeImage: {scale: 0.00392156862745098, mean: [0.485,0.456,0.406], std: [0.229,0.224,0.225],
                       order: hwc, channel_num: 3}
    - ToCHWImage: null
PostProcess:
  NormalizeFeatures: null
"""


@pytest.fixture(scope="module")
def expected_input(reference_dir: Path) -> np.ndarray:
    return np.load(reference_dir / "preprocess" / "expected_input.npy", allow_pickle=False)


def test_preprocessor_reproduces_expected_input_exactly(preprocess_images: list[Path],
                                                        expected_input: np.ndarray) -> None:
    pre = Preprocessor()
    batch = np.empty((len(preprocess_images), *pre.output_shape), np.float32)
    for row, path in enumerate(preprocess_images):
        pre(decode_image(path), out=batch[row])
    assert np.array_equal(batch, expected_input)  # acceptance asks <= 1e-5; it is exact


def test_arithmetic_restatement_also_exact(preprocess_images: list[Path], expected_input: np.ndarray) -> None:
    for row, path in enumerate(preprocess_images):
        assert np.array_equal(preprocess(load_image(path)), expected_input[row])


def test_lookup_table_equals_arithmetic_for_every_layout() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    for config in (PreprocessConfig(), PreprocessConfig(size=(96, 64), scale=1 / 255, interpolation="area")):
        pre = Preprocessor(config)
        want = preprocess(rgb, config)
        assert want.shape == (3, config.size[1], config.size[0])  # size is (width, height)
        assert np.array_equal(pre(DecodedImage(rgb, "rgb")), want)
        assert np.array_equal(pre(DecodedImage(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr")), want)
        assert np.array_equal(pre(DecodedImage(gray, "gray")), preprocess(np.repeat(gray[..., None], 3, 2), config))


def test_writes_into_batch_rows_and_non_contiguous_outputs() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    pre = Preprocessor()
    want = preprocess(rgb)
    batch = np.zeros((2, 3, 224, 224), np.float32)
    row = batch[1]
    assert pre(DecodedImage(rgb, "rgb"), out=row) is row
    assert np.array_equal(batch[1], want) and not batch[0].any()  # written in place, the other row untouched
    strided = np.zeros((3, 224, 448), np.float32)[:, :, ::2]  # a view OpenCV cannot write into directly
    pre(DecodedImage(rgb, "rgb"), out=strided)
    assert np.array_equal(strided, want)


def test_bgr_model_config_feeds_bgr() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    bgr_model = PreprocessConfig(channel_order="bgr", mean=(0.406, 0.456, 0.485), std=(0.225, 0.224, 0.229))
    got = Preprocessor(bgr_model)(DecodedImage(rgb, "rgb"))
    assert np.array_equal(got, preprocess(rgb, PreprocessConfig())[::-1])


def test_scale_one_over_255_differs_negligibly(preprocess_images: list[Path], expected_input: np.ndarray) -> None:
    pre = Preprocessor(PreprocessConfig(scale=1 / 255))
    diff = max(float(np.abs(pre(decode_image(p)) - expected_input[i]).max()) for i, p in enumerate(preprocess_images))
    assert 0 < diff <= 2e-6  # reference/README: the 1/255 eval pipeline differs by at most 1.2e-6


def test_paddlex_inference_yml(tmp_path: Path) -> None:
    path = tmp_path / "inference.yml"
    path.write_text(PADDLEX_YML)
    config = PreprocessConfig.from_inference_yml(path)
    assert config.size == (224, 224) and config.interpolation == "bilinear" and config.channel_order == "rgb"
    assert config.scale == pytest.approx(1 / 255, abs=1e-15)
    assert config.mean == (0.485, 0.456, 0.406) and config.std == (0.229, 0.224, 0.225)


def test_inference_yml_round_trip_and_variants() -> None:
    config = PreprocessConfig(size=(256, 128), interpolation="bicubic", scale=0.5)
    assert PreprocessConfig.from_inference_yml(config.to_inference_yml("m")) == config
    assert PreprocessConfig.from_inference_yml(PreprocessConfig().to_inference_yml()) == PreprocessConfig()
    ops = {"PreProcess": {"transform_ops": [
        {"DecodeImage": {"to_rgb": False, "channel_first": False}},
        {"ResizeImage": {"size": 160, "interpolation": "linear"}},
        {"NormalizeImage": {"scale": "1.0/255.0", "order": ""}},
        "ToCHWImage",
    ]}}
    config = PreprocessConfig.from_inference_yml(ops)
    assert config.size == (160, 160) and config.channel_order == "bgr" and config.interpolation == "bilinear"
    assert config.scale == 1 / 255


@pytest.mark.parametrize(
    ("ops", "match"),
    [
        ([{"ResizeImage": {"resize_short": 256}}, {"CropImage": {"size": 224}}, "ToCHWImage"], "resize_short"),
        ([{"ResizeImage": {"size": 224}}, {"CropImage": {"size": 224}}, "ToCHWImage"], "CropImage"),
        ([{"ResizeImage": {"size": 224}}, {"NormalizeImage": {}}], "ToCHWImage"),
        ([{"ResizeImage": {"size": 224, "backend": "pil"}}, "ToCHWImage"], "backend"),
        ([{"ResizeImage": {"size": 224, "interpolation": "magic"}}, "ToCHWImage"], "interpolation"),
        ([{"NormalizeImage": {"order": "chw"}}, "ToCHWImage"], "order"),
        ([{"NormalizeImage": {"scale": "__import__('os').getcwd()"}}, "ToCHWImage"], "NormalizeImage"),
        ([{"NormalizeImage": {"std": [0, 1, 1]}}, "ToCHWImage"], "std"),
        ([{"ResizeImage": {"size": 224}, "ToCHWImage": None}], "malformed"),
    ],
)
def test_unsupported_preprocessing_is_refused(ops: list, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PreprocessConfig.from_inference_yml({"PreProcess": {"transform_ops": ops}})


def test_unreadable_yml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        PreprocessConfig.from_inference_yml(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("PreProcess: [unclosed")
    with pytest.raises(ConfigError, match="cannot read"):
        PreprocessConfig.from_inference_yml(bad)
    empty = tmp_path / "empty.yml"
    empty.write_text("Global: {model_name: x}\n")
    with pytest.raises(ConfigError, match="transform_ops"):
        PreprocessConfig.from_inference_yml(empty)


def test_parse_scale() -> None:
    assert parse_scale(0.5) == 0.5 and parse_scale("0.00392157") == 0.00392157 and parse_scale("1/255") == 1 / 255
    for bad in ("1/255; import os", "eval('1')", True, None):
        with pytest.raises(ValueError):
            parse_scale(bad)


def test_config_validation_and_json_round_trip() -> None:
    config = PreprocessConfig(size=(320, 240))
    assert PreprocessConfig.model_validate_json(config.model_dump_json()) == config
    for bad in ({"size": (0, 224)}, {"scale": -1.0}, {"unknown": 1}):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)
