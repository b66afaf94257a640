"""Embedding a list of image paths batch by batch, with a progress bar and skip-on-error bookkeeping.

``Extractor.iter_embed`` forms the batches as consecutive slices of ``batch_size`` from the start of the list it
is given, so the batch composition is a pure function of that list: an interrupted-then-resumed ``embed`` run,
which embeds chunk by chunk, feeds the model exactly the same batches as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from shitu_features.cli._common import one_line, progress_bar, say


@dataclass
class Embedded:
    """Embeddings of the paths that could be read, and why the others could not.

    Attributes:
        vectors: ``float32 [len(ok), D]``, row ``r`` belongs to ``paths[ok[r]]``.
        ok: Indices (into the embedded list) of the rows of ``vectors``, ascending.
        failed: ``(index, one-line reason)`` of each input that was skipped, ascending.
    """

    vectors: np.ndarray
    ok: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)


def embed_paths(extractor: Any, paths: Sequence[str], *, batch_size: int, normalize: bool = True,
                on_error: str = "raise", bar: Any = None) -> Embedded:
    """Embed ``paths`` in batches of ``batch_size``.

    Args:
        extractor: A loaded :class:`~shitu_features.inference.extractor.Extractor`.
        paths: Image paths.
        batch_size: Images per forward pass.
        normalize: L2-normalise the rows (the library default), else raw BN-neck features.
        on_error: ``"raise"`` stops at the first unreadable image; ``"skip"`` leaves it out and records why.
        bar: A progress bar with ``update(n)``, advanced after each batch.

    Returns:
        The :class:`Embedded` rows (``float32``, C-contiguous).
    """
    parts: list[np.ndarray] = []
    result = Embedded(np.empty((0, int(extractor.embedding_size)), np.float32))
    for batch in extractor.iter_embed(list(paths), batch_size, normalize=normalize, on_error=on_error):
        parts.append(batch.embeddings)  # [n, D]; n is 0 for an all-failed batch
        result.ok.extend(int(i) for i in batch.indices)
        result.failed.extend((int(f.index), one_line(f.reason)) for f in batch.failed)
        if bar is not None:
            bar.update(len(batch.indices) + len(batch.failed))
    if parts:
        result.vectors = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)
    if len(result.ok) != result.vectors.shape[0]:  # an invariant of iter_embed; never write misaligned rows
        raise RuntimeError(f"iter_embed returned {result.vectors.shape[0]} rows for {len(result.ok)} images")
    return result


def embed_and_report(args: Any, extractor: Any, paths: Sequence[str], desc: str) -> Embedded:
    """:func:`embed_paths` with the command's ``--batch-size`` / ``--on-error``, a progress bar named ``desc``, and
    one ``skipped PATH: reason`` line on stderr per unreadable image.

    Returns:
        The :class:`Embedded` rows.
    """
    bar = progress_bar(args, total=len(paths), desc=desc)
    try:
        got = embed_paths(extractor, paths, batch_size=args.batch_size, on_error=args.on_error, bar=bar)
    finally:
        bar.close()
    for index, reason in got.failed:
        say(args, f"skipped {paths[index]}: {reason}")
    return got
