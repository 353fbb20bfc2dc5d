"""The images of a sweep's examples for reports, galleries and wandb tables: the data set named by the metadata
of the sweep's records (src/data/dataset.py `dataset_from_meta`); when it cannot be loaded here, or holds
vectors, `Images.problem` says why in one line."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.records import find_records, read_meta
from src.data.dataset import Dataset, dataset_from_meta, split_images
from src.errors import MeminfError


@dataclass(frozen=True)
class Images:
    """The data set's images and class names, or why there are none (`problem`)."""

    dataset: Dataset | None = None
    problem: str | None = None

    def get(self, split: str, indices: Sequence[int]) -> np.ndarray | None:
        return None if self.dataset is None else split_images(self.dataset, split, np.asarray(indices, np.int64))

    def path(self, split: str, index: int) -> str | None:
        """The example's image file relative to the data set root (image-folder data sets), else None."""
        paths = None if self.dataset is None else getattr(self.dataset, f"{split}_paths", None)
        return None if paths is None else str(paths[index])

    def label(self, label: int) -> str:
        """The class index, followed by its name when the data set names it otherwise."""
        names = None if self.dataset is None else self.dataset.class_names
        return str(label) if names is None or str(names[label]) == str(label) else f"{label} {names[label]}"


def sweep_images(sweep_dir: Path, summary: Mapping[str, Any]) -> Images:
    """The data set of the sweep's records, found through the first record of that sweep (its fingerprint)."""
    meta = None
    for path in find_records(sweep_dir):
        with contextlib.suppress(MeminfError):
            candidate = read_meta(path)
            if candidate.get("data_fingerprint") == summary.get("data_fingerprint"):
                meta = candidate
                break
    if meta is None:
        return Images(problem=f"no record of this sweep under {sweep_dir} names its data set")
    try:
        dataset = dataset_from_meta(meta)
    except (MeminfError, OSError) as err:
        return Images(problem=str(err))
    if not dataset.is_image:
        return Images(problem="the data are feature vectors, not images")
    return Images(dataset=dataset)
