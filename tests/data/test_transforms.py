"""Training / eval transforms (spec §5.3): each op against an independent restatement or Paddle's own function."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from shitu_features.data import (
    Compose,
    NormalizeImage,
    Pad,
    RandCropImageV2,
    RandFlipImage,
    RandomRotation,
    ResizeImage,
    build_transforms,
    eval_transform,
    train_transform,
)
from shitu_features.data.images import load_image
from shitu_features.errors import ConfigError, InvalidInputError
from shitu_features.inference.preprocess import PreprocessConfig, preprocess


@pytest.fixture(scope="module")
def image(reference_dir: Path) -> np.ndarray:
    return load_image(reference_dir / "preprocess" / "img1_portrait.jpg")  # 348 x 464, real photo


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_eval_transform_is_the_inference_preprocessing_bit_for_bit(reference_dir: Path) -> None:
    root = reference_dir / "preprocess"
    names = (root / "images.txt").read_text().split()
    expected = np.load(root / "expected_input.npy", allow_pickle=False)
    transform = eval_transform()
    for k, name in enumerate(names):
        img = load_image(root / name)
        out = transform(img)
        assert out.dtype == np.float32 and out.shape == (3, 224, 224)
        np.testing.assert_array_equal(out, preprocess(img))
        np.testing.assert_array_equal(out, expected[k])  # the reference deploy tensors, exactly


def test_eval_transform_follows_a_custom_config(image: np.ndarray) -> None:
    config = PreprocessConfig(size=(160, 128), scale=1.0 / 255.0)
    out = eval_transform(config)(image)
    assert out.shape == (3, 128, 160)
    np.testing.assert_array_equal(out, preprocess(image, config))


def test_resize_ignores_aspect(image: np.ndarray) -> None:
    out = ResizeImage([200, 100])(image)
    assert out.shape == (100, 200, 3)
    np.testing.assert_array_equal(out, cv2.resize(image, (200, 100), interpolation=cv2.INTER_LINEAR))


def test_flip_is_seeded_and_happens_about_half_the_time(image: np.ndarray) -> None:
    flip = RandFlipImage(1)
    flipped = [not np.array_equal(flip(image, _rng(s)), image) for s in range(200)]
    assert 70 < sum(flipped) < 130
    s = flipped.index(True)
    np.testing.assert_array_equal(flip(image, _rng(s)), image[:, ::-1])
    assert [not np.array_equal(flip(image, _rng(t)), image) for t in range(200)] == flipped


def test_pad_adds_a_zero_border(image: np.ndarray) -> None:
    out = Pad(10)(image)
    assert out.shape == (image.shape[0] + 20, image.shape[1] + 20, 3)
    np.testing.assert_array_equal(out[10:-10, 10:-10], image)
    assert out[:10].max() == 0 and out[:, -10:].max() == 0


def test_rand_crop_v2_offsets_are_inclusive_with_the_off_by_one() -> None:
    # each pixel stores its own row / column, so a crop reveals where it started
    rows, cols = np.mgrid[0:244, 0:244]
    img = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    crop = RandCropImageV2([224, 224])
    tops, lefts, shapes = set(), set(), set()
    for s in range(800):
        out = crop(img, _rng(s))
        top, left = int(out[0, 0, 0]), int(out[0, 0, 1])
        tops.add(top)
        lefts.add(left)
        shapes.add(out.shape[:2])
        assert out.shape[0] == (223 if top == 21 else 224) and out.shape[1] == (223 if left == 21 else 224)
    assert tops == set(range(22)) and lefts == set(range(22))  # random.randint(0, 244 - 224 + 1) is inclusive
    assert {(223, 224), (224, 223), (224, 224)} <= shapes
    same = np.zeros((224, 224, 3), np.uint8)
    assert crop(same, _rng(0)) is same


def test_random_rotation_equals_paddle_rotate(image: np.ndarray) -> None:
    from paddle.vision.transforms import functional as PF  # the op the reference's RandomRotation calls

    rotation = RandomRotation(degrees=90, prob=0.5, interpolation="bilinear")
    rotated = 0
    for s in range(12):
        draw = _rng(s)
        gate = draw.random() < 0.5
        expected = PF.rotate(image, draw.uniform(-90, 90), "bilinear") if gate else image
        out = rotation(image, _rng(s))
        assert out.shape == image.shape
        np.testing.assert_array_equal(out, expected)
        rotated += gate
    assert 0 < rotated < 12


def test_normalize_is_the_reference_arithmetic(image: np.ndarray) -> None:
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 1, 3)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 1, 3)
    expected = ((image.astype("float32") * np.float32(1.0 / 255.0) - mean) / std).transpose(2, 0, 1)
    out = NormalizeImage(scale="1.0/255.0")(image)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(NormalizeImage(chw=False)(image), expected.transpose(1, 2, 0))
    # every uint8 value in every channel (the op looks values up in a table)
    ramp = np.stack([np.arange(256), np.arange(256)[::-1], (np.arange(256) * 7) % 256], -1).astype(np.uint8)[None]
    expected = ((ramp.astype("float32") * np.float32(1.0 / 255.0) - mean) / std).transpose(2, 0, 1)
    np.testing.assert_array_equal(NormalizeImage()(ramp), expected)


def test_train_transform_order_shape_and_seeding(image: np.ndarray) -> None:
    t = train_transform(224, seed=0)
    names = [type(op).__name__ for op in t.transforms]
    assert names == ["ResizeImage", "RandFlipImage", "Pad", "RandCropImageV2", "RandomRotation", "ResizeImage",
                     "NormalizeImage"]
    a, b, c = t(image, _rng(5)), t(image, _rng(5)), t(image, _rng(6))
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # the fallback generator is seeded too: two transforms with one seed give the same sequence
    u, v = train_transform(96, seed=3), train_transform(96, seed=3)
    for _ in range(3):
        np.testing.assert_array_equal(u(image), v(image))


def test_reference_yaml_transform_ops_build_the_recipe(reference_dir: Path, image: np.ndarray) -> None:
    spec = yaml.safe_load((reference_dir.parent / "spec" / "GeneralRecognitionV2_PPLCNetV2_base.yaml").read_text())
    built = build_transforms(spec["DataLoader"]["Train"]["dataset"]["transform_ops"])
    recipe = train_transform(224)
    for s in range(4):
        np.testing.assert_array_equal(built(image, _rng(s)), recipe(image, _rng(s)))
    eval_ops = build_transforms(spec["DataLoader"]["Eval"]["Query"]["dataset"]["transform_ops"])
    # training-time eval uses scale 1/255, the deploy config 0.00392157: within 1.2e-6 (reference README)
    np.testing.assert_allclose(eval_ops(image), eval_transform()(image), rtol=0, atol=2e-6)


def test_errors() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="rng"):
        RandFlipImage()(img)
    with pytest.raises(InvalidInputError, match="smaller"):
        RandCropImageV2(16)(img, _rng(0))
    with pytest.raises(ConfigError, match="did you mean"):
        build_transforms([{"ResizeImg": {"size": 4}}])
    with pytest.raises(ConfigError, match="backend"):
        ResizeImage(4, backend="pil")
    with pytest.raises(ConfigError, match="does not accept"):
        build_transforms([{"Pad": {"padding": 2, "mode": "reflect"}}])
    with pytest.raises(ConfigError, match="scale"):
        NormalizeImage(scale="__import__('os')")
    assert isinstance(build_transforms([]), Compose)
