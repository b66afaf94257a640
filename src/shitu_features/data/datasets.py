"""Labelled image datasets: reference list files, folder-per-class trees and CSV files (spec §6).

Labels are relabelled deterministically: the distinct original labels are sorted (numerically for integers,
lexicographically for strings) and numbered ``0 .. C-1``. The mapping is a :class:`LabelMap` a trainer saves
with its checkpoint (``label_map.to_dict()``), so label ids are reproducible; the reference numbers labels in
``set`` iteration order instead.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from shitu_features.data.images import load_image
from shitu_features.data.transforms import Transform, eval_transform
from shitu_features.errors import ConfigError, DatasetFormatError, ImageNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "ImageDataset", "LabelMap", "class_disjoint_split"]

logger = logging.getLogger(__name__)

Label = Union[int, str]
PathLike = Union[str, "os.PathLike[str]"]

#: File suffixes :meth:`ImageDataset.from_folder` picks up (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp")

_INT_RE = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class LabelMap:
    """Original label <-> contiguous id, id ``i`` being the ``i``-th smallest original label.

    Attributes:
        originals: the distinct original labels, sorted; ``originals[i]`` has id ``i``.
    """

    originals: tuple[Label, ...]
    _index: dict[Label, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {label: i for i, label in enumerate(self.originals)}
        if len(index) != len(self.originals):
            raise ConfigError("LabelMap originals must be distinct")
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_labels(cls, labels: Sequence[Label]) -> LabelMap:
        """Sorted distinct ``labels`` (all int or all str)."""
        distinct = {v.item() if isinstance(v, np.generic) else v for v in labels}
        if len({type(v) for v in distinct}) > 1:
            raise ConfigError("labels mix integers and strings; make them one type")
        return cls(tuple(sorted(distinct)))

    def __len__(self) -> int:
        return len(self.originals)

    def encode(self, labels: Sequence[Label]) -> np.ndarray:
        """Original labels -> ``[N]`` int64 ids.

        Raises:
            ConfigError: a label is not in the map (the message lists up to five).
        """
        try:
            return np.fromiter((self._index[v] for v in labels), dtype=np.int64, count=len(labels))
        except KeyError:
            unknown = sorted({v for v in labels if v not in self._index}, key=str)
            raise ConfigError(f"{len(unknown)} labels are not in the label map, e.g. {unknown[:5]}") from None

    def decode(self, ids: Sequence[int]) -> list[Label]:
        """Ids -> original labels."""
        return [self.originals[int(i)] for i in ids]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, for saving with a checkpoint."""
        return {"originals": list(self.originals)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelMap:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(data["originals"]))


class ImageDataset:
    """Images with integer labels (and optional unique ids), decoded and transformed on access.

    Item ``i`` is ``(image, label)`` or, when the dataset has unique ids, ``(image, label, unique_id)``:
    ``image`` is the transform's output (``[3, H, W]`` float32 for the provided transforms), ``label`` an
    ``np.int64`` id, ``unique_id`` an ``np.int64`` (the reference VeriWild "camera" column, used to exclude
    self-matches in retrieval evaluation, spec §6, §8).

    ``dataset[i]`` calls the transform without a generator (its fallback decides); ``dataset[(i, seed)]`` and
    :meth:`get` with ``rng`` make the augmentation a function of the seed, as the loader does.

    Args:
        paths: image file paths.
        labels: original label of each image (int or str).
        unique_ids: optional integer id of each image.
        transform: ``transform(img, rng)`` on ``[H, W, 3]`` uint8 RGB; default the deploy eval transform.
        relabel: map labels to ``0 .. C-1`` by sorted original label (default). ``False`` keeps integer labels
            as they are.
        label_map: use this mapping instead of building one (e.g. a gallery sharing the query's ids).
        check_files: verify at construction that every path is a file.

    Raises:
        ImageNotFoundError: ``check_files`` and some paths are missing (the message counts them and shows five).
        ConfigError: inconsistent lengths, non-integer labels with ``relabel=False``, labels outside ``label_map``.
    """

    def __init__(
        self,
        paths: Sequence[PathLike],
        labels: Sequence[Label],
        *,
        unique_ids: Sequence[int] | None = None,
        transform: Transform | None = None,
        relabel: bool = True,
        label_map: LabelMap | None = None,
        check_files: bool = True,
    ) -> None:
        if len(paths) != len(labels) or (unique_ids is not None and len(unique_ids) != len(paths)):
            raise ConfigError("paths, labels and unique_ids must have the same length")
        if len(paths) == 0:
            raise ConfigError("a dataset needs at least one image")
        self.paths: list[str] = [os.fspath(p) for p in paths]
        self.original_labels: list[Label] = list(labels)
        self.unique_ids: np.ndarray | None = None if unique_ids is None else np.asarray(unique_ids, np.int64)
        self.transform: Transform = transform if transform is not None else eval_transform()
        if label_map is not None:
            self.label_map: LabelMap | None = label_map
            self.labels = label_map.encode(self.original_labels)
        elif relabel:
            self.label_map = LabelMap.from_labels(self.original_labels)
            self.labels = self.label_map.encode(self.original_labels)
        else:
            if not all(isinstance(v, (int, np.integer)) and v >= 0 for v in self.original_labels):
                raise ConfigError("relabel=False needs non-negative integer labels")
            self.label_map = None
            self.labels = np.asarray(self.original_labels, dtype=np.int64)
        if check_files:
            missing = [p for p in self.paths if not os.path.isfile(p)]
            if missing:
                raise ImageNotFoundError(
                    f"{len(missing)} of {len(self.paths)} image files are missing, e.g. {missing[:5]}"
                )

    # ---- constructors -------------------------------------------------------------------------------------

    @classmethod
    def from_list_file(
        cls, list_path: PathLike, root: PathLike | None = None, *, delimiter: str | None = None, **kwargs: Any
    ) -> ImageDataset:
        """Read a reference list file: ``path label`` or ``path label unique_id`` per line (spec §6).

        Args:
            list_path: the list file (``cls_label_path`` in the reference YAML).
            root: directory the paths are relative to (``image_root``); default the list file's directory.
            delimiter: column separator; ``None`` (default) splits on runs of whitespace. The reference
                splits on a single space.
            **kwargs: passed to :class:`ImageDataset` (``transform``, ``relabel``, ``label_map``, ...).

        Raises:
            DatasetFormatError: a line does not have 2 or 3 columns, the columns vary between lines, or a label
                or id is not an integer (the message names the line).
        """
        list_path = Path(list_path)
        root = Path(root) if root is not None else list_path.parent
        paths, labels, uids = [], [], []
        ncols = None
        with open(list_path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                parts = [p.strip() for p in line.strip().split(delimiter)]
                where = f"{list_path}:{lineno}"
                if len(parts) not in (2, 3):
                    raise DatasetFormatError(f"{where}: expected 'path label [unique_id]', got {line.strip()!r}")
                if ncols is None:
                    ncols = len(parts)
                elif len(parts) != ncols:
                    raise DatasetFormatError(f"{where}: {len(parts)} columns, earlier lines have {ncols}")
                paths.append(str(root / parts[0]))
                labels.append(_parse_int(parts[1], where, "label"))
                if ncols == 3:
                    uids.append(_parse_int(parts[2], where, "unique_id"))
        return cls(paths, labels, unique_ids=uids if ncols == 3 else None, **kwargs)

    @classmethod
    def from_folder(
        cls, root: PathLike, *, extensions: Sequence[str] = IMAGE_EXTENSIONS, **kwargs: Any
    ) -> ImageDataset:
        """One sub-directory per class: ``root/<class name>/**/<image>``; the label is the directory name.

        Files are collected recursively in sorted order; other files are ignored.

        Args:
            root: the tree's root.
            extensions: image suffixes to keep (case-insensitive).
            **kwargs: passed to :class:`ImageDataset`.

        Raises:
            DatasetFormatError: no class directory holds an image.
        """
        root = Path(root)
        suffixes = tuple(e.lower() for e in extensions)
        paths, labels = [], []
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for dirpath, dirnames, filenames in os.walk(class_dir):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.lower().endswith(suffixes):
                        paths.append(os.path.join(dirpath, name))
                        labels.append(class_dir.name)
        if not paths:
            raise DatasetFormatError(f"{root}: no images with suffixes {list(suffixes)} in class sub-directories")
        return cls(paths, labels, **kwargs)

    @classmethod
    def from_csv(
        cls,
        csv_path: PathLike,
        root: PathLike | None = None,
        *,
        path_column: str = "path",
        label_column: str = "label",
        unique_id_column: str | None = None,
        where: Mapping[str, str | Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> ImageDataset:
        """Read a CSV with a header, one image per row.

        Labels that all look like integers are parsed as integers (sorted numerically), otherwise kept as
        strings. For the shared datasets: ``att_faces`` uses ``label_column="subject_id"``, ``grocery_store``
        ``"fine_id"`` (with e.g. ``where={"split": "train"}``), ``omniglot_small`` ``"class_id"``.

        Args:
            csv_path: the CSV file.
            root: directory the paths are relative to; default the CSV's directory.
            path_column: column of the image paths.
            label_column: column of the labels.
            unique_id_column: optional integer column returned as the unique id.
            where: keep only rows whose column equals the value (or one of the values), e.g.
                ``{"split": ["train", "val"]}``.
            **kwargs: passed to :class:`ImageDataset`.

        Raises:
            DatasetFormatError: a named column is missing (the message lists the columns), an id is not an
                integer, or no row is left.
        """
        csv_path = Path(csv_path)
        root = Path(root) if root is not None else csv_path.parent
        filters = {k: ({v} if isinstance(v, str) else set(v)) for k, v in (where or {}).items()}
        with open(csv_path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            wanted = [path_column, label_column, *([unique_id_column] if unique_id_column else []), *filters]
            absent = [c for c in wanted if c not in columns]
            if absent:
                raise DatasetFormatError(f"{csv_path}: no column(s) {absent}; the columns are {columns}")
            rows = [r for r in reader if all(r[k] in vals for k, vals in filters.items())]
        if not rows:
            raise DatasetFormatError(f"{csv_path}: no rows left after filtering with {dict(where or {})}")
        raw = [r[label_column].strip() for r in rows]
        labels: list[Label] = [int(v) for v in raw] if all(_INT_RE.fullmatch(v) for v in raw) else raw
        uids = None
        if unique_id_column:
            uids = [_parse_int(r[unique_id_column], f"{csv_path} row {i + 2}", unique_id_column)
                    for i, r in enumerate(rows)]
        paths = [str(root / r[path_column].strip()) for r in rows]
        return cls(paths, labels, unique_ids=uids, **kwargs)

    # ---- access -------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Classes a classifier head needs: ``len(label_map)``, or ``max(label) + 1`` without relabelling."""
        return len(self.label_map) if self.label_map is not None else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> np.ndarray:
        """The decoded, untransformed image ``index`` as ``[H, W, 3]`` uint8 RGB."""
        return load_image(self.paths[index])

    def get(self, index: int, rng: np.random.Generator | None = None) -> tuple[Any, ...]:
        """Item ``index`` with the transform drawing from ``rng``.

        Returns:
            ``(image, label)`` or ``(image, label, unique_id)``; ``label`` and ``unique_id`` are ``np.int64``.

        Raises:
            ImageDecodeError: the file cannot be decoded (the message names it).
        """
        image = self.transform(self.load_image(index), rng)
        label = self.labels[index]
        if self.unique_ids is None:
            return image, label
        return image, label, self.unique_ids[index]

    def __getitem__(self, key: int | tuple[int, Any]) -> tuple[Any, ...]:
        """``dataset[i]``, or ``dataset[(i, seed)]`` to draw the augmentation from ``default_rng(seed)``."""
        if isinstance(key, tuple):
            index, seed = key
            return self.get(int(index), np.random.default_rng(seed))
        return self.get(int(key))

    def subset(self, indices: Sequence[int], *, relabel: bool = True) -> ImageDataset:
        """A new dataset of the given indices (same transform), relabelled afresh unless ``relabel=False``,
        which keeps this dataset's label map."""
        idx = [int(i) for i in indices]
        return ImageDataset(
            [self.paths[i] for i in idx],
            [self.original_labels[i] for i in idx],
            unique_ids=None if self.unique_ids is None else self.unique_ids[idx],
            transform=self.transform,
            relabel=relabel,
            label_map=None if relabel else self.label_map,
            check_files=False,
        )

    def __repr__(self) -> str:
        return f"ImageDataset(images={len(self)}, classes={self.num_classes}, unique_ids={self.unique_ids is not None})"


def class_disjoint_split(
    dataset: ImageDataset, fraction: float = 0.5, *, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Split by class: a seeded random ``fraction`` of the classes (rounded) vs the rest, each relabelled.

    Args:
        dataset: the dataset to split.
        fraction: share of classes in the first part, in ``(0, 1)``.
        seed: seed of the class permutation.

    Returns:
        ``(first, second)`` datasets with disjoint classes (the metric-learning protocol: train on one,
        retrieve among the other).
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction}")
    classes = np.unique(dataset.labels)
    chosen = np.random.default_rng(seed).permutation(classes)[: max(1, round(fraction * len(classes)))]
    first = np.isin(dataset.labels, chosen)
    return dataset.subset(np.flatnonzero(first)), dataset.subset(np.flatnonzero(~first))


def _parse_int(text: str, where: str, what: str) -> int:
    text = text.strip()
    if not _INT_RE.fullmatch(text):
        raise DatasetFormatError(f"{where}: {what} must be an integer, got {text!r}")
    return int(text)
