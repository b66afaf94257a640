"""Batch loader that decodes and augments in worker threads, deterministically.

Decoding (``cv2.imdecode``), resizing, rotation and normalisation spend their time in OpenCV / NumPy code
that releases the GIL, so a thread pool keeps several cores busy without the per-batch pickling and
shared-memory copies of worker processes (measured in docs/data.md). Each batch is assembled by one worker
into a preallocated array; up to ``prefetch`` batches are in flight while the consumer trains on the current one.

Determinism: sample ``j`` of batch ``b`` in epoch ``e`` on rank ``r`` draws its augmentation from
``default_rng([seed, e, r, b, j])``, so the batches do not depend on ``num_workers`` or on timing.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, Protocol

import numpy as np

__all__ = ["Batch", "DataLoader", "make_loader"]

logger = logging.getLogger(__name__)


class _Dataset(Protocol):
    def __len__(self) -> int: ...

    def get(self, index: int, rng: np.random.Generator | None = None) -> tuple: ...


class Batch(NamedTuple):
    """One batch.

    Attributes:
        images: ``[B, 3, H, W]`` float32 (whatever the dataset's transform returns, stacked).
        labels: ``[B]`` int64.
        unique_ids: ``[B]`` int64 when the dataset has unique ids, else ``None``.
        indices: ``[B]`` int64 dataset indices of the samples.
    """

    images: np.ndarray
    labels: np.ndarray
    unique_ids: np.ndarray | None
    indices: np.ndarray


class DataLoader:
    """Iterate ``(images, labels, unique_ids, indices)`` batches of a dataset in the order of a batch sampler.

    Args:
        dataset: has ``get(index, rng)`` returning ``(image, label[, unique_id])``, e.g.
            :class:`~shitu_features.data.ImageDataset`.
        batch_sampler: iterable of index lists with ``__len__`` (``PKSampler``, ``SequentialBatchSampler``,
            ``paddle.io.BatchSampler``, a list of lists); its ``set_epoch`` is called by :meth:`set_epoch`.
        num_workers: worker threads; 0 loads in the calling thread.
        prefetch: batches in flight (default ``2 * num_workers``, at least 1).
        seed: seed of the per-sample generators; default the sampler's ``seed`` attribute, else 0.
        rank: rank mixed into the per-sample seeds; default the sampler's ``rank`` attribute, else 0.

    Example::

        loader = DataLoader(dataset, PKSampler(dataset.labels, 64, 4, seed=0), num_workers=2)
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for images, labels, _, _ in loader:
                ...
    """

    def __init__(
        self,
        dataset: _Dataset,
        batch_sampler: Iterable[Sequence[int]],
        *,
        num_workers: int = 2,
        prefetch: int | None = None,
        seed: int | None = None,
        rank: int | None = None,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.num_workers = int(num_workers)
        self.prefetch = max(1, int(prefetch) if prefetch is not None else 2 * self.num_workers)
        self.seed = int(seed if seed is not None else getattr(batch_sampler, "seed", 0))
        self.rank = int(rank if rank is not None else getattr(batch_sampler, "rank", 0))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (seeds of the augmentation, and the sampler's batches via its ``set_epoch``)."""
        self.epoch = int(epoch)
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def load_batch(self, indices: Sequence[int], batch_index: int, epoch: int | None = None) -> Batch:
        """Load batch ``batch_index`` of ``epoch`` (default the current one); this is what the workers run."""
        epoch = self.epoch if epoch is None else int(epoch)
        first = None
        images: np.ndarray | None = None
        labels = np.empty(len(indices), np.int64)
        uids: np.ndarray | None = None
        for pos, index in enumerate(indices):
            rng = np.random.default_rng([self.seed, epoch, self.rank, batch_index, pos])
            item = self.dataset.get(int(index), rng)
            if first is None:
                first = item
                images = np.empty((len(indices), *np.shape(item[0])), dtype=np.asarray(item[0]).dtype)
                if len(item) > 2:
                    uids = np.empty(len(indices), np.int64)
            images[pos] = item[0]  # type: ignore[index]
            labels[pos] = item[1]
            if uids is not None:
                uids[pos] = item[2]
        return Batch(images, labels, uids, np.asarray(indices, dtype=np.int64))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        """Iterate the current epoch from batch ``start`` on (to resume mid-epoch: the skipped batches are not
        loaded, and the remaining ones are exactly those of an uninterrupted epoch)."""
        epoch = self.epoch
        batches = itertools.islice(enumerate(self.batch_sampler), start, None)  # lazily: a sampler may be long
        if self.num_workers == 0:
            for b, indices in batches:
                yield self.load_batch(indices, b, epoch)
            return
        pool = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="shitu-loader")
        pending: deque[Future[Batch]] = deque()
        try:
            for b, indices in batches:
                pending.append(pool.submit(self.load_batch, indices, b, epoch))
                if len(pending) >= self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"DataLoader(batches={len(self)}, num_workers={self.num_workers}, prefetch={self.prefetch})"


def make_loader(
    dataset: _Dataset,
    batch_sampler: Iterable[Sequence[int]],
    *,
    num_workers: int = 2,
    prefetch: int | None = None,
    seed: int | None = None,
) -> DataLoader:
    """Build a :class:`DataLoader` (same arguments); kept as a function for configs and scripts."""
    return DataLoader(dataset, batch_sampler, num_workers=num_workers, prefetch=prefetch, seed=seed)
