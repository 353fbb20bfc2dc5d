"""Seeds on the command line: `seed=a..b` (inclusive) for Hydra, and seed lists back into overrides."""

from __future__ import annotations

import re

from src.errors import ConfigError

MULTIRUN_FLAGS = ("-m", "--multirun")
SEED_RANGE = re.compile(r"^(?P<key>[+~]{0,2}seed)=(?P<first>-?\d+)\.\.(?P<last>-?\d+)$")


def expand_seed_ranges(args: list[str]) -> list[str]:
    """`seed=a..b` (inclusive) → `seed=range(a,b+1)`; needs -m, refuses empty or reversed ranges."""
    multirun = any(arg in MULTIRUN_FLAGS for arg in args)
    expanded = []
    for arg in args:
        match = SEED_RANGE.match(arg)
        if match is None:
            expanded.append(arg)
            continue
        first, last = int(match["first"]), int(match["last"])
        if not multirun:
            raise ConfigError(f"{arg} is a sweep: add -m (python -m src.run -m {arg})")
        if last < first:
            raise ConfigError(f"{arg} is empty: the range is inclusive and must go up, e.g. seed={last}..{first}")
        expanded.append(f"{match['key']}=range({first},{last + 1})")
    return expanded


def seed_override(seeds: list[int]) -> str:
    """A Hydra sweep over these seeds, one job each: `seed=range(a,b)` when contiguous."""
    contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return f"seed=range({seeds[0]},{seeds[-1] + 1})" if contiguous else "seed=" + ",".join(map(str, seeds))


def packed_override(seeds: list[int], pack: int) -> str:
    """`seeds=[a,b,..],[..]`: a Hydra sweep over groups of up to `pack` seeds, one packed job each."""
    groups = [seeds[start:start + pack] for start in range(0, len(seeds), pack)]
    return "seeds=" + ",".join("[" + ",".join(map(str, group)) + "]" for group in groups)
