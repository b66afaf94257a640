"""ImageDataset from list files, folders and CSVs of the shared datasets; relabelling and label maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shitu_features.data import ImageDataset, LabelMap, class_disjoint_split, eval_transform, train_transform
from shitu_features.data.images import load_image
from shitu_features.errors import ConfigError, DatasetFormatError, ImageNotFoundError


@pytest.fixture(scope="module")
def faces(data_dir: Path) -> Path:
    return data_dir / "att_faces"


def test_list_file_two_columns_relabels_sorted(tmp_path: Path, faces: Path) -> None:
    lst = tmp_path / "train.txt"
    lst.write_text("images/s3/1.pgm 70\nimages/s3/2.pgm 70\n\nimages/s12/1.pgm 5\nimages/s7/4.pgm 123\n")
    ds = ImageDataset.from_list_file(lst, root=faces)
    assert len(ds) == 4 and ds.unique_ids is None
    assert ds.label_map.originals == (5, 70, 123)  # sorted numerically, not in file or set order
    assert ds.labels.tolist() == [1, 1, 0, 2] and ds.labels.dtype == np.int64
    image, label = ds[2]
    assert image.shape == (3, 224, 224) and image.dtype == np.float32 and label == 0
    np.testing.assert_array_equal(image, eval_transform()(load_image(faces / "images/s12/1.pgm")))


def test_list_file_three_columns_yields_unique_ids(tmp_path: Path, faces: Path) -> None:
    (tmp_path / "images").symlink_to(faces / "images")
    lst = tmp_path / "val.txt"
    lst.write_text("images/s1/1.pgm 1 0\nimages/s1/2.pgm 1 1\nimages/s2/1.pgm 2 2\n")
    ds = ImageDataset.from_list_file(lst)  # root defaults to the list file's folder
    assert ds.unique_ids.tolist() == [0, 1, 2]
    image, label, uid = ds[1]
    assert (int(label), int(uid)) == (0, 1) and image.shape == (3, 224, 224)


@pytest.mark.parametrize(
    "text,match",
    [
        ("a.pgm\n", ":1: expected"),
        ("a.pgm 1\nb.pgm 1 2\n", ":2: 3 columns"),
        ("a.pgm one\n", "label must be an integer"),
    ],
)
def test_malformed_list_files(tmp_path: Path, text: str, match: str) -> None:
    lst = tmp_path / "bad.txt"
    lst.write_text(text)
    with pytest.raises(DatasetFormatError, match=match):
        ImageDataset.from_list_file(lst, check_files=False)


def test_missing_images_are_reported(tmp_path: Path, faces: Path) -> None:
    lst = tmp_path / "train.txt"
    lst.write_text("images/s1/1.pgm 0\nimages/s1/99.pgm 0\n")
    with pytest.raises(ImageNotFoundError, match="1 of 2 .*99.pgm"):
        ImageDataset.from_list_file(lst, root=faces)


def test_folder_per_class(faces: Path) -> None:
    ds = ImageDataset.from_folder(faces / "images")
    assert len(ds) == 400 and ds.num_classes == 40
    assert ds.label_map.originals[:3] == ("s1", "s10", "s11")  # sorted directory names
    assert np.bincount(ds.labels).tolist() == [10] * 40
    assert all(Path(p).parent.name == ds.label_map.originals[y] for p, y in zip(ds.paths, ds.labels))


def test_csv_of_each_shared_dataset(data_dir: Path) -> None:
    faces = ImageDataset.from_csv(data_dir / "att_faces" / "labels.csv", label_column="subject_id")
    assert len(faces) == 400 and faces.label_map.originals == tuple(range(40))
    by_name = ImageDataset.from_csv(data_dir / "att_faces" / "labels.csv", label_column="subject_dir")
    assert by_name.num_classes == 40 and by_name.label_map.originals[:2] == ("s1", "s10")
    grocery = ImageDataset.from_csv(data_dir / "grocery_store" / "labels.csv", label_column="fine_id",
                                    where={"split": "train"})
    assert len(grocery) == 2640 and grocery.num_classes == 81
    both = ImageDataset.from_csv(data_dir / "grocery_store" / "labels.csv", label_column="fine_id",
                                 where={"split": ["val", "test"]}, check_files=False)
    assert len(both) == 296 + 2485
    omniglot = ImageDataset.from_csv(data_dir / "omniglot_small" / "labels.csv", label_column="class_id",
                                     check_files=False)
    assert omniglot.num_classes == 242
    with pytest.raises(DatasetFormatError, match="subject_id"):
        ImageDataset.from_csv(data_dir / "att_faces" / "labels.csv")  # no "label" column: the message lists them


def test_label_map_round_trip_and_reuse(faces: Path) -> None:
    query = ImageDataset.from_folder(faces / "images")
    restored = LabelMap.from_dict(json.loads(json.dumps(query.label_map.to_dict())))
    assert restored == query.label_map
    assert restored.decode(restored.encode(["s7", "s1"])) == ["s7", "s1"]
    gallery = ImageDataset(paths=[faces / "images/s7/1.pgm"], labels=["s7"], label_map=restored)
    assert gallery.labels.tolist() == [query.label_map.originals.index("s7")]
    with pytest.raises(ConfigError, match="not in the label map"):
        ImageDataset(paths=[faces / "images/s7/1.pgm"], labels=["s99"], label_map=restored)


def test_seeded_access_with_train_transform(faces: Path) -> None:
    ds = ImageDataset.from_folder(faces / "images", transform=train_transform(64, seed=0))
    a, _ = ds[(5, 11)]
    b, _ = ds.get(5, np.random.default_rng(11))
    c, _ = ds[(5, 12)]
    assert a.shape == (3, 64, 64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_relabel_false_keeps_integer_labels(faces: Path) -> None:
    ds = ImageDataset([faces / "images/s1/1.pgm", faces / "images/s2/1.pgm"], [4, 9], relabel=False)
    assert ds.labels.tolist() == [4, 9] and ds.label_map is None and ds.num_classes == 10


def test_class_disjoint_split_is_seeded_and_disjoint(faces: Path) -> None:
    ds = ImageDataset.from_folder(faces / "images")
    train, test = class_disjoint_split(ds, 0.5, seed=0)
    assert len(train) + len(test) == 400 and train.num_classes == test.num_classes == 20
    assert not set(train.original_labels) & set(test.original_labels)
    assert sorted(set(train.labels.tolist())) == list(range(20))
    again, _ = class_disjoint_split(ds, 0.5, seed=0)
    assert again.paths == train.paths
    other, _ = class_disjoint_split(ds, 0.5, seed=1)
    assert other.paths != train.paths


def test_package_exports_resolve_and_load_lazily() -> None:
    import subprocess
    import sys

    import shitu_features.data as data

    assert all(getattr(data, name) is not None for name in data.__all__)
    # the inference path imports data.images only: that must not pull the training pipeline in (nor cycle)
    code = (
        "import sys, shitu_features.data.images, shitu_features.inference.preprocess\n"
        "assert 'shitu_features.data.datasets' not in sys.modules\n"
        "from shitu_features.data import ImageDataset, train_transform\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
