"""A gallery of labelled embeddings to recognize new images against (exact top-k search).

PP-ShiTu recognizes a photo by searching its embedding among the embeddings of a labelled catalogue. The
reference does it with a faiss HNSW32 inner-product index and keeps a result when its score is at least
``score_thres`` 0.5 (spec ``../spec/ppshitu_v2.md §5.1`` item 7). :class:`Gallery` searches exactly
(blocked matrix products with numpy by default, or a faiss flat index), keeps ids, labels and JSON metadata
per item, and saves to a single versioned file that never involves pickle. See ``docs/gallery.md``.

File format, version 1 (all integers little-endian)::

    offset 0   8 bytes   magic b"SHITUGAL"
    offset 8   uint32    format version (1)
    offset 12  uint32    header length H
    offset 16  32 bytes  sha256 of the header bytes
    offset 48  H bytes   header: UTF-8 JSON object (see _Header)
    ...        zeros     padding to a multiple of 64 bytes (vectors_offset)
    vectors    count*dim*4 bytes: float32 little-endian, row-major
    records    UTF-8 JSON {"ids": [int], "labels": [int|str], "metadata": [object|null]}

The header holds the sizes, offsets and sha256 of both sections; the file must end exactly after the
records. Any mismatch raises :class:`~shitu_features.errors.GalleryFormatError` before anything is returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shitu_features._version import __version__
from shitu_features.errors import ConfigError, GalleryFormatError, GalleryIdError, InvalidInputError
from shitu_features.evaluation.metrics import l2_normalize

__all__ = ["Gallery", "Embedder", "REFERENCE_SCORE_THRESHOLD", "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

#: The reference's ``IndexProcess.score_thres`` (inner product of L2-normalized vectors), spec §5.1 item 7.
REFERENCE_SCORE_THRESHOLD = 0.5
#: Version of the on-disk format written by :meth:`Gallery.save`.
FORMAT_VERSION = 1

#: Gallery rows per block of the numpy backend; with ~4M scores per block that is 256 queries at a time.
DEFAULT_BLOCK_SIZE = 16384

_MAGIC = b"SHITUGAL"
_PREAMBLE = struct.Struct("<8sII")  # magic, version, header length
_ALIGN = 64
#: Similarities scored at once by the numpy backend (query rows x gallery rows). A block needs ~9 bytes per
#: element (float32 scores, a float32 partition copy, a bool mask), so a search's extra memory stays near
#: 40 MiB whatever the gallery size.
_MAX_BLOCK_ELEMENTS = 1 << 22
_READ_CHUNK = 1 << 26

Label = Union[int, str]
PathLike = Union[str, "os.PathLike[str]"]
SearchResult = Tuple[npt.NDArray[np.float32], npt.NDArray[np.object_], npt.NDArray[np.int64]]


class Embedder(Protocol):
    """What :class:`Gallery` needs from an extractor (e.g. ``shitu_features.Extractor``)."""

    def embed(self, images: Any) -> np.ndarray:
        """Embed a list of images into a float32 [N, dim] array."""


class _Header(BaseModel):
    """The JSON header of a gallery file (format version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal["shitu-features-gallery"]
    version: Literal[1]
    dim: int = Field(gt=0)
    metric: Literal["cosine", "ip"]
    count: int = Field(ge=0)
    next_id: int = Field(ge=0)
    dtype: Literal["<f4"]
    vectors_offset: int = Field(ge=0)
    vectors_nbytes: int = Field(ge=0)
    vectors_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    records_offset: int = Field(ge=0)
    records_nbytes: int = Field(ge=0)
    records_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    created_by: str


# ----------------------------------------------------------------------------------------------- backends


class _NumpyIndex:
    """Exact top-k by blocked ``queries @ gallery.T``; holds no copy of the vectors.

    Each query chunk keeps its k best so far, sorted by (score descending, row ascending). A gallery block
    only contributes the scores above the current k-th best (usually a handful once the first block is seen);
    when there are many, a value-only ``np.partition`` first narrows them to the block's own top k (ties
    included). The candidates are merged with one small sort, so the result is exactly the first k items of
    that total order, ties included. The extra memory is a few copies of one block of scores plus O(chunk x k).
    """

    def __init__(self, dim: int, block_size: int) -> None:
        self._block_size = block_size

    def add(self, vectors: npt.NDArray[np.float32]) -> None:
        """Nothing to do: the search reads the gallery's own storage."""

    def rebuild(self, vectors: npt.NDArray[np.float32]) -> None:
        """Nothing to do: the search reads the gallery's own storage."""

    def search(
        self, vectors: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-k rows of ``vectors`` for each query, k <= len(vectors); scores [Q, k] and rows [Q, k]."""
        num_rows = vectors.shape[0]
        gallery_rows = min(num_rows, self._block_size)
        query_rows = max(1, _MAX_BLOCK_ELEMENTS // gallery_rows)
        scores = np.empty((queries.shape[0], k), dtype=np.float32)
        rows = np.empty((queries.shape[0], k), dtype=np.int64)
        for q0 in range(0, queries.shape[0], query_rows):
            q_block = queries[q0 : q0 + query_rows]
            # Placeholders (-inf, row -1) lose to every real (finite) score; k <= num_rows, so none survives.
            best_s = np.full((q_block.shape[0], k), -np.inf, dtype=np.float32)
            best_r = np.full((q_block.shape[0], k), -1, dtype=np.int64)
            for g0 in range(0, num_rows, gallery_rows):
                block = q_block @ vectors[g0 : g0 + gallery_rows].T  # [b, g] float32
                # Strictly above the k-th best: an equal score later in the gallery loses to the earlier item.
                above = block > best_s[:, -1:]
                width = block.shape[1]
                if width > k and np.count_nonzero(above) > 2 * k * block.shape[0]:
                    kth = np.partition(block, width - k, axis=1)[:, width - k : width - k + 1]
                    above &= block >= kth
                hit_q, hit_g = np.divmod(np.flatnonzero(above), width)  # 1-D nonzero: much faster than 2-D
                del above
                if hit_q.size:
                    best_s, best_r = _merge_sparse(best_s, best_r, hit_q, block[hit_q, hit_g], hit_g + g0)
            scores[q0 : q0 + q_block.shape[0]] = best_s
            rows[q0 : q0 + q_block.shape[0]] = best_r
        return scores, rows


def _merge_sparse(
    best_s: npt.NDArray[np.float32],
    best_r: npt.NDArray[np.int64],
    hit_q: npt.NDArray[np.intp],
    hit_s: npt.NDArray[np.float32],
    hit_r: npt.NDArray[np.int64],
) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Merge (query, score, row) candidates into the per-query top-k [b, k], sorted (score desc, row asc)."""
    num_query, k = best_s.shape
    queries = np.concatenate([np.repeat(np.arange(num_query), k), hit_q])
    all_s = np.concatenate([best_s.reshape(-1), hit_s])
    all_r = np.concatenate([best_r.reshape(-1), hit_r])
    order = np.lexsort((all_r, -all_s, queries))  # by query, then score descending, then row
    counts = k + np.bincount(hit_q, minlength=num_query)
    firsts = (np.cumsum(counts) - counts)[:, None] + np.arange(k)  # each query's k best, [b, k]
    take = order[firsts]
    return all_s[take], all_r[take]


class _FaissIndex:
    """A faiss ``IndexFlatIP`` mirror of the vectors (exact inner product, multi-threaded)."""

    def __init__(self, dim: int, block_size: int) -> None:
        try:
            import faiss  # optional dependency: imported only when this backend is chosen
        except ImportError as exc:
            raise ImportError(
                "Gallery(backend='faiss') needs faiss; install it with `pip install shitu-features[faiss]` "
                "(or `pip install faiss-cpu`), or use the default backend='numpy'"
            ) from exc
        self._index = faiss.IndexFlatIP(dim)

    def add(self, vectors: npt.NDArray[np.float32]) -> None:
        """Append vectors [N, dim] to the index."""
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def rebuild(self, vectors: npt.NDArray[np.float32]) -> None:
        """Replace the index content with ``vectors`` (after a removal)."""
        self._index.reset()
        if vectors.shape[0]:
            self.add(vectors)

    def search(
        self, vectors: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-k rows for each query, k <= len(vectors); scores [Q, k] and rows [Q, k]."""
        scores, rows = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)


#: Search backends by name.
_BACKENDS = {"numpy": _NumpyIndex, "faiss": _FaissIndex}


# ------------------------------------------------------------------------------------------------ gallery


class Gallery:
    """Labelled embeddings with exact top-k search, per-item metadata and a safe on-disk format.

    Items have an int64 id (given or assigned in increasing order, never reused), a label (int or str), an
    optional JSON-serializable metadata dict, and a float32 vector. With ``metric="cosine"`` vectors and
    queries are L2-normalized (``x / max(||x||, 1e-12)``, so a zero vector stays zero instead of NaN) and the
    score is the cosine; with ``metric="ip"`` they are used as given and the score is the inner product.

    Search is exact. The numpy backend scores blocks of at most ~4M similarities at a time, so the extra
    memory of a search stays around 64 MiB whatever the gallery size. ``backend="faiss"`` keeps a faiss
    ``IndexFlatIP`` copy of the vectors (twice the memory) and gives the same results up to float rounding.
    A Gallery is not safe to modify from several threads at once.

    Args:
        dim: Vector dimension (512 for PP-ShiTuV2).
        backend: ``"numpy"`` (default, no extra dependency) or ``"faiss"`` (``pip install shitu-features[faiss]``).
        metric: ``"cosine"`` (default, like the reference's inner product on normalized features) or ``"ip"``.
        extractor: Optional object with ``embed(images) -> float32 [N, dim]`` (e.g. ``shitu_features.Extractor``),
            used when :meth:`add` or :meth:`search` get images instead of vectors.
        block_size: Gallery rows scored per block by the numpy backend (a speed/memory knob only).

    Example:
        >>> gallery = Gallery(dim=4)
        >>> gallery.add(np.eye(4, dtype=np.float32), labels=["a", "b", "c", "d"])
        array([0, 1, 2, 3])
        >>> scores, labels, ids = gallery.search(np.array([0.9, 0.1, 0, 0], np.float32), k=2)
        >>> labels.tolist()
        ['a', 'b']
    """

    def __init__(
        self,
        dim: int = 512,
        *,
        backend: str = "numpy",
        metric: str = "cosine",
        extractor: Optional[Embedder] = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"dim must be a positive int, got {dim!r}")
        if metric not in ("cosine", "ip"):
            raise ConfigError(f"metric must be 'cosine' or 'ip', got {metric!r}")
        if backend not in _BACKENDS:
            raise ConfigError(f"backend must be one of {sorted(_BACKENDS)}, got {backend!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise ConfigError(f"block_size must be a positive int, got {block_size!r}")
        self._dim, self._metric, self._backend_name = int(dim), metric, backend
        self._extractor = extractor
        self._index = _BACKENDS[backend](self._dim, int(block_size))
        self._vectors = np.empty((0, self._dim), dtype=np.float32)  # capacity rows; the first _size are used
        self._ids = np.empty(0, dtype=np.int64)
        self._size = 0
        self._labels: List[Label] = []
        self._metadata: List[Optional[Dict[str, Any]]] = []
        self._next_id = 0

    # ------------------------------------------------------------------------------------------- queries

    def __len__(self) -> int:
        """Number of items."""
        return self._size

    def __contains__(self, item_id: object) -> bool:
        """Whether an item with this id is in the gallery."""
        if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
            return False
        return bool(np.any(self._ids[: self._size] == item_id))

    def __repr__(self) -> str:
        return f"Gallery(dim={self._dim}, metric={self._metric!r}, backend={self._backend_name!r}, size={self._size})"

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def metric(self) -> str:
        """``"cosine"`` or ``"ip"``."""
        return self._metric

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"faiss"``."""
        return self._backend_name

    @property
    def vectors(self) -> npt.NDArray[np.float32]:
        """Read-only view of the stored vectors, [N, dim] float32 (normalized when the metric is cosine)."""
        view = self._vectors[: self._size]
        view.flags.writeable = False
        return view

    @property
    def ids(self) -> npt.NDArray[np.int64]:
        """Copy of the item ids in storage order, [N] int64."""
        return self._ids[: self._size].copy()

    @property
    def labels(self) -> List[Label]:
        """Copy of the labels in storage order."""
        return list(self._labels)

    def get_metadata(self, ids: Union[int, Sequence[int], npt.ArrayLike]) -> List[Optional[Dict[str, Any]]]:
        """Metadata of the given item ids, in the same order (``None`` where none was given).

        Raises:
            GalleryIdError: An id is not in the gallery.
        """
        rows = self._rows_of(_as_id_array(ids))
        return [json.loads(json.dumps(self._metadata[r])) for r in rows]  # copies: callers cannot alter ours

    def search(
        self, queries: Any, k: int = 5, *, score_threshold: Optional[float] = None
    ) -> SearchResult:
        """The k best items for each query, best first.

        Args:
            queries: float vectors [Q, dim] or one vector [dim]; or images (anything the extractor embeds: a
                path, an array image, or a list of them) when the gallery has an extractor.
            k: Results per query. When fewer than k items exist (or pass the threshold), the remaining slots
                are padding: score ``-inf``, label ``None``, id ``-1``.
            score_threshold: Keep only results with ``score >= score_threshold`` (the reference keeps a
                result at ``score >= 0.5``: :data:`REFERENCE_SCORE_THRESHOLD`); the rest become padding.

        Returns:
            ``(scores, labels, ids)``: float32 [Q, k], object [Q, k] (the stored int/str labels) and int64
            [Q, k]; 1-D [k] arrays for a single vector or a single image. The numpy backend returns exactly
            the first k items ordered by score descending, then insertion order (ties included); faiss
            orders exact ties its own way.

        Raises:
            InvalidInputError: Wrong shape, dtype, non-finite values, or images without an extractor.
            ConfigError: k is not a positive int, or score_threshold is not a number.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive int, got {k!r}")
        if score_threshold is not None and (
            isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float, np.floating, np.integer))
            or np.isnan(score_threshold)
        ):
            raise ConfigError(f"score_threshold must be a number or None, got {score_threshold!r}")
        vectors, single = self._to_vectors(queries, "search")
        num_query, k = vectors.shape[0], int(k)
        scores = np.full((num_query, k), -np.inf, dtype=np.float32)
        rows = np.full((num_query, k), -1, dtype=np.int64)
        found = min(k, self._size)
        if found and num_query:
            scores[:, :found], rows[:, :found] = self._index.search(self.vectors, vectors, found)
        if score_threshold is not None:
            below = scores < np.float32(score_threshold)
            scores[below], rows[below] = -np.inf, -1
        ids = np.where(rows >= 0, self._ids[np.maximum(rows, 0)] if self._size else -1, -1)
        labels = np.empty(rows.shape, dtype=object)
        labels.reshape(-1)[:] = [self._labels[r] if r >= 0 else None for r in rows.reshape(-1).tolist()]
        if single:
            return scores[0], labels[0], ids[0]
        return scores, labels, ids

    # ----------------------------------------------------------------------------------------- mutation

    def add(
        self,
        vectors_or_images: Any,
        labels: Union[Label, Sequence[Label], npt.ArrayLike],
        ids: Optional[Union[Sequence[int], npt.ArrayLike]] = None,
        metadata: Optional[Sequence[Optional[Dict[str, Any]]]] = None,
    ) -> npt.NDArray[np.int64]:
        """Add items; nothing is added when any argument is invalid.

        Args:
            vectors_or_images: float vectors [N, dim] (or one [dim]); float64/float16 are converted to
                float32. Anything else (paths, image arrays, PIL images, or lists of them) is embedded with
                the extractor.
            labels: N labels, each an int or a str (one label for one item).
            ids: N unique non-negative int ids not yet in the gallery; default: the next free ids.
            metadata: N JSON-serializable dicts (or None), stored per item and saved with the gallery.

        Returns:
            The ids of the new items, int64 [N].

        Raises:
            InvalidInputError: Bad shapes, dtypes, labels or metadata; images without an extractor.
            GalleryIdError: An id is already in the gallery or repeated.
        """
        vectors, _ = self._to_vectors(vectors_or_images, "add")
        num = vectors.shape[0]
        new_labels = _validate_labels(labels, num)
        new_ids = self._new_ids(ids, num)
        new_metadata = _validate_metadata(metadata, num)
        if num == 0:
            return new_ids
        self._reserve(self._size + num)
        self._vectors[self._size : self._size + num] = vectors
        self._ids[self._size : self._size + num] = new_ids
        self._index.add(vectors)
        self._size += num
        self._labels.extend(new_labels)
        self._metadata.extend(new_metadata)
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids

    def remove(self, ids: Union[int, Sequence[int], npt.ArrayLike]) -> None:
        """Remove the items with these ids (all of them must exist; nothing is removed otherwise).

        Raises:
            GalleryIdError: An id is not in the gallery.
        """
        rows = self._rows_of(_as_id_array(ids))
        keep = np.ones(self._size, dtype=bool)
        keep[rows] = False
        self._vectors = self._vectors[: self._size][keep]
        self._ids = self._ids[: self._size][keep]
        self._labels = [label for label, kept in zip(self._labels, keep.tolist()) if kept]
        self._metadata = [meta for meta, kept in zip(self._metadata, keep.tolist()) if kept]
        self._size = int(keep.sum())
        self._index.rebuild(self.vectors)

    # -------------------------------------------------------------------------------------------- files

    def save(self, path: PathLike) -> Path:
        """Write the gallery to one file, atomically (a temporary file in the same folder, then ``os.replace``).

        The format is described in this module's docstring and in ``docs/gallery.md``. The backend and the
        extractor are not saved; choose them again in :meth:`load`.

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        vectors = np.ascontiguousarray(self._vectors[: self._size], dtype="<f4")
        records = json.dumps(
            {"ids": self._ids[: self._size].tolist(), "labels": self._labels, "metadata": self._metadata},
            ensure_ascii=False, allow_nan=False, separators=(",", ":"),
        ).encode("utf-8")
        header = _Header(
            format="shitu-features-gallery", version=FORMAT_VERSION, dim=self._dim, metric=self._metric,
            count=self._size, next_id=self._next_id, dtype="<f4", vectors_offset=0,
            vectors_nbytes=vectors.nbytes, vectors_sha256=hashlib.sha256(_bytes_of(vectors)).hexdigest(),
            records_offset=0, records_nbytes=len(records), records_sha256=hashlib.sha256(records).hexdigest(),
            created_by=f"shitu-features {__version__}",
        )
        header_bytes = _header_bytes(header)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_PREAMBLE.pack(_MAGIC, FORMAT_VERSION, len(header_bytes)))
                f.write(hashlib.sha256(header_bytes).digest())
                f.write(header_bytes)
                f.write(b"\0" * (_vectors_offset(len(header_bytes)) - f.tell()))
                f.write(_bytes_of(vectors))
                f.write(records)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, path)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        logger.info("saved gallery of %d items to %s", self._size, path)
        return path

    @classmethod
    def load(
        cls,
        path: PathLike,
        *,
        backend: str = "numpy",
        extractor: Optional[Embedder] = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> Gallery:
        """Read a gallery written by :meth:`save`, verifying sizes and checksums first.

        Args:
            path: The gallery file.
            backend: Search backend of the loaded gallery.
            extractor: Optional extractor for image inputs.
            block_size: See :class:`Gallery`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            GalleryFormatError: The file is not a gallery, is of an unsupported version, truncated or corrupted.
        """
        path = Path(path)
        with open(path, "rb") as f:
            header, vectors, records = _read_file(f, os.fstat(f.fileno()).st_size, path)
        gallery = cls(header.dim, backend=backend, metric=header.metric, extractor=extractor, block_size=block_size)
        gallery._vectors, gallery._size = vectors, header.count
        gallery._ids = np.asarray(records["ids"], dtype=np.int64).reshape(-1)
        gallery._labels, gallery._metadata = records["labels"], records["metadata"]
        gallery._next_id = header.next_id
        gallery._index.rebuild(gallery.vectors)
        return gallery

    # ------------------------------------------------------------------------------------------ helpers

    def _to_vectors(self, data: Any, caller: str) -> Tuple[npt.NDArray[np.float32], bool]:
        """Vectors [N, dim] float32 (normalized for cosine) from vectors or images, and whether one was given."""
        if isinstance(data, np.ndarray) and data.dtype.kind == "f":
            if data.ndim not in (1, 2) or data.shape[-1] != self._dim:
                raise InvalidInputError(
                    f"{caller}() expects float vectors of shape [N, {self._dim}] or [{self._dim}], got {data.shape}"
                    " (to pass images, give a path or a list of images and an extractor)"
                )
            single, vectors = data.ndim == 1, np.ascontiguousarray(data.reshape(-1, self._dim), dtype=np.float32)
        else:
            vectors, single = self._embed(data, caller)
        if not np.isfinite(vectors).all():
            raise InvalidInputError(f"{caller}() got vectors with NaN or infinite values")
        if self._metric == "cosine":
            vectors = l2_normalize(vectors)
        return vectors, single

    def _embed(self, images: Any, caller: str) -> Tuple[npt.NDArray[np.float32], bool]:
        if self._extractor is None:
            raise InvalidInputError(
                f"{caller}() got {type(images).__name__}, not a float vector array [N, {self._dim}]; to pass images,"
                " create the gallery with an extractor: Gallery(extractor=Extractor.from_pretrained(...))"
            )
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            return np.empty((0, self._dim), dtype=np.float32), False
        out = np.asarray(self._extractor.embed(batch), dtype=np.float32)
        if out.size != len(batch) * self._dim:
            raise InvalidInputError(
                f"the extractor returned shape {out.shape} for {len(batch)} images; the gallery dim is {self._dim}"
            )
        return out.reshape(len(batch), self._dim), single

    def _new_ids(self, ids: Any, num: int) -> npt.NDArray[np.int64]:
        if ids is None:
            return np.arange(self._next_id, self._next_id + num, dtype=np.int64)
        new_ids = _as_id_array(ids)
        if new_ids.shape[0] != num:
            raise InvalidInputError(f"add() got {new_ids.shape[0]} ids for {num} items")
        if np.unique(new_ids).shape[0] != num:
            raise GalleryIdError(f"add() got repeated ids: {sorted(_duplicates(new_ids))[:10]}")
        present = new_ids[np.isin(new_ids, self._ids[: self._size])]
        if present.size:
            raise GalleryIdError(f"ids already in the gallery: {present[:10].tolist()}; remove them first")
        return new_ids

    def _rows_of(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        stored = self._ids[: self._size]
        order = np.argsort(stored, kind="stable")
        pos = np.searchsorted(stored, ids, sorter=order)
        pos = np.minimum(pos, max(self._size - 1, 0))
        found = (stored[order[pos]] == ids) if self._size else np.zeros(ids.shape, dtype=bool)
        if not found.all():
            raise GalleryIdError(f"ids not in the gallery: {ids[~found][:10].tolist()}")
        return order[pos]

    def _reserve(self, rows: int) -> None:
        """Grow the storage geometrically, so that many small adds stay linear in total."""
        capacity = self._vectors.shape[0]
        if rows <= capacity:
            return
        capacity = max(rows, capacity + capacity // 2, 1024)
        vectors = np.empty((capacity, self._dim), dtype=np.float32)
        vectors[: self._size] = self._vectors[: self._size]
        ids = np.empty(capacity, dtype=np.int64)
        ids[: self._size] = self._ids[: self._size]
        self._vectors, self._ids = vectors, ids


# ---------------------------------------------------------------------------------------------- validation


def _as_id_array(ids: Any) -> npt.NDArray[np.int64]:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InvalidInputError(f"ids must be ints (a scalar or a 1-D sequence), got dtype {arr.dtype}, shape "
                                f"{arr.shape}")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise InvalidInputError(f"ids must be non-negative (-1 marks padding in search results), got {arr.min()}")
    return arr


def _duplicates(ids: npt.NDArray[np.int64]) -> List[int]:
    values, counts = np.unique(ids, return_counts=True)
    return values[counts > 1].tolist()


def _validate_labels(labels: Any, num: int) -> List[Label]:
    if isinstance(labels, (str, int, np.integer)):  # one label for one item (np.str_ is a str)
        items = [labels]
    elif isinstance(labels, np.ndarray):
        items = labels.reshape(-1).tolist() if labels.ndim == 1 else [labels]  # [N, 1] and up: rejected below
    else:
        items = list(labels)
    if len(items) != num:
        raise InvalidInputError(f"got {len(items)} labels for {num} items")
    out: List[Label] = []
    for label in items:
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, str, np.integer)):
            raise InvalidInputError(f"labels must be ints or strs, got {label!r} ({type(label).__name__})")
        out.append(str(label) if isinstance(label, str) else int(label))
    return out


def _validate_metadata(metadata: Any, num: int) -> List[Optional[Dict[str, Any]]]:
    if metadata is None:
        return [None] * num
    items = list(metadata)
    if len(items) != num:
        raise InvalidInputError(f"got {len(items)} metadata entries for {num} items")
    out: List[Optional[Dict[str, Any]]] = []
    for i, meta in enumerate(items):
        if meta is not None and not isinstance(meta, dict):
            raise InvalidInputError(f"metadata[{i}] must be a dict or None, got {type(meta).__name__}")
        try:
            # A JSON round trip stores exactly what save() writes and load() returns (tuples become lists).
            out.append(None if meta is None else json.loads(json.dumps(meta, allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"metadata[{i}] is not JSON-serializable: {exc}") from exc
    return out


# ------------------------------------------------------------------------------------------------ file I/O


def _header_bytes(header: _Header) -> bytes:
    """Header JSON with the final offsets (they depend on the header's own length, hence the fixed point)."""
    offsets = {"vectors_offset": 0, "records_offset": 0}
    while True:
        data = header.model_copy(update=offsets).model_dump_json().encode("utf-8")
        vectors_offset = _vectors_offset(len(data))
        wanted = {"vectors_offset": vectors_offset, "records_offset": vectors_offset + header.vectors_nbytes}
        if wanted == offsets:
            return data
        offsets = wanted


def _bytes_of(array: np.ndarray) -> memoryview:
    """A writable byte view of a C-contiguous array (``memoryview.cast`` refuses empty arrays)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def _vectors_offset(header_len: int) -> int:
    end = _PREAMBLE.size + 32 + header_len
    return -(-end // _ALIGN) * _ALIGN


def _read_exact(f: Any, n: int, what: str, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GalleryFormatError(f"{path}: truncated gallery file (the {what} is cut short)")
    return data


def _read_file(f: Any, file_size: int, path: Path) -> Tuple[_Header, npt.NDArray[np.float32], Dict[str, Any]]:
    preamble = _read_exact(f, _PREAMBLE.size, "preamble", path)
    magic, version, header_len = _PREAMBLE.unpack(preamble)
    if magic != _MAGIC:
        raise GalleryFormatError(f"{path}: not a shitu-features gallery file (bad magic bytes {magic!r})")
    if version != FORMAT_VERSION:
        raise GalleryFormatError(
            f"{path}: gallery format version {version} is not supported by shitu-features {__version__}, which "
            f"reads version {FORMAT_VERSION}; upgrade shitu-features or re-save the gallery"
        )
    if _PREAMBLE.size + 32 + header_len > file_size:
        raise GalleryFormatError(f"{path}: truncated gallery file (the header is cut short)")
    digest = _read_exact(f, 32, "header checksum", path)
    header_data = _read_exact(f, header_len, "header", path)
    if hashlib.sha256(header_data).digest() != digest:
        raise GalleryFormatError(f"{path}: corrupted gallery file (header checksum mismatch)")
    try:
        header = _Header.model_validate_json(header_data)
    except ValidationError as exc:
        raise GalleryFormatError(f"{path}: invalid gallery header: {exc}") from exc
    _check_layout(header, header_len, file_size, path)
    f.seek(header.vectors_offset)
    vectors = np.empty((header.count, header.dim), dtype="<f4")
    buffer = _bytes_of(vectors)
    hasher = hashlib.sha256()
    for start in range(0, header.vectors_nbytes, _READ_CHUNK):
        chunk = buffer[start : start + _READ_CHUNK]
        if f.readinto(chunk) != len(chunk):
            raise GalleryFormatError(f"{path}: truncated gallery file (the vectors are cut short)")
        hasher.update(chunk)
    if hasher.hexdigest() != header.vectors_sha256:
        raise GalleryFormatError(f"{path}: corrupted gallery file (vectors checksum mismatch)")
    records_data = _read_exact(f, header.records_nbytes, "records", path)
    if hashlib.sha256(records_data).hexdigest() != header.records_sha256:
        raise GalleryFormatError(f"{path}: corrupted gallery file (records checksum mismatch)")
    return header, vectors.astype(np.float32, copy=False), _parse_records(records_data, header, path)


def _check_layout(header: _Header, header_len: int, file_size: int, path: Path) -> None:
    expected = {
        "vectors_offset": _vectors_offset(header_len),
        "vectors_nbytes": header.count * header.dim * 4,
        "records_offset": header.vectors_offset + header.vectors_nbytes,
    }
    for key, value in expected.items():
        if getattr(header, key) != value:
            raise GalleryFormatError(f"{path}: inconsistent gallery header ({key} is {getattr(header, key)}, "
                                     f"expected {value})")
    end = header.records_offset + header.records_nbytes
    if file_size < end:
        raise GalleryFormatError(f"{path}: truncated gallery file ({file_size} bytes, the header says {end})")
    if file_size > end:
        raise GalleryFormatError(f"{path}: corrupted gallery file ({file_size - end} unexpected trailing bytes)")


def _parse_records(data: bytes, header: _Header, path: Path) -> Dict[str, Any]:
    try:
        records = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise GalleryFormatError(f"{path}: corrupted gallery records: {exc}") from exc
    if not isinstance(records, dict) or set(records) != {"ids", "labels", "metadata"}:
        raise GalleryFormatError(f"{path}: gallery records must be an object with ids, labels and metadata")
    ids, labels, metadata = records["ids"], records["labels"], records["metadata"]
    if not all(isinstance(v, list) and len(v) == header.count for v in (ids, labels, metadata)):
        raise GalleryFormatError(f"{path}: gallery records do not hold {header.count} ids, labels and metadata")
    if not all(type(i) is int and 0 <= i < header.next_id for i in ids) or len(set(ids)) != len(ids):
        raise GalleryFormatError(f"{path}: gallery ids must be unique ints in [0, next_id={header.next_id})")
    if not all(type(label) in (int, str) for label in labels):
        raise GalleryFormatError(f"{path}: gallery labels must be ints or strs")
    if not all(meta is None or isinstance(meta, dict) for meta in metadata):
        raise GalleryFormatError(f"{path}: gallery metadata entries must be objects or null")
    return records
