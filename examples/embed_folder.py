"""Embed every image in a folder with PP-ShiTuV2 and save the vectors.

    python examples/embed_folder.py photos/ -o embeddings.npy     # your images
    python examples/embed_folder.py                               # generated sample images

The model is the official PP-ShiTuV2 (downloaded once, then cached) unless ``--model`` (or the
``SHITU_FEATURES_EXAMPLE_MODEL`` environment variable) names another one: an exported folder, a ``.pdparams``
checkpoint or a URL. Offline, point it at a local copy, e.g. ``--model ~/models/PP-ShiTuV2_rec_infer``.

Writes ``OUT`` (float32 [N, 512], one L2-normalised row per image) and ``OUT.paths.txt`` (the image of each row);
unreadable files are skipped and listed. The same job from the shell: ``shitu-features embed photos/ -o OUT``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from shitu_features import Extractor
from shitu_features.data import IMAGE_EXTENSIONS
from shitu_features.errors import DownloadError, OfflineError

MODEL_ENV = "SHITU_FEATURES_EXAMPLE_MODEL"


def load_extractor(model: str | None) -> Extractor:
    """The extractor for ``model`` (None = the official one); exits with advice when the weights cannot be fetched."""
    try:
        return Extractor.from_pretrained(model)
    except (OfflineError, DownloadError) as exc:
        sys.exit(f"error: {exc}\n\nNo network? Download the model elsewhere and point this example at it: "
                 f"--model /path/to/PP-ShiTuV2_rec_infer (or set {MODEL_ENV}).")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted (the extensions of ``shitu_features.data``)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Embed every image in a folder.")
    parser.add_argument("folder", nargs="?", type=Path,
                        help="folder of images (searched recursively); default: generated sample images")
    parser.add_argument("-o", "--output", type=Path, default=Path("embeddings.npy"), help="output .npy file")
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV),
                        help=f"model name, folder, .pdparams or URL (default: ${MODEL_ENV}, else PP-ShiTuV2)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            from _sample_images import make_sample_dataset

            folder = Path(tmp) / "samples"
            make_sample_dataset(folder, per_class=3)
            print(f"no folder given: embedding generated sample images ({folder})")
        paths = list_images(folder)
        if not paths:
            sys.exit(f"error: no images under {folder} (extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")

        extractor = load_extractor(args.model)
        print(f"model: {extractor.name} from {extractor.model_dir}")
        result = extractor.embed(paths, batch_size=args.batch_size, on_error="skip")  # EmbedResult
        for failure in result.failed:
            print(f"skipped {failure.input}: {failure.reason}")
        kept = [paths[i] for i in result.indices]

    vectors = result.embeddings                           # float32 [N, 512], unit rows
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, vectors)
    Path(str(args.output) + ".paths.txt").write_text("".join(f"{p}\n" for p in kept), encoding="utf-8")
    print(f"embedded {len(kept)} of {len(paths)} images -> {args.output} {vectors.shape} {vectors.dtype}")
    if len(kept) >= 2:
        sims = vectors @ vectors.T                        # cosine similarities
        np.fill_diagonal(sims, -np.inf)
        i, j = np.unravel_index(np.argmax(sims), sims.shape)
        print(f"most similar pair: {kept[i].parent.name}/{kept[i].name} ~ {kept[j].parent.name}/{kept[j].name} "
              f"(cosine {sims[i, j]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
