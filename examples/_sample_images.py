"""Synthetic sample images for the examples: several "product" classes drawn with OpenCV and numpy.

The examples must run anywhere without shipping photos, so they draw their own: each class is a shape with its
own colour and texture on a cluttered background, and every image of a class varies in position, size, rotation,
brightness and background. Images are deterministic for a given seed (the same pixels on every machine).

Usage from an example (the examples folder is on ``sys.path`` when a script in it runs)::

    from _sample_images import make_sample_dataset
    paths, labels = make_sample_dataset("samples", per_class=4)   # samples/<class>/<i>.png

Or on the command line: ``python examples/_sample_images.py OUT_DIR [--per-class N] [--size PX]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

#: Class name -> (shape, BGR colour, texture). Distinct shapes *and* colours, so a good embedding separates them.
CLASSES: dict[str, tuple[str, tuple[int, int, int], str]] = {
    "red_circle": ("circle", (40, 40, 220), "plain"),
    "blue_square": ("square", (200, 90, 30), "stripes"),
    "green_triangle": ("triangle", (60, 180, 60), "plain"),
    "yellow_star": ("star", (30, 210, 230), "dots"),
    "purple_ring": ("ring", (170, 60, 150), "plain"),
    "orange_cross": ("cross", (20, 130, 250), "checker"),
}


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (int32 [K, 2]) of a regular shape centred at (cx, cy) with circumradius r, rotated by angle."""
    if shape == "square":
        k, radii = 4, [r]
    elif shape == "triangle":
        k, radii = 3, [r]
    elif shape == "star":
        k, radii = 10, [r, 0.45 * r]
    else:
        raise ValueError(shape)
    t = angle + np.arange(k) * 2 * np.pi / k
    rad = np.array([radii[i % len(radii)] for i in range(k)])
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1).round().astype(np.int32)


def _texture(kind: str, size: int, colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A BGR uint8 [size, size, 3] fill for a shape."""
    base = np.empty((size, size, 3), np.uint8)
    base[:] = colour
    if kind == "plain":
        return base
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(6, 10))
    if kind == "stripes":
        mask = ((xx + yy) // period) % 2 == 0
    elif kind == "checker":
        mask = ((xx // period) + (yy // period)) % 2 == 0
    else:  # dots
        mask = ((xx % period - period // 2) ** 2 + (yy % period - period // 2) ** 2) < (period // 3) ** 2
    base[mask] = (np.asarray(colour) * 0.45).astype(np.uint8)
    return base


def draw_sample(label: str, size: int = 128, seed: int = 0) -> np.ndarray:
    """Draw one image of class ``label``.

    Args:
        label: a key of :data:`CLASSES`.
        size: side length in pixels.
        seed: per-image seed; the same (label, size, seed) gives the same pixels.

    Returns:
        RGB ``uint8 [size, size, 3]``.
    """
    shape, colour, texture = CLASSES[label]
    rng = np.random.default_rng([seed, list(CLASSES).index(label)])
    # Background: a smooth random gradient plus noise and a few faint distractor lines.
    low = rng.integers(90, 200, size=3)
    high = rng.integers(90, 200, size=3)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
    img = (low + (high - low) * ramp).repeat(size, axis=0) + rng.normal(0, 8, (size, size, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(3):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(map(int, p1)), tuple(map(int, p2)), tuple(int(c) for c in rng.integers(60, 220, 3)), 1)

    r = size * rng.uniform(0.22, 0.34)
    cx, cy = size * rng.uniform(0.35, 0.65, 2)
    angle = rng.uniform(0, 2 * np.pi)
    mask = np.zeros((size, size), np.uint8)
    if shape == "circle":
        cv2.circle(mask, (int(cx), int(cy)), int(r), 255, -1, cv2.LINE_AA)
    elif shape == "ring":
        cv2.circle(mask, (int(cx), int(cy)), int(r), 255, max(3, int(r * 0.35)), cv2.LINE_AA)
    elif shape == "cross":
        w = max(3, int(r * 0.4))
        rot = cv2.getRotationMatrix2D((float(cx), float(cy)), float(np.degrees(angle)), 1.0)
        cv2.rectangle(mask, (int(cx - r), int(cy - w / 2)), (int(cx + r), int(cy + w / 2)), 255, -1)
        cv2.rectangle(mask, (int(cx - w / 2), int(cy - r)), (int(cx + w / 2), int(cy + r)), 255, -1)
        mask = cv2.warpAffine(mask, rot, (size, size))
    else:
        cv2.fillPoly(mask, [_polygon(shape, cx, cy, r, angle)], 255, cv2.LINE_AA)
    fill = _texture(texture, size, colour, rng)
    gain = rng.uniform(0.8, 1.2)
    fill = np.clip(fill.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    img = (img * (1 - alpha) + fill * alpha).astype(np.uint8)
    return np.ascontiguousarray(img[:, :, ::-1])  # BGR drawing -> RGB, the order Extractor.embed expects


def make_sample_dataset(root: str | Path, *, per_class: int = 4, size: int = 128, seed: int = 0,
                        classes: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """Write ``root/<class>/<i>.png`` for each class (the folder-per-class layout).

    Args:
        root: output folder (created; existing files of the same names are overwritten).
        per_class: images per class.
        size: side length in pixels.
        seed: base seed; image ``i`` of every class uses ``seed * 1000 + i``.
        classes: a subset of :data:`CLASSES` (default: all of them, in their order).

    Returns:
        ``(paths, labels)``: the written files and their class names, class by class.
    """
    root = Path(root)
    paths: list[Path] = []
    labels: list[str] = []
    for label in classes or list(CLASSES):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{i}.png"
            rgb = draw_sample(label, size=size, seed=seed * 1000 + i)
            if not cv2.imwrite(str(path), rgb[:, :, ::-1]):
                raise OSError(f"could not write {path}")
            paths.append(path)
            labels.append(label)
    return paths, labels


def main() -> None:
    parser = argparse.ArgumentParser(description="Write synthetic folder-per-class sample images.")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--per-class", type=int, default=4, help="images per class (default 4)")
    parser.add_argument("--size", type=int, default=128, help="side length in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths, labels = make_sample_dataset(args.out, per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"wrote {len(paths)} images of {len(set(labels))} classes under {args.out}")


if __name__ == "__main__":
    main()
