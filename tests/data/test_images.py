"""Image decoding: every input kind gives the pixels the reference's ``cv2.imread(path)[:, :, ::-1]`` gives."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from shitu_features.data.images import (
    DecodedImage,
    decode_bytes,
    decode_image,
    describe_input,
    is_single_image,
    jpeg_is_truncated,
    load_image,
)
from shitu_features.errors import ImageDecodeError, ImageNotFoundError, InvalidInputError, ShituFeaturesError


def reference_rgb(path: Path) -> np.ndarray:
    """The reference decode (spec §5.1 step 1): cv2.imread with default flags, then BGR -> RGB."""
    bgr = cv2.imread(str(path))
    assert bgr is not None
    return bgr[:, :, ::-1]


@pytest.fixture(scope="module")
def pre_dir(reference_dir: Path) -> Path:
    return reference_dir / "preprocess"


@pytest.fixture(scope="module")
def ref_names(pre_dir: Path) -> list[str]:
    return (pre_dir / "images.txt").read_text().split()


def test_paths_bytes_and_pathlike_match_cv2_imread(pre_dir: Path, ref_names: list[str]) -> None:
    for name in ref_names:
        path = pre_dir / name
        want = reference_rgb(path)
        for source in (path, str(path), path.read_bytes(), bytearray(path.read_bytes())):
            got = load_image(source)
            assert got.dtype == np.uint8 and got.shape == want.shape, name
            assert np.array_equal(got, want), name


def test_reference_quirks_exif_alpha_gray(pre_dir: Path) -> None:
    # EXIF Orientation=6: stored 348 wide x 464 high, rotated 90 degrees clockwise -> 464 wide x 348 high.
    assert load_image(pre_dir / "img5_exif_rot90.jpg").shape == (348, 464, 3)
    # RGBA: alpha dropped without compositing, so the pixels equal the landscape JPEG's source pixels...
    rgba = cv2.imread(str(pre_dir / "img4_rgba.png"), cv2.IMREAD_UNCHANGED)
    assert rgba.shape[2] == 4 and rgba[..., 3].min() == 0  # (really transparent somewhere)
    assert np.array_equal(load_image(pre_dir / "img4_rgba.png"), rgba[:, :, 2::-1])
    # Grayscale: three identical channels.
    gray = load_image(pre_dir / "img3_gray.png")
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_encoded_inputs_stay_bgr_until_resized(pre_dir: Path) -> None:
    decoded = decode_image(pre_dir / "img0_square.jpg")
    assert decoded.order == "bgr"
    assert np.array_equal(decoded.to_rgb(), reference_rgb(pre_dir / "img0_square.jpg"))


# ------------------------------------------------------------------------------------------------------------
# numpy arrays


def test_rgb_array_passes_through_unchanged() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert load_image(arr) is arr


def test_bgr_array_with_channel_order() -> None:
    arr = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(load_image(arr[:, :, ::-1], channel_order="bgr"), arr)


@pytest.mark.parametrize("shape", [(6, 9), (6, 9, 1)])
def test_grayscale_array_replicated_like_a_gray_file(shape: tuple[int, ...]) -> None:
    gray = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    ok, png = cv2.imencode(".png", gray)
    assert ok
    assert np.array_equal(load_image(gray), load_image(png.tobytes()))


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((4, 4, 3), np.uint16), "uint8"),
        (np.zeros((4, 4, 4), np.uint8), "alpha"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4,), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
    ],
)
def test_bad_arrays_are_refused_with_typed_errors(arr: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        load_image(arr)


def test_invalid_channel_order_and_types() -> None:
    with pytest.raises(InvalidInputError, match="channel_order"):
        load_image(np.zeros((2, 2, 3), np.uint8), channel_order="rbg")  # type: ignore[arg-type]
    for bad in (None, 3, 1.5, {"a": 1}):
        with pytest.raises(InvalidInputError, match="unsupported image input"):
            load_image(bad)


# ------------------------------------------------------------------------------------------------------------
# Broken files


def test_missing_file_is_also_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError, match="not found") as info:
        load_image(tmp_path / "nope.jpg")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ShituFeaturesError)
    with pytest.raises(ImageNotFoundError, match="directory"):
        load_image(tmp_path)


def test_empty_file_and_non_image_bytes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"")
    text = tmp_path / "notes.jpg"
    text.write_bytes(b"this is not an image at all\n" * 10)
    with pytest.raises(ImageDecodeError, match="could not decode"):
        load_image(text)


def test_truncated_jpeg_is_detected(pre_dir: Path) -> None:
    data = (pre_dir / "img0_square.jpg").read_bytes()
    assert not jpeg_is_truncated(data)
    for cut in (len(data) - 2, len(data) // 2, 1000):
        assert jpeg_is_truncated(data[:cut]), cut
        with pytest.raises(ImageDecodeError, match="truncated JPEG"):
            load_image(data[:cut])
    # With allow_truncated the decoder decides: OpenCV 4 returns a partly grey image, OpenCV 5 fails. Either
    # way: pixels or a typed error, never a crash.
    try:
        img = load_image(data[: len(data) // 2], allow_truncated=True)
        assert img.shape == (348, 348, 3)
    except ImageDecodeError:
        pass


def test_truncation_check_ignores_trailers_and_header_eoi_markers(pre_dir: Path) -> None:
    data = (pre_dir / "img0_square.jpg").read_bytes()
    # Data after the end-of-image marker (some cameras append a trailer) is fine.
    assert not jpeg_is_truncated(data + b"TRAILER" * 100)
    assert np.array_equal(load_image(data + b"TRAILER"), load_image(data))
    # An FF D9 inside a header segment (e.g. an EXIF thumbnail) must not hide a truncated scan.
    payload = b"Exif\x00\x00" + b"\xff\xd8thumb\xff\xd9" * 3
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    with_thumb = data[:2] + app1 + data[2:]
    assert np.array_equal(load_image(with_thumb), load_image(data))
    assert jpeg_is_truncated(with_thumb[: len(with_thumb) // 2])
    # Not a JPEG: the check does not judge.
    assert not jpeg_is_truncated(b"\x89PNG\r\n\x1a\n")


def test_truncated_png_is_a_typed_error(pre_dir: Path) -> None:
    data = (pre_dir / "img3_gray.png").read_bytes()
    with pytest.raises(ImageDecodeError):
        load_image(data[: len(data) // 2])


def test_one_pixel_image() -> None:
    ok, png = cv2.imencode(".png", np.array([[[10, 20, 30]]], np.uint8))
    assert ok
    assert load_image(png.tobytes()).tolist() == [[[30, 20, 10]]]


def test_sixteen_bit_png_keeps_the_high_byte_like_cv2(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    deep = rng.integers(0, 65536, (12, 10, 3), dtype=np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), deep)
    got = load_image(path)
    assert got.dtype == np.uint8
    assert np.array_equal(got, (deep >> 8).astype(np.uint8)[:, :, ::-1])
    assert np.array_equal(got, reference_rgb(path))


def test_huge_image_decodes_without_extra_full_size_copies(tmp_path: Path) -> None:
    img = np.zeros((8000, 8000, 3), np.uint8)
    img[::50] = 255
    ok, jpg = cv2.imencode(".jpg", img)
    assert ok
    del img
    path = tmp_path / "huge.jpg"
    path.write_bytes(jpg.tobytes())
    del jpg
    tracemalloc.start()
    try:
        decoded = decode_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded.pixels.shape == (8000, 8000, 3)
    # One decoded image (192 MB) plus the file's bytes; an RGB copy or a float conversion would double it.
    assert peak < 8000 * 8000 * 3 + path.stat().st_size + 16e6


# ------------------------------------------------------------------------------------------------------------
# PIL images


@pytest.fixture(scope="module")
def pil():
    return pytest.importorskip("PIL.Image")


def test_pil_matches_cv2_on_reference_images(pil, pre_dir: Path, ref_names: list[str]) -> None:
    for name in ref_names:
        with pil.open(pre_dir / name) as img:
            got = load_image(img)
        assert np.array_equal(got, reference_rgb(pre_dir / name)), name


def test_pil_exif_transpose_applied(pil, pre_dir: Path) -> None:
    with pil.open(pre_dir / "img5_exif_rot90.jpg") as img:
        assert img.size == (348, 464)  # PIL itself does not rotate
        assert load_image(img).shape == (348, 464, 3)


def _png_roundtrip(pil, img) -> tuple[np.ndarray, object]:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    data = buf.getvalue()
    return load_image(data), pil.open(io.BytesIO(data))


def test_pil_palette_la_and_sixteen_bit_modes_match_cv2(pil) -> None:
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    palette = pil.fromarray(rgb).convert("P", palette=pil.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    la = pil.fromarray(rgb[:, :, 0]).convert("LA")
    deep = pil.fromarray(rng.integers(0, 65536, (20, 30), dtype=np.uint16))
    assert deep.mode.startswith("I")
    for img in (palette, la, deep):
        via_cv2, reopened = _png_roundtrip(pil, img)
        assert np.array_equal(load_image(reopened), via_cv2), img.mode
        assert np.array_equal(load_image(img), via_cv2), img.mode


def test_pil_rgba_drops_alpha_without_compositing(pil) -> None:
    rgba = np.random.default_rng(5).integers(0, 256, (8, 9, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: compositing on white/black would change every pixel
    assert np.array_equal(load_image(pil.fromarray(rgba, "RGBA")), rgba[..., :3])


def test_pil_float_mode_and_broken_file(pil, pre_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="'F'"):
        load_image(pil.fromarray(np.zeros((3, 3), np.float32)))
    data = (pre_dir / "img0_square.jpg").read_bytes()
    broken = pil.open(io.BytesIO(data[: len(data) // 2]))
    with pytest.raises(ImageDecodeError):
        load_image(broken)


# ------------------------------------------------------------------------------------------------------------
# Helpers


def test_is_single_image_and_describe_input(pil) -> None:
    assert is_single_image("a.jpg") and is_single_image(Path("a.jpg")) and is_single_image(b"xx")
    assert is_single_image(np.zeros((2, 2, 3), np.uint8)) and is_single_image(np.zeros((2, 2), np.uint8))
    assert not is_single_image(np.zeros((1, 2, 2, 3), np.uint8))
    assert not is_single_image(["a.jpg"]) and not is_single_image(iter([]))
    assert is_single_image(pil.new("RGB", (2, 2)))
    assert describe_input("a.jpg") == "'a.jpg'"
    assert describe_input(b"abc") == "<bytes: 3 bytes>"
    assert describe_input(np.zeros((2, 3), np.int16)) == "<ndarray shape=(2, 3) dtype=int16>"
    assert describe_input(pil.new("L", (4, 5))) == "<PIL.Image mode=L size=4x5>"
    assert len(describe_input("x" * 1000)) == 200


def test_decode_bytes_returns_bgr(pre_dir: Path) -> None:
    decoded = decode_bytes((pre_dir / "img2_landscape.jpg").read_bytes())
    assert isinstance(decoded, DecodedImage) and decoded.order == "bgr"
    assert np.array_equal(decoded.pixels, cv2.imread(str(pre_dir / "img2_landscape.jpg")))
