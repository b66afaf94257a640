"""Threaded DataLoader on real images: batch layout, determinism across worker counts, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shitu_features.data import (
    DataLoader,
    ImageDataset,
    PKSampler,
    SequentialBatchSampler,
    eval_transform,
    make_loader,
    train_transform,
)
from shitu_features.data.images import load_image
from shitu_features.errors import ImageDecodeError
from shitu_features.inference.preprocess import PreprocessConfig


@pytest.fixture(scope="module")
def faces(data_dir: Path) -> ImageDataset:
    # 12 identities x 10 images of att_faces, small output size to stay fast
    full = ImageDataset.from_csv(data_dir / "att_faces" / "labels.csv", label_column="subject_id",
                                 transform=train_transform(48, seed=0))
    return full.subset(np.flatnonzero(full.labels < 12))


def _epoch(loader: DataLoader, epoch: int) -> list:
    loader.set_epoch(epoch)
    return list(loader)


def test_batches_follow_the_sampler(faces: ImageDataset) -> None:
    sampler = PKSampler(faces.labels, 16, 4, seed=5)
    batches = _epoch(DataLoader(faces, sampler, num_workers=2), 1)
    assert len(batches) == len(sampler) == 8
    for batch, indices in zip(batches, sampler):
        assert batch.images.shape == (16, 3, 48, 48) and batch.images.dtype == np.float32
        assert batch.labels.dtype == np.int64 and batch.unique_ids is None
        assert batch.indices.tolist() == indices
        np.testing.assert_array_equal(batch.labels, faces.labels[indices])


def test_same_batches_for_any_worker_count(faces: ImageDataset) -> None:
    sampler = PKSampler(faces.labels, 8, 4, seed=2)
    runs = [_epoch(make_loader(faces, sampler, num_workers=n), 3) for n in (0, 1, 3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a.images, b.images)
            np.testing.assert_array_equal(a.labels, b.labels)
    # the documented per-sample seed: default_rng([seed, epoch, rank, batch, position])
    first = runs[0][2]
    image, _ = faces.get(int(first.indices[1]), np.random.default_rng([2, 3, 0, 2, 1]))
    np.testing.assert_array_equal(first.images[1], image)
    # another epoch: other batches and other augmentations of repeated images
    assert [b.indices.tolist() for b in _epoch(make_loader(faces, sampler, num_workers=2), 4)] != [
        b.indices.tolist() for b in runs[0]]
    # resuming mid-epoch gives the remaining batches of the uninterrupted epoch
    resumed = make_loader(faces, sampler, num_workers=2)
    resumed.set_epoch(3)
    tail = list(resumed.iterate(start=2))
    assert len(tail) == len(runs[0]) - 2
    for a, b in zip(runs[0][2:], tail):
        np.testing.assert_array_equal(a.images, b.images)
    fixed = [[3, 3]]
    a, b = DataLoader(faces, fixed, num_workers=0), DataLoader(faces, fixed, num_workers=0)
    assert not np.array_equal(_epoch(a, 0)[0].images, _epoch(b, 1)[0].images)


def test_eval_loader_with_unique_ids(tmp_path: Path, data_dir: Path) -> None:
    root = data_dir / "att_faces"
    lst = tmp_path / "query.txt"
    lst.write_text("".join(f"images/s{1 + i // 3}/{1 + i % 3}.pgm {i // 3} {i}\n" for i in range(7)))
    config = PreprocessConfig(size=(32, 40))
    ds = ImageDataset.from_list_file(lst, root=root, transform=eval_transform(config))
    batches = list(DataLoader(ds, SequentialBatchSampler(len(ds), 3), num_workers=2))
    assert [len(b.labels) for b in batches] == [3, 3, 1]
    images = np.concatenate([b.images for b in batches])
    assert images.shape == (7, 3, 40, 32)
    assert np.concatenate([b.unique_ids for b in batches]).tolist() == list(range(7))
    expected = eval_transform(config)(load_image(root / "images/s2/1.pgm"))
    np.testing.assert_array_equal(images[3], expected)


def test_decode_errors_reach_the_consumer_and_early_exit_is_clean(tmp_path: Path, data_dir: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    good = data_dir / "att_faces" / "images" / "s1" / "1.pgm"
    ds = ImageDataset([good, good, bad], [0, 0, 1], transform=eval_transform(PreprocessConfig(size=(16, 16))))
    loader = DataLoader(ds, [[0, 1], [2, 0], [1, 0]], num_workers=2)
    iterator = iter(loader)
    assert next(iterator).labels.tolist() == [0, 0]
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        next(iterator)
    shapes = []
    for batch in DataLoader(ds, [[0, 1]] * 20, num_workers=2, prefetch=4):
        shapes.append(batch.images.shape)
        break  # abandoning the iteration must not hang (pending work is cancelled)
    assert shapes == [(2, 3, 16, 16)]
