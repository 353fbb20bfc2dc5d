"""The arrays of one data set before label noise and subsetting, as every source loader returns them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from src.errors import ConfigError


@dataclass(frozen=True)
class RawData:
    """Train and test arrays of one data set, before label noise and subsetting."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None
    train_extras: dict[str, np.ndarray] = field(default_factory=dict)
    test_extras: dict[str, np.ndarray] = field(default_factory=dict)
    train_paths: tuple[str, ...] | None = None  # image files, relative to the data set root (image folders)
    test_paths: tuple[str, ...] | None = None


def setting(cfg: Mapping[str, Any], key: str) -> Any:
    """Value of a required config key (``cfg.get`` also gives None for OmegaConf's ``???``)."""
    value = cfg.get(key)
    if value is None:
        raise ConfigError(f"dataset.{key} is not set; add it to the dataset YAML or pass dataset.{key}=...")
    return value
