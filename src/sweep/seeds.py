"""Seeds on the command line: `seed=a..b` (inclusive), lists of seeds and ranges (`seed=0..3,10..13,20`) and
Hydra's `seed=range(a,b)`; and seed lists back into Hydra overrides."""

from __future__ import annotations

import re

from src.errors import ConfigError
from src.util.cli import parse_seeds

MULTIRUN_FLAGS = ("-m", "--multirun")
SEED_ARG = re.compile(r"^(?P<key>[+~]{0,2}seed)=(?P<value>.*)$")
# A range in another tool's syntax (`0-31`, `0:31`): refused with the a..b form rather than a type error.
FOREIGN_RANGE = re.compile(r"^\s*(?P<start>\d+)\s*[-:]\s*(?P<end>\d+)\s*$")
HYDRA_RANGE = re.compile(r"^range\((?P<start>-?\d+),\s*(?P<stop>-?\d+)(?:,\s*(?P<step>-?\d+))?\)$")


def seeds_of(value: str) -> list[int] | None:
    """The seeds of a `seed=` value: a..b ranges and single seeds, comma-separated, or Hydra's range(a,b[,s]);
    None for a value that is neither (Hydra's other sweep syntax: Hydra reads it)."""
    hydra_range = HYDRA_RANGE.match(value.strip())
    if hydra_range:
        step = int(hydra_range["step"] or 1)
        return list(range(int(hydra_range["start"]), int(hydra_range["stop"]), step))
    if not re.fullmatch(r"\s*-?\d+(\s*\.\.\s*-?\d+)?(\s*,\s*-?\d+(\s*\.\.\s*-?\d+)?)*\s*", value):
        return None
    return parse_seeds(value, "seed=")


def seed_override(seeds: list[int], key: str = "seed") -> str:
    """A Hydra sweep over these seeds, one job each: `seed=range(a,b)` when contiguous."""
    contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return f"{key}=range({seeds[0]},{seeds[-1] + 1})" if contiguous else f"{key}=" + ",".join(map(str, seeds))


def expand_seed_ranges(args: list[str]) -> list[str]:
    """`seed=a..b` (inclusive) and lists of ranges → Hydra's `seed=range(a,b+1)` or `seed=a,b,...`; a sweep over
    several seeds needs -m; an empty or reversed range, or a seed named twice, is refused."""
    multirun = any(arg in MULTIRUN_FLAGS for arg in args)
    expanded = []
    for arg in args:
        match = SEED_ARG.match(arg)
        foreign = FOREIGN_RANGE.match(match["value"]) if match else None
        if foreign:
            raise ConfigError(f"{arg}: a range of seeds is written a..b (inclusive): -m {match['key']}="
                              f"{foreign['start']}..{foreign['end']}")
        seeds = seeds_of(match["value"]) if match else None
        if seeds is None or (len(seeds) == 1 and ".." not in match["value"]):
            expanded.append(arg)
            continue
        if not seeds:
            raise ConfigError(f"{arg} names no seed: ranges are inclusive and go up, e.g. seed=0..9")
        if not multirun:
            raise ConfigError(f"{arg} is a sweep: add -m (python -m src.run -m {arg})")
        expanded.append(seed_override(seeds, match["key"]))
    return expanded


def pack_groups(seeds: list[int], pack: int) -> list[list[int]]:
    """The seeds of each job when `seeds` are trained `pack` at a time, in order (the last group may be smaller)."""
    return [seeds[start:start + pack] for start in range(0, len(seeds), pack)]


def seed_ranges(seeds: list[int]) -> str:
    """Seeds as the command line writes them: `0..15,32,40..47` (sorted, contiguous runs as a..b)."""
    ordered = sorted(seeds)
    runs: list[list[int]] = []
    for seed in ordered:
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return ",".join(f"{low}..{high}" if high > low else str(low) for low, high in runs)
