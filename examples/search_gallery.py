"""Image-to-image search: build a gallery from labelled images, search it with query images, report Recall@1.

    python examples/search_gallery.py                      # generated sample images (6 classes)
    python examples/search_gallery.py catalogue/           # catalogue/<label>/<image>, one folder per label

Each label's first image goes to the query set and the rest to the gallery (a label with one image only is
gallery-only). Every query is searched among the gallery; its top hit is correct when the label matches.
Recall@1 is the fraction of queries whose top hit is correct, computed with
``shitu_features.evaluation.retrieval_metrics``. ``--model`` / ``SHITU_FEATURES_EXAMPLE_MODEL`` choose the
model as in ``embed_folder.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from embed_folder import MODEL_ENV, list_images, load_extractor

from shitu_features import Gallery, retrieval_metrics


def split_folder(root: Path) -> tuple[list[Path], list[str], list[Path], list[str]]:
    """Query (first image of each label) and gallery (the others) from a folder-per-label tree."""
    query, query_labels, gallery, gallery_labels = [], [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = list_images(folder)
        if len(images) >= 2:
            query.append(images[0])
            query_labels.append(folder.name)
            images = images[1:]
        gallery += images
        gallery_labels += [folder.name] * len(images)
    return query, query_labels, gallery, gallery_labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Search a small gallery and print Recall@1.")
    parser.add_argument("root", nargs="?", type=Path, help="folder with one sub-folder of images per label; "
                        "default: generated sample images")
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV),
                        help=f"model name, folder, .pdparams or URL (default: ${MODEL_ENV}, else PP-ShiTuV2)")
    parser.add_argument("-k", type=int, default=3, help="results shown per query")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            from _sample_images import make_sample_dataset

            root = Path(tmp) / "samples"
            make_sample_dataset(root, per_class=4)
        query, query_labels, gallery_paths, gallery_labels = split_folder(root)
        if not query or not gallery_paths:
            raise SystemExit(f"error: {root} needs sub-folders with at least 2 images each")

        extractor = load_extractor(args.model)
        gallery = Gallery(dim=extractor.embedding_size, extractor=extractor)
        gallery.add(gallery_paths, labels=gallery_labels, metadata=[{"path": p.name} for p in gallery_paths])
        query_vectors = extractor.embed(query)             # float32 [Q, 512]
        scores, labels, _ids = gallery.search(query_vectors, k=args.k)   # [Q, k] each, best first

    print(f"gallery: {len(gallery)} images of {len(set(gallery_labels))} labels; {len(query)} queries")
    for path, truth, row_scores, row_labels in zip(query, query_labels, scores, labels):
        hits = ", ".join(f"{label} {score:.3f}" for label, score in zip(row_labels, row_scores) if label is not None)
        print(f"  {truth}/{path.name}: {'ok ' if row_labels[0] == truth else 'MISS'} {hits}")

    metrics = retrieval_metrics(query_vectors, np.array(query_labels), gallery.vectors, np.array(gallery.labels),
                                topk=(1, args.k))
    print(f"Recall@1: {metrics['recall@1']:.3f}  Recall@{args.k}: {metrics[f'recall@{args.k}']:.3f}  "
          f"mAP: {metrics['mAP']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
