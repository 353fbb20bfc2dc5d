"""Which training examples a seed's model sees.

The algorithm (documented, and the only thing a subset depends on: seed, n, ratio, salt, size rule):
    m = floor(ratio * n + 0.5)    size_rule round_half_up (the default)
        floor(ratio * n)          size_rule floor (the authors' demo: int(n * ratio))
    rng = np.random.RandomState(seed)         if salt == 0
          np.random.RandomState([seed, salt]) otherwise
    subset = sorted(rng.permutation(n)[:m])
`RandomState` streams are frozen by NumPy's compatibility policy, so every machine and NumPy version
draws the same subset. With salt 0 and size_rule floor this is the authors' demo draw,
`RandomState(seed).choice(n, size=int(n * ratio), replace=False)`, which is `permutation(n)[:m]` internally.
The two rules differ only where ratio * n has a fractional part of at least one half (never for MNIST-5k at 0.7).
"""

from __future__ import annotations

import math

import numpy as np

from src.errors import ConfigError

MAX_SEED = 2**32 - 1  # RandomState seeds are 32-bit


SIZE_RULES = {"round_half_up": lambda product: math.floor(product + 0.5), "floor": math.floor}
DEFAULT_SIZE_RULE = "round_half_up"


def subset_size(n: int, ratio: float, size_rule: str = DEFAULT_SIZE_RULE) -> int:
    if not 0 < ratio <= 1:
        raise ConfigError(f"subset.ratio={ratio} is outside (0, 1]; use e.g. subset.ratio=0.7")
    if size_rule not in SIZE_RULES:
        raise ConfigError(f"subset.size_rule={size_rule} is unknown; use one of {', '.join(SIZE_RULES)}")
    return SIZE_RULES[size_rule](ratio * n)


def check_seed(seed: int) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed={seed!r} must be an integer in [0, {MAX_SEED}]; e.g. seed=0 or -m seed=0..99")
    return seed


def subset_indices(seed: int, n: int, ratio: float, salt: int = 0, size_rule: str = DEFAULT_SIZE_RULE) -> np.ndarray:
    """Sorted indices of the training examples in this seed's subset (int64)."""
    m = subset_size(n, ratio, size_rule)
    if m == 0:
        raise ConfigError(f"subset.ratio={ratio} of {n} examples selects none; raise the ratio")
    check_seed(seed)
    rng = np.random.RandomState(seed if salt == 0 else [seed, salt])
    return np.sort(rng.permutation(n)[:m]).astype(np.int64)


def subset_mask(seed: int, n: int, ratio: float, salt: int = 0, size_rule: str = DEFAULT_SIZE_RULE) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[subset_indices(seed, n, ratio, salt, size_rule)] = True
    return mask
