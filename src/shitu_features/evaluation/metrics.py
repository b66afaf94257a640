"""Exact retrieval metrics (Recall@k, mAP) with bounded memory, plus a PaddleClas-compatible mode.

The reference (PaddleClas ``retrieval_eval`` with ``Recallk`` and ``mAP``, spec ``../spec/ppshitu_v2.md §8``)
scores the queries in blocks of 64 and reports a size-weighted mean of per-block ratios. Its numbers depend on
how the invalid queries fall into blocks, and a block without a valid query makes them NaN. It also keeps
excluded gallery items (same label and same camera as the query) in the ranking at similarity 0. This module
computes the exact whole-set values by default, with excluded items dropped, and reproduces the reference's
numbers with ``reference_compat=True``.

Ranking without ``argsort``: a query's j-th match with similarity s is at rank ``j + #{non-matches >= s}``.
Each block sorts its non-match similarities in place (a float sort, no index array) and finds each match by
binary search, which also fixes the tie rule: non-matches before matches at equal similarity.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from shitu_features.errors import ConfigError, InvalidInputError

__all__ = ["retrieval_metrics", "recall_at_k", "mean_average_precision", "l2_normalize"]

logger = logging.getLogger(__name__)

#: The epsilon of ``paddle.nn.functional.normalize``: rows are divided by ``max(norm, eps)``.
NORMALIZE_EPS = 1e-12
#: Default query block in exact mode (only speed and memory depend on it).
DEFAULT_BLOCK_SIZE = 256
#: The reference's ``Global.sim_block_size`` default; in compat mode the numbers depend on it (spec §8.7).
REFERENCE_BLOCK_SIZE = 64
#: Upper bound on similarities scored at once (query rows x gallery size): one float32 block of at most
#: 16 MiB, whatever the inputs' sizes.
_MAX_BLOCK_ELEMENTS = 1 << 22
#: Rows per chunk when normalizing, so float64 norms never need a full float64 copy of the input.
_NORMALIZE_CHUNK = 1 << 16

ArrayLike = Any  # anything np.asarray accepts: numpy arrays, lists, Paddle tensors


class _PerQuery(NamedTuple):
    """Per-query results of the ranking: everything the metrics are reduced from (all of length Q)."""

    first_rank: npt.NDArray[np.int64]  # 1-based rank of the first match; 0 when the query has no match
    average_precision: npt.NDArray[np.float64]  # AP; NaN when the query has no match
    num_matches: npt.NDArray[np.int64]  # positives of the query (after exclusion)


def l2_normalize(x: ArrayLike, eps: float = NORMALIZE_EPS) -> npt.NDArray[np.float32]:
    """L2-normalize rows like ``paddle.nn.functional.normalize``: ``x / max(||x||, eps)``, NaN-safe.

    A zero row stays zero instead of becoming NaN (the reference's deploy code divides by the bare norm and
    gives NaN there, spec §12 item 11). Norms are accumulated in float64 so huge values do not overflow.

    Args:
        x: Features, [N, D] (or [D]) of any real dtype.
        eps: Lower bound of the divisor.

    Returns:
        float32 array of the same shape with unit (or zero) rows.

    Raises:
        InvalidInputError: ``x`` is not 1-D or 2-D.
    """
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim not in (1, 2):
        raise InvalidInputError(f"l2_normalize expects [N, D] or [D] features, got shape {arr.shape}")
    squeeze = arr.ndim == 1
    rows = arr.reshape(1, -1) if squeeze else arr
    out = np.empty_like(rows)
    for start in range(0, rows.shape[0], _NORMALIZE_CHUNK):
        chunk = rows[start : start + _NORMALIZE_CHUNK]
        norm = np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64))
        np.divide(chunk, np.maximum(norm, eps).astype(np.float32)[:, None], out=out[start : start + chunk.shape[0]])
    return out[0] if squeeze else out


def retrieval_metrics(
    query: ArrayLike,
    query_labels: ArrayLike,
    gallery: ArrayLike,
    gallery_labels: ArrayLike,
    *,
    topk: Union[int, Iterable[int]] = (1, 5),
    query_cameras: Optional[ArrayLike] = None,
    gallery_cameras: Optional[ArrayLike] = None,
    normalize: bool = True,
    block_size: Optional[int] = None,
    reference_compat: bool = False,
) -> Dict[str, Union[float, int]]:
    """Recall@k (CMC) and mAP of a query set against a gallery, ranked by cosine similarity.

    A gallery item is a match of a query when the labels are equal. With cameras, a gallery item with the same
    label **and** the same camera as the query is excluded (spec §8.4); passing a unique id per image as the
    camera of both sides removes the self-match when the query set is the gallery. A query with no match is not
    valid: it is left out of every metric and counted in ``num_excluded_queries``.

    Default (exact) mode: excluded items are removed from the ranking, and every metric is a plain mean over
    all valid queries. Queries are scored in blocks of at most ``block_size`` rows (fewer for a very large
    gallery), so memory stays bounded for any number of queries and is linear in the gallery size.

    ``reference_compat=True`` reproduces PaddleClas ``retrieval_eval`` (spec §8): excluded similarities are
    multiplied by 0 and stay in the ranking (never as a match); queries are split into blocks of
    ``block_size`` (default 64, the reference's ``sim_block_size``); each block's ratios are rounded to float32
    and the results are combined as ``sum(metric_block * len(block) / num_queries)``. A block without a valid
    query makes every metric NaN there, as in the reference; a ``RuntimeWarning`` says so.

    Ties: at equal similarity, non-matches are ranked before matches (the pessimistic order), so a degenerate
    model that maps everything to one vector scores low rather than perfectly. The reference's
    ``paddle.argsort`` leaves the order of ties unspecified.

    Args:
        query: Query features, [Q, D], any real dtype (computed in float32).
        query_labels: [Q] (or [Q, 1]) int or str labels.
        gallery: Gallery features, [G, D].
        gallery_labels: [G] (or [G, 1]) labels, comparable with ``query_labels``.
        topk: The k of each ``recall@k`` (an int or an iterable of positive ints). A k above G gives the
            fraction of valid queries with any match, i.e. 1.0.
        query_cameras: [Q] camera (or unique image) ids; must be given together with ``gallery_cameras``.
        gallery_cameras: [G] camera ids.
        normalize: L2-normalize both sides first (``F.normalize``, eps 1e-12), making the score a cosine.
            False ranks by the raw inner product.
        block_size: Queries per block. Exact mode: a memory/speed knob only (default 256). Compat mode: the
            reference's ``sim_block_size`` (default 64), which changes the numbers.
        reference_compat: Reproduce the reference's numbers instead of the exact values.

    Returns:
        A dict with ``recall@k`` for each k, ``mAP`` (floats, NaN when no query is valid), ``num_queries``,
        ``num_valid_queries`` and ``num_excluded_queries`` (ints).

    Raises:
        InvalidInputError: Wrong shapes, dtypes, lengths, non-finite features or an empty query set.
        ConfigError: Invalid ``topk`` or ``block_size``, or only one of the two camera arrays.
    """
    ks = _validate_topk(topk)
    q_feat, g_feat = _validate_features(query, "query"), _validate_features(gallery, "gallery")
    if q_feat.shape[0] == 0:
        raise InvalidInputError("retrieval_metrics got no queries (query has 0 rows); pass at least one query")
    if q_feat.shape[1] != g_feat.shape[1]:
        raise InvalidInputError(
            f"query and gallery features differ in dimension: {q_feat.shape[1]} vs {g_feat.shape[1]}"
        )
    q_lab, g_lab = _encode_pair(query_labels, gallery_labels, q_feat.shape[0], g_feat.shape[0], "labels")
    if (query_cameras is None) != (gallery_cameras is None):
        raise ConfigError(
            "query_cameras and gallery_cameras must be given together (a camera is compared across both sides)"
        )
    cams = None
    if query_cameras is not None:
        cams = _encode_pair(query_cameras, gallery_cameras, q_feat.shape[0], g_feat.shape[0], "cameras")
    if block_size is None:
        block_size = REFERENCE_BLOCK_SIZE if reference_compat else DEFAULT_BLOCK_SIZE
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ConfigError(f"block_size must be a positive int, got {block_size!r}")

    if normalize:
        g_feat = l2_normalize(g_feat)  # queries are normalized block by block, so only one side is copied
    # Compat mode combines per-query results by reference block afterwards, so its scoring blocks need not
    # be the reference's small ones.
    max_rows = DEFAULT_BLOCK_SIZE if reference_compat else int(block_size)
    rows = max(1, min(max_rows, _MAX_BLOCK_ELEMENTS // max(1, g_feat.shape[0])))
    logger.debug("ranking %d queries against %d gallery items, %d queries per block", q_feat.shape[0],
                 g_feat.shape[0], rows)
    per_query = _rank_queries(
        q_feat, q_lab, g_feat, g_lab, cams, rows, normalize=normalize, drop_excluded=not reference_compat
    )
    if reference_compat:
        return _reduce_reference(per_query, ks, int(block_size))
    return _reduce_exact(per_query, ks)


def recall_at_k(
    query: ArrayLike, query_labels: ArrayLike, gallery: ArrayLike, gallery_labels: ArrayLike, k: int = 1, **kwargs: Any
) -> float:
    """Recall@k alone: ``retrieval_metrics(..., topk=(k,), **kwargs)["recall@{k}"]``.

    Args:
        query: Query features, [Q, D].
        query_labels: [Q] labels.
        gallery: Gallery features, [G, D].
        gallery_labels: [G] labels.
        k: Rank cut-off.
        **kwargs: Any keyword of :func:`retrieval_metrics` except ``topk``.

    Returns:
        The fraction of valid queries with a match among the first k results.
    """
    return float(retrieval_metrics(query, query_labels, gallery, gallery_labels, topk=(k,), **kwargs)[f"recall@{k}"])


def mean_average_precision(
    query: ArrayLike, query_labels: ArrayLike, gallery: ArrayLike, gallery_labels: ArrayLike, **kwargs: Any
) -> float:
    """mAP alone: ``retrieval_metrics(..., **kwargs)["mAP"]``.

    Args:
        query: Query features, [Q, D].
        query_labels: [Q] labels.
        gallery: Gallery features, [G, D].
        gallery_labels: [G] labels.
        **kwargs: Any keyword of :func:`retrieval_metrics` except ``topk``.

    Returns:
        The mean over valid queries of the average precision.
    """
    return float(retrieval_metrics(query, query_labels, gallery, gallery_labels, topk=(1,), **kwargs)["mAP"])


# --------------------------------------------------------------------------------------------- validation


def _validate_topk(topk: Union[int, Iterable[int]]) -> Tuple[int, ...]:
    items = [topk] if isinstance(topk, (int, np.integer)) else list(topk)
    if not items or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in items):
        raise ConfigError(f"topk must be a positive int or a non-empty iterable of positive ints, got {topk!r}")
    return tuple(sorted({int(k) for k in items}))


def _validate_features(x: ArrayLike, name: str) -> npt.NDArray[np.float32]:
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"{name} features must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InvalidInputError(f"{name} features must have shape [N, D] with D > 0, got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} features contain NaN or infinite values; metrics would be meaningless")
    return arr


def _as_column(x: ArrayLike, n: int, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:  # PaddleClas passes labels as [N, 1]
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InvalidInputError(f"{what} must have shape [{n}] (or [{n}, 1]), got {arr.shape}")
    if arr.dtype == object or arr.dtype.kind not in "biuUS":
        raise InvalidInputError(f"{what} must be integers or strings, got dtype {arr.dtype}")
    return arr


def _encode_pair(
    query_values: ArrayLike, gallery_values: ArrayLike, num_query: int, num_gallery: int, what: str
) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Map query and gallery labels (or cameras) to shared int codes, so comparisons are cheap and typed."""
    q = _as_column(query_values, num_query, f"query {what}")
    g = _as_column(gallery_values, num_gallery, f"gallery {what}")
    if (q.dtype.kind in "US") != (g.dtype.kind in "US"):
        raise InvalidInputError(f"query and gallery {what} must both be integers or both strings, got "
                                f"{q.dtype} and {g.dtype}")
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = codes.astype(np.int64).reshape(-1)
    return codes[:num_query], codes[num_query:]


# ------------------------------------------------------------------------------------------------ ranking


def _rank_queries(
    q_feat: npt.NDArray[np.float32],
    q_lab: npt.NDArray[np.int64],
    g_feat: npt.NDArray[np.float32],
    g_lab: npt.NDArray[np.int64],
    cams: Optional[Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]],
    rows_per_block: int,
    *,
    normalize: bool,
    drop_excluded: bool,
) -> _PerQuery:
    """Rank every query against the gallery, block by block, and return the per-query results."""
    num_query = q_feat.shape[0]
    first_rank = np.zeros(num_query, dtype=np.int64)
    average_precision = np.full(num_query, np.nan, dtype=np.float64)
    num_matches = np.zeros(num_query, dtype=np.int64)
    if g_feat.shape[0] == 0:
        return _PerQuery(first_rank, average_precision, num_matches)
    # Gallery positions grouped by label code, so a query's same-label items are a slice: no [B, G] mask.
    by_label = np.argsort(g_lab, kind="stable")
    label_count = np.bincount(g_lab, minlength=int(max(q_lab.max(), g_lab.max())) + 1)
    label_end = np.cumsum(label_count)
    label_start = label_end - label_count
    for start in range(0, num_query, rows_per_block):
        stop = min(start + rows_per_block, num_query)
        q_block = l2_normalize(q_feat[start:stop]) if normalize else q_feat[start:stop]
        scores = q_block @ g_feat.T  # [B, G] float32
        if not normalize and not np.isfinite(scores).all():
            raise InvalidInputError("inner products overflow float32; pass normalize=True or rescale the features")
        match_scores = []
        for row, query in enumerate(range(start, stop)):
            label = q_lab[query]
            same_label = by_label[label_start[label] : label_end[label]]
            if cams is not None:
                # spec §8.4: excluded iff same label AND same camera (the reference's keep: label != or camera !=).
                # Exact mode drops them (-inf is below every real score, see _rank_block); the reference
                # multiplies their similarity by 0 and keeps them ranked as non-matches.
                same_camera = cams[1][same_label] == cams[0][query]
                scores[row, same_label[same_camera]] = -np.inf if drop_excluded else np.float32(0.0)
                same_label = same_label[~same_camera]
            match_scores.append(scores[row, same_label])
            scores[row, same_label] = -np.inf  # matches leave the row; only non-matches get sorted
        _rank_block(scores, match_scores, first_rank[start:stop], average_precision[start:stop],
                    num_matches[start:stop])
    return _PerQuery(first_rank, average_precision, num_matches)


def _rank_block(
    nonmatch_scores: npt.NDArray[np.float32],
    match_scores: List[npt.NDArray[np.float32]],
    first_rank: npt.NDArray[np.int64],
    average_precision: npt.NDArray[np.float64],
    num_matches: npt.NDArray[np.int64],
) -> None:
    """Fill one block's per-query outputs; ``nonmatch_scores`` [B, G] is sorted in place.

    The j-th best match (1-based) of a query, with score s, is at rank ``j + #{non-matches with score >= s}``
    (non-matches first at equal scores; the order among tied matches does not change AP). So only the
    non-match scores are sorted (a float sort in place, no argsort or index array) and each query's matches
    are located in its sorted row by binary search. Match and dropped slots hold -inf, which is never >= a
    finite match score.
    """
    nonmatch_scores.sort(axis=1)
    num_gallery = nonmatch_scores.shape[1]
    for row, mine in enumerate(match_scores):
        num_matches[row] = mine.shape[0]
        if mine.shape[0] == 0:
            continue
        mine = np.sort(mine)[::-1]  # descending
        j = np.arange(1, mine.shape[0] + 1)
        ranks = j + (num_gallery - np.searchsorted(nonmatch_scores[row], mine, side="left"))
        first_rank[row] = ranks[0]
        average_precision[row] = float(np.mean(j / ranks))


# ------------------------------------------------------------------------------------------------ reduction


def _reduce_exact(per_query: _PerQuery, ks: Tuple[int, ...]) -> Dict[str, Union[float, int]]:
    valid = per_query.num_matches > 0
    num_valid = int(valid.sum())
    result: Dict[str, Union[float, int]] = {}
    if num_valid == 0:
        warnings.warn("no query has a match in the gallery: recall and mAP are NaN", RuntimeWarning, stacklevel=3)
    for k in ks:
        hits = int(((per_query.first_rank > 0) & (per_query.first_rank <= k)).sum())
        result[f"recall@{k}"] = hits / num_valid if num_valid else math.nan
    result["mAP"] = float(per_query.average_precision[valid].mean()) if num_valid else math.nan
    return _with_counts(result, len(valid), num_valid)


def _reduce_reference(per_query: _PerQuery, ks: Tuple[int, ...], block_size: int) -> Dict[str, Union[float, int]]:
    """Combine per-block ratios exactly as ``retrieval_eval`` does (spec §8.5-8.7)."""
    num_query = per_query.num_matches.shape[0]
    totals = {key: 0.0 for key in [f"recall@{k}" for k in ks] + ["mAP"]}
    empty_blocks = []
    for start in range(0, num_query, block_size):
        sl = slice(start, min(start + block_size, num_query))
        valid = per_query.num_matches[sl] > 0
        num_valid = np.float32(valid.sum())
        block_len = sl.stop - sl.start
        if not valid.any():
            empty_blocks.append(start // block_size)
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 -> NaN, as in the reference
            for k in ks:
                hits = np.float32(((per_query.first_rank[sl] > 0) & (per_query.first_rank[sl] <= k)).sum())
                totals[f"recall@{k}"] += float(hits / num_valid) * block_len / num_query
            block_map = per_query.average_precision[sl][valid].mean() if valid.any() else math.nan
            totals["mAP"] += float(np.float32(block_map)) * block_len / num_query
    if empty_blocks:
        warnings.warn(
            f"reference_compat: query block(s) {empty_blocks} (block_size {block_size}) have no valid query, so "
            "the reference's block-weighted metrics are NaN; use reference_compat=False for the exact values",
            RuntimeWarning,
            stacklevel=3,
        )
    num_valid_total = int((per_query.num_matches > 0).sum())
    return _with_counts(dict(totals), num_query, num_valid_total)


def _with_counts(result: Dict[str, Union[float, int]], num_query: int, num_valid: int) -> Dict[str, Union[float, int]]:
    result["num_queries"] = num_query
    result["num_valid_queries"] = num_valid
    result["num_excluded_queries"] = num_query - num_valid
    return result
