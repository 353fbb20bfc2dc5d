"""A sweep's runs split by seed into fit (shadow) runs and held-out (target) runs; the held-out runs never enter
an estimate that LDS or the attack uses."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.analyses.evaluation.mia import LogitSums
from src.contracts.records import Record, read_record
from src.errors import ConfigError, DataError
from src.estimators.subsample.stats import SweepStats
from src.util.cli import parse_seeds

HOLDOUT_FRACTION = 0.1
MIN_RUNS_PER_SIDE = 2  # a Spearman over held-out runs and a variance over shadow runs need 2


def holdout_seeds(seeds: Sequence[int], spec: str | None) -> list[int]:
    """The held-out seeds: `spec`, or the last HOLDOUT_FRACTION of the seeds (at least MIN_RUNS_PER_SIDE);
    ConfigError when a requested seed is not in the sweep or fewer than 2 runs remain on a side."""
    ordered = sorted(seeds)
    if spec is None:
        held = ordered[len(ordered) - max(MIN_RUNS_PER_SIDE, math.ceil(HOLDOUT_FRACTION * len(ordered))):]
    else:
        held = sorted(parse_seeds(spec, "--holdout-seeds"))
        absent = sorted(set(held) - set(ordered))
        if absent:
            raise ConfigError(f"--holdout-seeds names seed {absent[0]} ({len(absent)} in all), which the sweep "
                              f"lacks; its seeds are {ordered[0]}..{ordered[-1]} ({len(ordered)} runs)")
    fit = len(ordered) - len(held)
    if len(held) < MIN_RUNS_PER_SIDE or fit < MIN_RUNS_PER_SIDE:
        raise ConfigError(f"{len(held)} held-out and {fit} fit runs of {len(ordered)}: each side needs at least "
                          f"{MIN_RUNS_PER_SIDE}; train more seeds or change --holdout-seeds")
    return held


@dataclass
class HeldOut:
    """The held-out runs, by seed: their subsets and per-example probabilities of the label."""

    seeds: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    train_prob: list[np.ndarray] = field(default_factory=list)
    test_prob: list[np.ndarray] = field(default_factory=list)

    def add(self, record: Record) -> None:
        self.seeds.append(record.seed)
        self.masks.append(record.subset_mask)
        self.train_prob.append(record.train_prob)
        self.test_prob.append(record.test_prob)

    def sort_by_seed(self) -> None:
        order = np.argsort(self.seeds, kind="stable")
        for name in ("seeds", "masks", "train_prob", "test_prob"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in order])


@dataclass
class SplitSweep:
    """A sweep split by seed: sufficient statistics and phi sums of the fit (shadow) runs; the held-out runs."""

    fit: SweepStats
    phi: LogitSums
    held_out: HeldOut


def split_runs(records: Iterable[tuple[str | Path, Record]], held_seeds: Iterable[int]) -> SplitSweep:
    """Fold (path, record) pairs into a SplitSweep. The held-out records are checked like fit records
    (identity, seed repeated, subset of their seed: SweepStats.add_record), in statistics of their own."""
    held_seeds = set(held_seeds)
    fit: SweepStats | None = None
    checked: SweepStats | None = None
    held_out = HeldOut()
    phi: LogitSums | None = None
    for path, record in records:
        if record.seed in held_seeds:
            if checked is None:
                checked = SweepStats.from_record(record, path)
            else:
                checked.add_record(record, path)
            held_out.add(record)
            continue
        if fit is None:
            fit, phi = SweepStats.from_record(record, path), LogitSums.zeros(record.train_label.size)
        else:
            fit.add_record(record, path)
        phi.add(record.subset_mask, record.train_prob)
    n_fit = 0 if fit is None else fit.n_runs
    if fit is None or checked is None or phi is None or min(n_fit, checked.n_runs) < MIN_RUNS_PER_SIDE:
        raise ConfigError(f"{n_fit} fit and {len(held_out.seeds)} held-out runs: each side needs at least "
                          f"{MIN_RUNS_PER_SIDE}; train more seeds or change --holdout-seeds")
    differences = checked.identity.differences(fit.identity)
    if differences:
        raise DataError(f"the held-out runs belong to another sweep than the fit runs: {'; '.join(differences)}")
    fit.sort_by_seed()
    held_out.sort_by_seed()
    return SplitSweep(fit, phi, held_out)


def load_split(stats: SweepStats, held_seeds: Sequence[int]) -> SplitSweep:
    """Read the records behind `stats` (from load_sweep) again and split them by seed."""
    return split_runs(((path, read_record(path)) for path in stats.paths), held_seeds)
