"""Data sets as the pipeline sees them: raw arrays + label noise + a content fingerprint.

`load_dataset(dataset_cfg, data_dir)` reads a source through `src.data.sources.load_raw`, flips
`label_noise` of the training labels (chosen by `noise_seed`, once for the whole sweep, never by the
run seed) and fingerprints the result. A process keeps the last data sets it loaded, so a multirun in
one process (Hydra's basic launcher) reads the data once. numpy only: no torch import here.

Label noise algorithm (documented so that any machine flips the same labels):
    k = floor(label_noise * n + 0.5)
    rng = np.random.RandomState(noise_seed)
    flipped_idx = sorted(rng.permutation(n)[:k])
    y[flipped_idx] = (y[flipped_idx] + rng.randint(1, num_classes, size=k)) % num_classes
so each flipped label is uniform over the *other* classes.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from src.contracts.io import content_hash
from src.data.sources import load_raw
from src.errors import ConfigError, DataError

# A process keeps this many data sets (a sweep uses one; a comparison may alternate two).
CACHE_SIZE = 2
_CACHE: OrderedDict[str, Dataset] = OrderedDict()


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # (N, C, H, W) uint8/float32 images or (N, D) float32 vectors
    y_train: np.ndarray  # int64: the labels models are trained with (flipped where flipped)
    y_train_orig: np.ndarray  # int64: the labels before noise
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    flipped_idx: np.ndarray  # int64, sorted
    fingerprint: str
    class_names: tuple[str, ...] | None = None
    train_extras: dict[str, np.ndarray] = field(default_factory=dict)
    test_extras: dict[str, np.ndarray] = field(default_factory=dict)
    train_paths: tuple[str, ...] | None = None  # image files relative to the data set root (image folders)
    test_paths: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def pixel_scale(self) -> float:
        """Multiply stored values by this to get [0, 1] images (uint8 is stored as 0..255)."""
        return 1 / 255 if self.x_train.dtype == np.uint8 else 1.0

    @property
    def is_image(self) -> bool:
        return self.x_train.ndim == 4


def apply_label_noise(y: np.ndarray, num_classes: int, fraction: float,
                      noise_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The flipped labels and the sorted flipped indices (see the module docstring)."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"dataset.label_noise={fraction} is outside [0, 1); use e.g. 0.05")
    if fraction > 0 and num_classes < 2:
        raise ConfigError("dataset.label_noise needs at least 2 classes")
    k = math.floor(fraction * len(y) + 0.5)
    rng = np.random.RandomState(noise_seed)
    flipped_idx = np.sort(rng.permutation(len(y))[:k]).astype(np.int64)
    noisy = y.astype(np.int64).copy()
    noisy[flipped_idx] = (noisy[flipped_idx] + rng.randint(1, num_classes, size=k)) % num_classes
    return noisy, flipped_idx


def fingerprint(*arrays: np.ndarray) -> str:
    """Content hash of the data arrays: two data sets agree iff fingerprints do."""
    return content_hash(arrays)


def _cache_key(dataset_cfg: Mapping[str, Any], data_dir: str | Path) -> str:
    plain = OmegaConf.to_container(dataset_cfg, resolve=True) if isinstance(dataset_cfg, DictConfig) \
        else dict(dataset_cfg)
    return json.dumps({"cfg": plain, "data_dir": str(data_dir)}, sort_keys=True, default=str)


def load_dataset(dataset_cfg: Mapping[str, Any], data_dir: str | Path) -> Dataset:
    key = _cache_key(dataset_cfg, data_dir)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    dataset = _build_dataset(dataset_cfg, data_dir)
    _CACHE[key] = dataset
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return dataset


def _build_dataset(dataset_cfg: Mapping[str, Any], data_dir: str | Path) -> Dataset:
    raw = load_raw(dataset_cfg, data_dir)
    y_train, flipped_idx = apply_label_noise(
        raw.y_train, raw.num_classes, float(dataset_cfg.get("label_noise", 0.0)),
        int(dataset_cfg.get("noise_seed", 0)))
    y_test = raw.y_test.astype(np.int64)
    return Dataset(
        name=str(dataset_cfg["name"]), x_train=raw.x_train, y_train=y_train,
        y_train_orig=raw.y_train.astype(np.int64), x_test=raw.x_test, y_test=y_test,
        num_classes=raw.num_classes, flipped_idx=flipped_idx,
        fingerprint=fingerprint(raw.x_train, y_train, raw.x_test, y_test, flipped_idx),
        class_names=raw.class_names, train_extras=dict(raw.train_extras), test_extras=dict(raw.test_extras),
        train_paths=raw.train_paths, test_paths=raw.test_paths,
    )


def record_extras(dataset: Dataset) -> dict[str, np.ndarray]:
    """Per-example columns that go into every record (`train_<name>`, `test_<name>`)."""
    extras = {f"train_{name}": values for name, values in dataset.train_extras.items()}
    extras.update({f"test_{name}": values for name, values in dataset.test_extras.items()})
    return extras


def dataset_from_meta(meta: Mapping[str, Any]) -> Dataset:
    """The data set a record was trained on, loaded through the record's config. Raises DataError when the
    data cannot be loaded here or differ from the records' (fingerprint)."""
    config = meta.get("config") or {}
    if "dataset" not in config or "paths" not in config:
        raise DataError("the record's metadata holds no data set configuration")
    dataset = load_dataset(config["dataset"], config["paths"]["data_dir"])
    if dataset.fingerprint != meta.get("data_fingerprint"):
        raise DataError("the data set found here differs from the one the records were trained on")
    return dataset


def train_paths_from_meta(meta: Mapping[str, Any]) -> list[str] | None:
    """Each training example's image file, relative to the data set root, for the data set a record was
    trained on; None when that data set has no files (arrays). Raises DataError like dataset_from_meta."""
    paths = dataset_from_meta(meta).train_paths
    return None if paths is None else list(paths)


def split_images(dataset: Dataset, split: str, indices: np.ndarray) -> np.ndarray | None:
    """Images `indices` of the "train" or "test" split ((len(indices), C, H, W) in [0, 1]), or None when the
    data are vectors."""
    if not dataset.is_image:
        return None
    x = dataset.x_train if split == "train" else dataset.x_test
    return x[indices].astype(np.float32) * dataset.pixel_scale


def train_images_from_meta(meta: Mapping[str, Any], indices: np.ndarray) -> np.ndarray | None:
    """The training images `indices` ((len(indices), C, H, W) in [0, 1]) of the data set a record was
    trained on, or None when the data are vectors. Raises DataError when the data cannot be loaded here."""
    return split_images(dataset_from_meta(meta), "train", indices)
