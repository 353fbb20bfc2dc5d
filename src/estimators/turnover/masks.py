"""The half of every example: splitmix64 of (seed, domain, index, mask point, unit), nothing stored
(the algorithm: src/estimators/turnover/__init__.py)."""

from __future__ import annotations

import numpy as np

TRAIN_DOMAIN, TEST_DOMAIN = 0, 1
_GOLDEN, _MIX1, _MIX2 = (np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on uint64 (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def half_masks(seed: int, domain: int, indices: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """Per mask point, (len(indices), width) bool: the half of each example (module docstring)."""
    example_key = splitmix64(splitmix64(splitmix64(np.array([seed], dtype=np.uint64)) + np.uint64(domain))
                             + np.asarray(indices, dtype=np.uint64))
    masks = []
    for point, width in enumerate(widths):
        point_key = splitmix64(example_key + np.uint64(point))
        keys = splitmix64(point_key[:, None] + np.arange(width, dtype=np.uint64))
        masks.append(keys < np.partition(keys, width // 2, axis=1)[:, width // 2, None])
    return masks
