"""``shitu-features eval``: embed a query list and a gallery list with a model and print Recall@k and mAP."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np

from shitu_features.cli._common import (
    LabelledList,
    add_model_options,
    add_subcommand,
    load_extractor,
    positive_int,
    read_labelled_list,
    say,
)
from shitu_features.cli._embedding import embed_and_report
from shitu_features.errors import ConfigError

_DESCRIPTION = """\
Evaluate a model on a retrieval split: every query image is ranked against the gallery by cosine similarity,
and Recall@k (a match among the top k) and mAP are reported over the queries that have a match.

Lists are 'path label [unique_id]' files (spec §6). Without --gallery the query list is also the gallery: give
each image a unique id in the third column (or pass --exclude-self) so an image is not its own match. A gallery
item with the same label and the same unique id (camera) as the query is excluded, as in PaddleClas.

By default the numbers are exact (excluded items are dropped from the ranking, one mean over all valid queries);
--reference-compat reproduces PaddleClas' block-wise numbers instead (see docs/evaluation.md)."""

_EPILOG = """\
examples:
  shitu-features eval --model out/inference --query val.txt            # val.txt has unique ids
  shitu-features eval --query query.txt --gallery gallery.txt --topk 1 5 10
  shitu-features eval --query test.txt --delimiter , --exclude-self --format json > metrics.json"""


def add_parser(subparsers: Any) -> None:
    """Register ``eval``."""
    parser = add_subcommand(subparsers, "eval", help="Recall@k and mAP of a model on query/gallery lists",
                            description=_DESCRIPTION, epilog=_EPILOG, run=run)
    data = parser.add_argument_group("data")
    data.add_argument("--query", required=True, metavar="LIST", help="query list file 'path label [unique_id]'")
    data.add_argument("--gallery", metavar="LIST", help="gallery list file (default: the query list)")
    data.add_argument("--root", metavar="DIR", help="folder the list paths are relative to "
                                                    "(default: each list file's folder)")
    data.add_argument("--delimiter", metavar="SEP",
                      help="column separator of the lists (default: whitespace, or ',' when the first line has one)")
    data.add_argument("--exclude-self", action="store_true",
                      help="query list == gallery list without unique ids: use the row number as the unique id")
    add_model_options(parser)
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("-k", "--topk", type=positive_int, nargs="+", default=[1, 5], metavar="K",
                         help="the k of Recall@k (default: 1 5)")
    metrics.add_argument("--reference-compat", action="store_true",
                         help="PaddleClas' block-wise numbers (excluded items kept at score 0, 64-query blocks)")
    metrics.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                         help="'skip' leaves unreadable images out of the evaluation (they are counted)")
    metrics.add_argument("--format", choices=("table", "json"), default="table", help="output on stdout")


def run(args: argparse.Namespace) -> int:
    """Run ``eval``."""
    same = args.gallery is None or args.gallery == args.query
    query = read_labelled_list(args.query, args.root, args.delimiter)
    gallery = query if same else read_labelled_list(args.gallery, args.root, args.delimiter)
    if args.exclude_self:
        if not same:
            raise ConfigError("--exclude-self applies when the query list is also the gallery")
        query = gallery = query.with_row_ids()
    elif same and query.unique_ids is None:
        say(args, "note: the query list is also the gallery and has no unique ids, so every image matches itself "
                  "(Recall@k = 1); add a third column or pass --exclude-self")
    if (query.unique_ids is None) != (gallery.unique_ids is None):
        raise ConfigError("only one of the query and gallery lists has a unique-id column; give both or neither")

    extractor = load_extractor(args)
    q_vec, q_keep, q_skipped = _embed(args, extractor, query.paths, "query")
    if same:
        g_vec, g_keep, g_skipped = q_vec, q_keep, 0
    else:
        g_vec, g_keep, g_skipped = _embed(args, extractor, gallery.paths, "gallery")

    from shitu_features.evaluation import retrieval_metrics

    def cams(lst: LabelledList, keep: np.ndarray) -> Any:
        return None if lst.unique_ids is None else lst.unique_ids[keep]

    result = retrieval_metrics(
        q_vec, query.labels[q_keep], g_vec, gallery.labels[g_keep],
        topk=tuple(args.topk), query_cameras=cams(query, q_keep), gallery_cameras=cams(gallery, g_keep),
        reference_compat=args.reference_compat,
    )
    result = {**result, "num_gallery": int(len(g_keep)), "skipped_query_images": q_skipped,
              "skipped_gallery_images": g_skipped, "model": extractor.name}
    print(json.dumps(result, indent=2) if args.format == "json" else _table(result, args))
    return 0


def _embed(args: argparse.Namespace, extractor: Any, paths: list[str], what: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Embed ``paths``; return (vectors, indices of the embedded paths, number skipped)."""
    got = embed_and_report(args, extractor, paths, what)
    return got.vectors, np.asarray(got.ok, dtype=np.int64), len(got.failed)


def _table(result: dict[str, Any], args: argparse.Namespace) -> str:
    """The metrics as an aligned two-column table, then the counts."""
    keys = [k for k in result if k.startswith("recall@")] + ["mAP"]
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}}  value"]
    for key in keys:
        value = result[key]
        lines.append(f"{key:<{width}}  {'nan' if math.isnan(value) else f'{value:.4f}'}")
    lines.append("")
    lines.append(f"model: {result['model']}; queries: {result['num_queries']} "
                 f"({result['num_valid_queries']} with a match in the gallery, {result['num_excluded_queries']} "
                 f"without); gallery: {result['num_gallery']} images")
    skipped = result["skipped_query_images"] + result["skipped_gallery_images"]
    if skipped:
        lines.append(f"unreadable images left out: {skipped}")
    if args.reference_compat:
        lines.append("numbers computed as PaddleClas does (--reference-compat)")
    return "\n".join(lines)
