"""``shitu-features gallery build|search``: embed a labelled catalogue into a gallery file; recognize new images."""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

import numpy as np

from shitu_features.cli._common import (
    add_model_options,
    add_subcommand,
    expand_inputs,
    labelled_folder,
    load_extractor,
    positive_int,
    read_labelled_list,
    say,
)
from shitu_features.cli._embedding import embed_and_report

_DESCRIPTION = """\
Recognition: embed a labelled catalogue once into a gallery file (`build`), then find the catalogue items
closest to new images (`search`), by cosine similarity, exactly. The gallery file is the versioned, checksummed
format of shitu_features.Gallery (no pickle); search must use the same --model as build."""

_BUILD_DESCRIPTION = """\
Embed a labelled catalogue into a gallery file. SOURCE is either a folder with one sub-folder per label
(SOURCE/<label>/**/<image>; the folder name is the label), or a list file 'path label [unique_id]' (the third
column, when present, becomes the item id). Each item records its image path as metadata."""

_BUILD_EXAMPLES = """\
  shitu-features gallery build catalogue/ -o shop.gallery
  shitu-features gallery build gallery.txt -o shop.gallery --model models/exp1 --on-error skip
  shitu-features gallery build new_products/ -o shop.gallery --append"""
_BUILD_EPILOG = "examples:\n" + _BUILD_EXAMPLES

_SEARCH_DESCRIPTION = """\
Embed each image and print the k best gallery items with their label and cosine score, best first. IMAGES are
files, folders (recursive), quoted globs or list files, as for `embed`."""

_SEARCH_EXAMPLES = """\
  shitu-features gallery search shop.gallery photo.jpg
  shitu-features gallery search shop.gallery queries/ -k 1 --threshold 0.5 --format tsv > answers.tsv"""
_SEARCH_EPILOG = "examples:\n" + _SEARCH_EXAMPLES + """

--threshold 0.5 keeps only results the PP-ShiTu reference would accept (its score_thres)."""


def add_parser(subparsers: Any) -> None:
    """Register ``gallery`` with its ``build`` and ``search`` subcommands."""
    parser = add_subcommand(subparsers, "gallery", help="build a gallery from labelled images; search it",
                            description=_DESCRIPTION, epilog=f"examples:\n{_BUILD_EXAMPLES}\n{_SEARCH_EXAMPLES}\n\n"
                            "Run `shitu-features gallery ACTION --help` for the options of an action.",
                            run=_missing_action)
    actions = parser.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)

    build = add_subcommand(actions, "build", help="embed a labelled folder or list into a gallery file",
                           description=_BUILD_DESCRIPTION, epilog=_BUILD_EPILOG, run=run_build)
    build.add_argument("source", metavar="SOURCE", help="folder of label sub-folders, or list file")
    build.add_argument("-o", "--output", required=True, metavar="GALLERY", help="gallery file to write")
    build.add_argument("--append", action="store_true", help="add to the existing GALLERY instead of replacing it")
    build.add_argument("--root", metavar="DIR", help="folder the list paths are relative to "
                                                     "(default: the list file's folder)")
    build.add_argument("--delimiter", metavar="SEP", help="list column separator (default: whitespace, or ',' "
                                                          "when the first line has one)")
    build.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                       help="'skip' leaves unreadable images out (listed on stderr)")
    add_model_options(build)

    search = add_subcommand(actions, "search", help="print the top-k gallery labels and scores of images",
                            description=_SEARCH_DESCRIPTION, epilog=_SEARCH_EPILOG, run=run_search)
    search.add_argument("gallery", metavar="GALLERY", help="gallery file written by `gallery build`")
    search.add_argument("images", nargs="+", metavar="IMAGE", help="image, folder, glob or list file")
    search.add_argument("-k", "--topk", type=positive_int, default=5, metavar="K", help="results per image")
    search.add_argument("--threshold", type=float, metavar="SCORE", help="drop results scoring below SCORE")
    search.add_argument("--root", metavar="DIR", help="folder for relative paths in list files")
    search.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="'skip' leaves unreadable images out (listed on stderr)")
    search.add_argument("--format", choices=("table", "tsv", "json"), default="table", help="output on stdout")
    add_model_options(search)


def _missing_action(args: argparse.Namespace) -> int:  # unreachable: argparse requires an action
    return 2


def run_build(args: argparse.Namespace) -> int:
    """Run ``gallery build``."""
    from shitu_features.errors import ImageNotFoundError
    from shitu_features.gallery import Gallery

    if os.path.isdir(args.source):
        items = labelled_folder(args.source)
    elif os.path.isfile(args.source):
        items = read_labelled_list(args.source, args.root, args.delimiter)
    else:
        raise ImageNotFoundError(f"no such folder or list file: {args.source}")
    extractor = load_extractor(args)
    gallery = Gallery.load(args.output) if args.append and os.path.exists(args.output) else None
    got = embed_and_report(args, extractor, items.paths, "gallery")
    keep = np.asarray(got.ok, dtype=np.int64)
    if gallery is None:
        gallery = Gallery(dim=int(extractor.embedding_size))
    ids = None if items.unique_ids is None else items.unique_ids[keep]
    gallery.add(got.vectors, items.labels[keep], ids=ids, metadata=[{"path": items.paths[i]} for i in got.ok])
    gallery.save(args.output)
    say(args, f"gallery {args.output}: {len(gallery)} items, {len(set(gallery.labels))} labels, "
              f"{gallery.dim}-d (added {len(keep)}" + (f", skipped {len(got.failed)})" if got.failed else ")"))
    return 0


def run_search(args: argparse.Namespace) -> int:
    """Run ``gallery search``."""
    from shitu_features.errors import ImageNotFoundError
    from shitu_features.gallery import Gallery

    if not os.path.isfile(args.gallery):
        raise ImageNotFoundError(f"gallery file not found: {args.gallery}")
    gallery = Gallery.load(args.gallery)
    paths = expand_inputs(args.images, root=args.root)
    extractor = load_extractor(args)
    got = embed_and_report(args, extractor, paths, "search")
    scores, labels, ids = gallery.search(got.vectors, k=args.topk, score_threshold=args.threshold)
    # All hits' metadata in one lookup (each lookup sorts the gallery's ids), consumed in row-then-rank order.
    found = ids >= 0
    meta = iter(gallery.get_metadata(ids[found]) if found.any() else [])
    results = []
    for row, index in enumerate(got.ok):
        hits = [i for i in range(scores.shape[1]) if found[row, i]]
        results.append({"query": paths[index], "results": [
            {"rank": n + 1, "label": labels[row, i], "score": float(scores[row, i]), "id": int(ids[row, i]),
             "path": (next(meta) or {}).get("path")} for n, i in enumerate(hits)]})
    print(_render(results, args.format))
    return 0


def _render(results: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(results, indent=2, ensure_ascii=False)
    if fmt == "tsv":
        lines = ["query\trank\tlabel\tscore\tid\tpath"]
        lines += [f"{r['query']}\t{h['rank']}\t{h['label']}\t{h['score']:.6f}\t{h['id']}\t{h['path'] or ''}"
                  for r in results for h in r["results"]]
        return "\n".join(lines)
    lines = []
    for r in results:
        lines.append(r["query"])
        if not r["results"]:
            lines.append("  (no result above the threshold)")
        width = max((len(str(h["label"])) for h in r["results"]), default=0)
        id_width = max((len(str(h["id"])) for h in r["results"]), default=0)
        for h in r["results"]:
            score = "nan" if math.isnan(h["score"]) else f"{h['score']:.4f}"
            line = f"  {h['rank']:>2}  {score}  {str(h['label']):<{width}}  id {h['id']:<{id_width}}"
            lines.append((line + f"  {h['path']}") if h["path"] else line.rstrip())
    return "\n".join(lines)
