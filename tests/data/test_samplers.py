"""PKSampler and SequentialBatchSampler."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from shitu_features.data import PKSampler, SequentialBatchSampler
from shitu_features.errors import ConfigError


def _labels() -> np.ndarray:
    # 30 labels with 1..12 samples each (some below K=4), shuffled so indices of a label are scattered
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(1 + (k % 12), 100 + 7 * k) for k in range(30)])
    return rng.permutation(labels)


def _epoch(sampler: PKSampler, epoch: int = 0) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_every_batch_has_p_distinct_labels_times_k() -> None:
    labels = _labels()
    sampler = PKSampler(labels, batch_size=24, sample_per_id=4, seed=1)
    batches = _epoch(sampler)
    assert len(batches) == math.ceil(len(labels) / 24)
    for batch in batches:
        assert len(batch) == 24
        batch_labels = labels[batch]
        blocks = batch_labels.reshape(6, 4)  # P = 6 contiguous blocks of K = 4
        assert (blocks == blocks[:, :1]).all()
        assert len(set(blocks[:, 0])) == 6
        for block_idx in np.asarray(batch).reshape(6, 4):
            available = int((labels == labels[block_idx[0]]).sum())
            if available >= 4:  # without replacement when the label has enough samples
                assert len(set(block_idx)) == 4


def test_small_labels_are_sampled_with_replacement() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    sampler = PKSampler(labels, batch_size=16, sample_per_id=4, seed=0)
    batch = next(iter(sampler))
    counts = Counter(labels[batch])
    assert counts == {0: 4, 1: 4, 2: 4, 3: 4}
    assert sorted(i for i in batch if labels[i] == 0) == [0, 0, 0, 0]


def test_seeded_runs_repeat_and_epochs_differ() -> None:
    labels = _labels()
    a = PKSampler(labels, 16, 4, seed=7)
    b = PKSampler(labels, 16, 4, seed=7)
    assert _epoch(a, 3) == _epoch(b, 3)
    assert _epoch(a, 3) != _epoch(a, 4)
    assert _epoch(a, 0) != _epoch(PKSampler(labels, 16, 4, seed=8), 0)
    fixed = PKSampler(labels, 16, 4, seed=7, shuffle=False)
    assert _epoch(fixed, 0) == _epoch(fixed, 5)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_see_disjoint_identities_and_images(world_size: int) -> None:
    labels = _labels()
    samplers = [PKSampler(labels, 8, 4, seed=3, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = [_epoch(s, 2) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])
    for step in range(len(per_rank[0])):
        label_sets = [set(labels[per_rank[r][step]]) for r in range(world_size)]
        index_sets = [set(per_rank[r][step]) for r in range(world_size)]
        for r in range(world_size):
            assert len(label_sets[r]) == 2
            for q in range(r):
                assert not label_sets[r] & label_sets[q]
                assert not index_sets[r] & index_sets[q]
    # a rank's batches do not depend on the other ranks being instantiated
    again = PKSampler(labels, 8, 4, seed=3, rank=world_size - 1, world_size=world_size)
    assert _epoch(again, 2) == per_rank[-1]


@pytest.mark.parametrize("n,world_size,batch,drop_last", [(100, 1, 16, False), (100, 1, 16, True), (100, 3, 8, False),
                                                          (100, 3, 8, True), (97, 4, 12, False)])
def test_length_is_the_distributed_batch_sampler_length(n: int, world_size: int, batch: int, drop_last: bool) -> None:
    labels = np.arange(n) % 25
    sampler = PKSampler(labels, batch, 4, seed=0, world_size=world_size, drop_last=drop_last)
    per_rank = math.ceil(n / world_size)
    expected = per_rank // batch if drop_last else math.ceil(per_rank / batch)
    assert len(sampler) == expected == len(_epoch(sampler))


def test_label_probabilities() -> None:
    labels = np.repeat(np.arange(6), [1, 2, 3, 4, 5, 5])
    uniform = PKSampler(labels, 4, 2, seed=0)
    np.testing.assert_allclose(uniform.probabilities, np.full(6, 1 / 6))
    by_count = PKSampler(labels, 4, 2, seed=0, sample_method="sample_avg_prob")
    np.testing.assert_allclose(by_count.probabilities, np.array([1, 2, 3, 4, 5, 5]) / 20)
    weighted = PKSampler(labels, 4, 2, seed=0, id_list=[1, 2, 4, 4], ratio=[4, 2])
    np.testing.assert_allclose(weighted.probabilities, np.array([1, 4, 4, 1, 2, 1]) / 13)
    # heavily weighted labels show up more often
    heavy = PKSampler(labels, 2, 2, seed=0, id_list=[0, 0], ratio=[50])
    firsts = Counter(int(labels[heavy.batch(0, s)[0]]) for s in range(300))
    assert firsts[0] > 200


def test_config_errors() -> None:
    labels = np.repeat(np.arange(5), 4)
    with pytest.raises(ConfigError, match="multiple"):
        PKSampler(labels, 10, 4, seed=0)
    with pytest.raises(ConfigError, match="distinct labels"):
        PKSampler(labels, 12, 4, seed=0, world_size=2)
    with pytest.raises(ConfigError, match="rank"):
        PKSampler(labels, 8, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="sample_method"):
        PKSampler(labels, 8, 4, seed=0, sample_method="uniform")


@pytest.mark.parametrize("n,world_size,batch", [(10, 1, 4), (10, 3, 2), (5, 4, 3), (64, 8, 5), (1, 2, 1)])
def test_sequential_shards_gather_back_to_dataset_order(n: int, world_size: int, batch: int) -> None:
    shards = []
    for rank in range(world_size):
        sampler = SequentialBatchSampler(n, batch, rank=rank, world_size=world_size)
        batches = list(sampler)
        assert len(batches) == len(sampler) and all(len(b) <= batch for b in batches)
        shards.append([i for b in batches for i in b])
    assert len({len(s) for s in shards}) == 1  # equal sizes for collectives
    gathered = [i for s in shards for i in s]
    assert gathered[:n] == list(range(n))
