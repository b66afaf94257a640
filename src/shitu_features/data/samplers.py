"""Batch samplers: P identities x K images (PaddleClas ``PKSampler``, spec §6) and sharded sequential batches.

A batch sampler is an iterable of index lists with ``__len__`` and ``set_epoch(epoch)``; the batches are a
pure function of ``(seed, epoch, rank, world_size)``, so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np

from shitu_features.errors import ConfigError

__all__ = ["PKSampler", "SequentialBatchSampler"]

logger = logging.getLogger(__name__)

_SAMPLE_METHODS = ("id_avg_prob", "sample_avg_prob")


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class PKSampler:
    """Batches of P distinct labels x K samples each, seeded and sharded across ranks (spec §6).

    Each step draws ``P * world_size`` distinct labels without replacement, with probabilities given by
    ``sample_method`` (and ``id_list`` / ``ratio``), from a generator seeded by ``(seed, epoch, step)``; so all
    ranks draw the same labels and rank ``r`` keeps labels ``[r * P, (r + 1) * P)``. Ranks therefore never see
    the same identity in the same step, and together they train on exactly what one process with batch
    ``world_size * batch_size`` would. For each kept label, K of its samples are drawn without replacement, or
    with replacement when the label has fewer than K samples (generator seeded by ``(seed, epoch, step, rank)``).
    Batches list each label's K samples contiguously (the layout ``TriHardLoss`` assumes).

    Differences from the reference: its ranks draw independently from the global NumPy RNG (identities can
    repeat across ranks in a step, and runs are not reproducible); ``id_list`` positions here are relabelled
    label ids (sorted original labels), not first-appearance order; a ``batch_size`` that is not a multiple of K
    is refused instead of yielding short batches.

    Args:
        labels: ``[N]`` integer label of each dataset index.
        batch_size: samples per batch on one rank (``P * K``).
        sample_per_id: K.
        seed: base seed; the same seed gives the same batches.
        shuffle: when ``False`` every epoch repeats the batches of epoch 0.
        drop_last: changes only the epoch length (floor instead of ceil, see ``__len__``); batches are always
            full.
        rank: this process's rank.
        world_size: number of ranks.
        sample_method: ``id_avg_prob`` (every label equally likely, the recipe) or ``sample_avg_prob``
            (proportional to the label's sample count).
        id_list: ``[a0, b0, a1, b1, ...]`` inclusive label-id ranges whose probability is multiplied by the
            matching ``ratio`` entry, then renormalised (the recipe's ``id_list`` / ``ratio``).
        ratio: one multiplier per range of ``id_list``.

    Raises:
        ConfigError: inconsistent sizes, fewer labels than ``P * world_size``, unknown ``sample_method``.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        batch_size: int,
        sample_per_id: int = 4,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        sample_method: str = "id_avg_prob",
        id_list: Sequence[int] | None = None,
        ratio: Sequence[float] | None = None,
    ) -> None:
        labels = np.asarray(labels).reshape(-1)
        if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(f"PKSampler needs a non-empty integer label array, got dtype {labels.dtype}")
        if sample_per_id < 1 or batch_size < sample_per_id or batch_size % sample_per_id:
            raise ConfigError(
                f"PKSampler: batch_size ({batch_size}) must be a positive multiple of sample_per_id ({sample_per_id})"
            )
        if sample_method not in _SAMPLE_METHODS:
            raise ConfigError(f"PKSampler: sample_method must be one of {_SAMPLE_METHODS}, got {sample_method!r}")
        _check_rank(rank, world_size)
        self.batch_size = int(batch_size)
        self.sample_per_id = int(sample_per_id)
        self.ids_per_batch = self.batch_size // self.sample_per_id
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.sample_method = sample_method
        self.epoch = 0
        self.num_samples = int(labels.size)

        self.label_ids, inverse = np.unique(labels, return_inverse=True)  # sorted distinct labels
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.label_ids))
        self.indices_by_label: list[np.ndarray] = np.split(order, np.cumsum(counts)[:-1])
        self.probabilities = self._probabilities(counts, id_list, ratio)
        self._uniform = bool(np.all(self.probabilities == self.probabilities[0]))

        needed = self.ids_per_batch * self.world_size
        available = int(np.count_nonzero(self.probabilities))
        if available < needed:
            raise ConfigError(
                f"PKSampler needs {needed} distinct labels per step (batch_size {batch_size} / sample_per_id "
                f"{sample_per_id} x world_size {world_size}) but only {available} labels can be drawn"
            )
        small = int(np.count_nonzero(counts < self.sample_per_id))
        if small:
            logger.info("PKSampler: %d of %d labels have fewer than %d samples and are sampled with replacement",
                        small, len(counts), self.sample_per_id)

    def _probabilities(
        self, counts: np.ndarray, id_list: Sequence[int] | None, ratio: Sequence[float] | None
    ) -> np.ndarray:
        if self.sample_method == "id_avg_prob":
            prob = np.full(len(counts), 1.0 / len(counts))
        else:
            prob = counts / counts.sum()
        if id_list and ratio:
            if len(id_list) != 2 * len(ratio):
                raise ConfigError(f"PKSampler: id_list needs two bounds per ratio, got {id_list!r} / {ratio!r}")
            positions = np.arange(len(counts))
            factor = np.ones(len(counts))
            assigned = np.zeros(len(counts), dtype=bool)
            for (low, high), r in zip(zip(id_list[0::2], id_list[1::2]), ratio):
                # the first matching range wins, as in the reference
                hit = (positions >= low) & (positions <= high) & ~assigned
                factor[hit] = r
                assigned |= hit
            prob = prob * factor
            prob = prob / prob.sum()
        return prob

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` yields (call it before every epoch, as on resume)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch on one rank: ``ceil(ceil(N / world_size) / batch_size)`` (``floor`` with ``drop_last``),
        as the reference's ``DistributedBatchSampler``."""
        per_rank = math.ceil(self.num_samples / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch if self.shuffle else 0
        for step in range(len(self)):
            yield self.batch(epoch, step)

    def batch(self, epoch: int, step: int) -> list[int]:
        """The index list of one step of one epoch on this rank (``__iter__`` yields these)."""
        label_rng = np.random.default_rng([self.seed, epoch, step])
        # uniform weights take numpy's O(P) path instead of the O(C) weighted one (C = 192,612 in the recipe)
        chosen = label_rng.choice(
            len(self.label_ids), size=self.ids_per_batch * self.world_size, replace=False,
            p=None if self._uniform else self.probabilities,
        )
        mine = chosen[self.rank * self.ids_per_batch : (self.rank + 1) * self.ids_per_batch]
        sample_rng = np.random.default_rng([self.seed, epoch, step, self.rank])
        batch: list[int] = []
        for position in mine:
            pool = self.indices_by_label[position]
            replace = len(pool) < self.sample_per_id
            batch.extend(int(i) for i in sample_rng.choice(pool, size=self.sample_per_id, replace=replace))
        return batch

    def __repr__(self) -> str:
        return (
            f"PKSampler(num_samples={self.num_samples}, labels={len(self.label_ids)}, batch_size={self.batch_size}, "
            f"sample_per_id={self.sample_per_id}, seed={self.seed}, rank={self.rank}/{self.world_size})"
        )


class SequentialBatchSampler:
    """In-order batches over a contiguous shard per rank, for evaluation and feature extraction.

    Rank ``r`` gets indices ``[r * S, (r + 1) * S)`` with ``S = ceil(N / world_size)``, the last shard padded
    by repeating index ``N - 1`` so every rank has ``S`` samples (collectives need equal shapes). Gathering
    the per-rank outputs in rank order and keeping the first ``N`` rows restores dataset order exactly.

    Args:
        num_samples: dataset length ``N``.
        batch_size: samples per batch.
        rank: this process's rank.
        world_size: number of ranks.
    """

    def __init__(self, num_samples: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ConfigError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}")
        _check_rank(rank, world_size)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.shard_size = math.ceil(self.num_samples / self.world_size)
        start = self.rank * self.shard_size
        shard = np.arange(start, start + self.shard_size)
        self.indices = np.minimum(shard, self.num_samples - 1)

    def set_epoch(self, epoch: int) -> None:
        """Accepted for interface symmetry; the order never changes."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, self.shard_size, self.batch_size):
            yield [int(i) for i in self.indices[start : start + self.batch_size]]
