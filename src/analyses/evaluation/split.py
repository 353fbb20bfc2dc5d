"""A sweep's runs split by seed into fit (shadow) runs and held-out (target) runs, or the held-out runs taken from
a sweep of their own (`--holdout-sweep`: the same experiment apart from `subset.repeats`); the held-out runs never
enter an estimate that LDS or the attack uses, and no held-out run trains a subset that a fit run trained."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from src.analyses.evaluation.mia import LogitSums
from src.contracts.identity import identity_differences
from src.contracts.records import Record, read_record
from src.data.subsets import SubsetRule, subset_seed
from src.errors import ConfigError, DataError
from src.estimators.subsample.stats import SweepIdentity, SweepStats
from src.util.cli import parse_seeds

HOLDOUT_FRACTION = 0.1
MIN_RUNS_PER_SIDE = 2  # a Spearman over held-out runs and a variance over shadow runs need 2
REPEATS_KEY = "subset.repeats"  # the identity key a held-out sweep may differ in


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
    """The held-out runs, by seed: their subsets (and the seeds those were drawn with) and per-example
    probabilities of the label."""

    seeds: list[int] = field(default_factory=list)
    subset_seeds: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    train_prob: list[np.ndarray] = field(default_factory=list)
    test_prob: list[np.ndarray] = field(default_factory=list)

    def add(self, record: Record) -> None:
        self.seeds.append(record.seed)
        self.subset_seeds.append(record_subset_seed(record))
        self.masks.append(record.subset_mask)
        self.train_prob.append(record.train_prob)
        self.test_prob.append(record.test_prob)

    def sort_by_seed(self) -> None:
        order = np.argsort(self.seeds, kind="stable")
        for name in ("seeds", "subset_seeds", "masks", "train_prob", "test_prob"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in order])


@dataclass
class SplitSweep:
    """A sweep split by seed: sufficient statistics and phi sums of the fit (shadow) runs; the held-out runs."""

    fit: SweepStats
    phi: LogitSums
    held_out: HeldOut


def record_subset_seed(record: Record) -> int:
    """The seed the record's subset was drawn with (src/data/subsets.py subset_seed)."""
    return subset_seed(record.seed, SubsetRule.of_config(record.meta.get("config")).repeats)


def same_sweep(held: SweepIdentity, fit: SweepIdentity) -> None:
    """Held-out seeds of the fit runs' own sweep: their records are of one sweep."""
    differences = held.differences(fit)
    if differences:
        raise DataError(f"the held-out runs belong to another sweep than the fit runs: {'; '.join(differences)}")


def holdout_sweep_differences(held: SweepIdentity, fit: SweepIdentity) -> list[str]:
    """What a held-out sweep's identity has that the fit sweep's lacks, `subset.repeats` (and the experiment hash,
    which follows from it) apart: `key: fit → held out`."""
    found = [f"{key}: {theirs} → {mine}" for (key, mine), (_, theirs) in zip(held.fields, fit.fields, strict=True)
             if key != "experiment_hash" and mine != theirs]
    found += [f"{key} differs" for (key, mine), (_, theirs) in zip(held.digests, fit.digests, strict=True)
              if mine != theirs]
    if held.experiment is None or fit.experiment is None:
        return [*found, "the records store no config to compare"]
    mine, theirs = ({key: value for key, value in identity.items() if key != REPEATS_KEY}
                    for identity in (held.experiment, fit.experiment))
    return found + identity_differences(mine, theirs)


def other_sweep(held_dir: Path) -> Callable[[SweepIdentity, SweepIdentity], None]:
    """A held-out sweep of its own: the fit sweep's experiment apart from `subset.repeats`."""
    def check(held: SweepIdentity, fit: SweepIdentity) -> None:
        differences = holdout_sweep_differences(held, fit)
        if differences:
            raise ConfigError(f"--holdout-sweep {held_dir} is not the fit sweep's experiment apart from "
                              f"{REPEATS_KEY} (fit → held out): {'; '.join(differences)}")
    return check


def refuse_shared_subsets(fit_subset_seeds: dict[int, int], held_out: HeldOut) -> None:
    """No held-out run may train a subset a fit run trained (the estimate would have seen that subset)."""
    for seed, drawn in zip(held_out.seeds, held_out.subset_seeds, strict=True):
        if drawn in fit_subset_seeds:
            raise ConfigError(f"held-out seed {seed} trains the subset of seed {drawn}, which fit seed "
                              f"{fit_subset_seeds[drawn]} trained too (subset.repeats): hold out whole groups of "
                              f"repeats, or train the held-out runs with seeds the fit runs do not use")


def split_runs(records: Iterable[tuple[str | Path, Record]], held_seeds: Iterable[int]) -> SplitSweep:
    """Fold (path, record) pairs of one sweep into a SplitSweep, the runs of `held_seeds` held out."""
    held_seeds = set(held_seeds)
    return fold_split(((path, record, record.seed in held_seeds) for path, record in records), same_sweep)


def fold_split(records: Iterable[tuple[str | Path, Record, bool]],
               check_identity: Callable[[SweepIdentity, SweepIdentity], None]) -> SplitSweep:
    """Fold (path, record, held out) triples into a SplitSweep. The held-out records are checked like fit records
    (identity, seed repeated, subset of their seed: SweepStats.add_record), in statistics of their own, then
    against the fit runs by `check_identity` (held, fit) and for subsets a fit run trained."""
    fit: SweepStats | None = None
    checked: SweepStats | None = None
    held_out = HeldOut()
    phi: LogitSums | None = None
    fit_subset_seeds: dict[int, int] = {}
    for path, record, is_held in records:
        if is_held:
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
        fit_subset_seeds.setdefault(record_subset_seed(record), record.seed)
    n_fit = 0 if fit is None else fit.n_runs
    if fit is None or checked is None or phi is None or min(n_fit, checked.n_runs) < MIN_RUNS_PER_SIDE:
        raise ConfigError(f"{n_fit} fit and {len(held_out.seeds)} held-out runs: each side needs at least "
                          f"{MIN_RUNS_PER_SIDE}; train more seeds or change --holdout-seeds")
    check_identity(checked.identity, fit.identity)
    fit.sort_by_seed()
    held_out.sort_by_seed()
    refuse_shared_subsets(fit_subset_seeds, held_out)
    return SplitSweep(fit, phi, held_out)


def load_split(stats: SweepStats, held_seeds: Sequence[int]) -> SplitSweep:
    """Read the records behind `stats` (from load_sweep) again and split them by seed."""
    return split_runs(((path, read_record(path)) for path in stats.paths), held_seeds)


def load_split_sweeps(fit: SweepStats, held: SweepStats, held_dir: Path) -> SplitSweep:
    """Read the records behind two sweeps (from load_sweep) again: every run of `fit` a fit run, every run of
    `held` (from --holdout-sweep `held_dir`) a held-out run."""
    records = chain(((path, read_record(path), False) for path in fit.paths),
                    ((path, read_record(path), True) for path in held.paths))
    return fold_split(records, other_sweep(held_dir))
