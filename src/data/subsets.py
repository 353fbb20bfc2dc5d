"""Which training examples a seed's model sees.

The algorithm (documented, and the only thing a subset depends on: seed, n, ratio, salt):
    m = floor(ratio * n + 0.5)                         # round half up, exactly m examples
    rng = np.random.RandomState(seed)         if salt == 0
          np.random.RandomState([seed, salt]) otherwise
    subset = sorted(rng.permutation(n)[:m])
`RandomState` streams are frozen by NumPy's compatibility policy, so every machine and NumPy version
draws the same subset. With salt 0 this is the authors' demo draw,
`RandomState(seed).choice(n, size=m, replace=False)`, which is `permutation(n)[:m]` internally.
"""

from __future__ import annotations

import math

import numpy as np

from src.errors import ConfigError

MAX_SEED = 2**32 - 1  # RandomState seeds are 32-bit


def subset_size(n: int, ratio: float) -> int:
    if not 0 < ratio <= 1:
        raise ConfigError(f"subset.ratio={ratio} is outside (0, 1]; use e.g. subset.ratio=0.7")
    return math.floor(ratio * n + 0.5)


def check_seed(seed: int) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed={seed!r} must be an integer in [0, {MAX_SEED}]; e.g. seed=0 or -m seed=0..99")
    return seed


def subset_indices(seed: int, n: int, ratio: float, salt: int = 0) -> np.ndarray:
    """Sorted indices of the training examples in this seed's subset (int64)."""
    m = subset_size(n, ratio)
    if m == 0:
        raise ConfigError(f"subset.ratio={ratio} of {n} examples selects none; raise the ratio")
    check_seed(seed)
    rng = np.random.RandomState(seed if salt == 0 else [seed, salt])
    return np.sort(rng.permutation(n)[:m]).astype(np.int64)


def subset_mask(seed: int, n: int, ratio: float, salt: int = 0) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[subset_indices(seed, n, ratio, salt)] = True
    return mask
