"""Which training examples a seed's model sees.

The algorithm (documented, and the only thing a subset depends on: seed, n, ratio, salt, size rule, repeats):
    m = floor(ratio * n + 0.5)    size_rule round_half_up (the default)
        floor(ratio * n)          size_rule floor (the authors' demo: int(n * ratio))
    rng = np.random.RandomState(seed)         if salt == 0
          np.random.RandomState([seed, salt]) otherwise
    subset = sorted(rng.permutation(n)[:m])
`RandomState` streams are frozen by NumPy's compatibility policy, so every machine and NumPy version
draws the same subset. With salt 0 and size_rule floor this is the authors' demo draw,
`RandomState(seed).choice(n, size=int(n * ratio), replace=False)`, which is `permutation(n)[:m]` internally.
The two rules differ only where ratio * n has a fractional part of at least one half (never for MNIST-5k at 0.7).

Repeated subsets (`subset.repeats = R`, default 1): seed s trains on the subset drawn as above with seed
s - (s mod R), the first seed of its group of R consecutive seeds [kR, kR + R - 1], while its initialisation,
data order and augmentation draws still come from s. So `-m seed=3000..3099 subset.repeats=2` trains 50 subsets
(those of seeds 3000, 3002, ..., 3098) twice each, and R = 1 is the draw above unchanged. A seed's subset seed lies
in its own group, so a sweep over whole groups (a range from a multiple of R, R seeds per subset) draws only the
subsets of its own seeds: with seeds disjoint from another sweep's (same salt) none of its subsets is one of that
sweep's, and it can serve as that sweep's held-out runs (src.evaluate --holdout-sweep, which refuses a held-out
subset that a fit run trained on).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from src.errors import ConfigError

MAX_SEED = 2**32 - 1  # RandomState seeds are 32-bit


SIZE_RULES = {"round_half_up": lambda product: math.floor(product + 0.5), "floor": math.floor}
DEFAULT_SIZE_RULE = "round_half_up"
DEFAULT_REPEATS = 1


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


def check_repeats(repeats: Any) -> int:
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"subset.repeats={repeats!r} must be an integer >= 1 (1: one model per subset; "
                          f"2: seeds 2k and 2k+1 train one subset)")
    return repeats


def subset_seed(seed: int, repeats: int = DEFAULT_REPEATS) -> int:
    """The seed whose subset `seed` trains on: the first of its group of `repeats` seeds (module docstring)."""
    check_seed(seed)
    return seed - seed % check_repeats(repeats)


@dataclass(frozen=True)
class SubsetRule:
    """How a record's subset was drawn, besides seed, n and ratio: what its stored config says, the defaults
    for what it does not (records written before a key existed used the default)."""

    size_rule: str = DEFAULT_SIZE_RULE
    repeats: int = DEFAULT_REPEATS

    @classmethod
    def of_config(cls, config: Any) -> SubsetRule:
        subset = config.get("subset") if isinstance(config, Mapping) else None
        if not isinstance(subset, Mapping):
            return cls()
        return cls(subset.get("size_rule", DEFAULT_SIZE_RULE), subset.get("repeats", DEFAULT_REPEATS))


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
