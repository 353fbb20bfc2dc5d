"""Run health: the runs of a sweep that did not train, named in every estimate made from its records.

A run is unhealthy when its test accuracy or its in-subset train accuracy is
- at chance: at most the chance level plus CHANCE_SDS binomial standard deviations of a guesser's accuracy on
  that many examples. The chance level is the frequency of the most common label (what a constant prediction
  scores; 1/num_classes on balanced data), so a model that learnt nothing is caught on imbalanced data too;
- or a low outlier of the sweep's own accuracies: below median - OUTLIER_Z * scale, with scale the MAD times
  MAD_TO_SD (the robust SD) but never less than the binomial SD of the median accuracy on that many examples
  (differences the finite evaluation set alone makes are no outliers, e.g. when every run scores alike), and
  also more than MIN_DROP of the way from the median down to chance. The MAD of a small sweep underestimates
  the seed-to-seed spread of healthy runs: the golden digits sweep (8 runs, tests/test_golden.py) has one run at
  test accuracy 0.839 against a median of 0.928, 3.5 robust SDs below it but 11% of the way to chance; it
  trained, and is healthy. With a wide spread (half the runs failing) no MAD rule sees the failures: the
  under-fitting warning (mean in-subset train accuracy) does.
A non-finite loss never reaches a record: the job stops such a member and writes no record for it
(src/training/job.py), so the seed is missing, not unhealthy.

Unhealthy runs are used unless asked otherwise (`--exclude-unhealthy`): a failure can correlate with the subset's
contents, and leaving its run out would bias mem. The check reads only what the sweep statistics keep per run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src.estimators.base import ReduceOptions
from src.estimators.subsample.cache import CACHE_NAME, EXCLUDING_CACHE_NAME
from src.estimators.subsample.load import load_sweep
from src.estimators.subsample.stats import Problem, SweepStats
from src.util.stats import finite_or_none

CHANCE_SDS = 3.0  # a guesser's accuracy exceeds chance by 3 SDs with probability ~0.1%
OUTLIER_Z = 3.5  # Iglewicz & Hoaglin's cut-off for the modified z-score (median/MAD)
MAD_TO_SD = 1.4826  # MAD x this estimates the SD of normally distributed values
MIN_DROP = 0.25  # an outlier has also lost a quarter of the way from the sweep's median to chance
ACCURACIES = (("test_acc", "test acc"), ("train_in_acc", "in-subset train acc"))
RULE = (f"unhealthy: test or in-subset train accuracy at chance (<= the most common label's frequency + "
        f"{CHANCE_SDS:g} binomial SDs) or below median - max({OUTLIER_Z:g} x max({MAD_TO_SD} MAD, binomial SD of the "
        f"median), {MIN_DROP:g} x (median - chance)) of the sweep's runs; a non-finite loss writes no record (the "
        "seed is missing)")


@dataclass(frozen=True)
class Limits:
    """The lowest healthy accuracy of one kind (test or in-subset train) for this sweep."""

    chance: float  # at or below: at chance
    outlier: float  # below: an outlier of the sweep
    median: float


def chance_level(labels: np.ndarray) -> float:
    """The accuracy of always predicting the most common label."""
    return float(np.bincount(labels).max() / labels.size)


def binomial_sd(accuracy: float, n: float) -> float:
    return float(np.sqrt(accuracy * (1 - accuracy) / n))


def limits(accuracies: np.ndarray, labels: np.ndarray, n_examples: float) -> Limits:
    chance = chance_level(labels)
    median = float(np.median(accuracies))
    scale = max(MAD_TO_SD * float(np.median(np.abs(accuracies - median))), binomial_sd(median, n_examples))
    drop = max(OUTLIER_Z * scale, MIN_DROP * (median - chance))
    return Limits(chance + CHANCE_SDS * binomial_sd(chance, n_examples), median - drop, median)


def _reasons(name: str, accuracy: float, limit: Limits) -> list[str]:
    if accuracy <= limit.chance:
        return [f"{name} {accuracy:.4f} at chance (<= {limit.chance:.4f})"]
    if accuracy < limit.outlier:
        return [f"{name} {accuracy:.4f} an outlier (< {limit.outlier:.4f}; median {limit.median:.4f})"]
    return []


def check_runs(stats: SweepStats) -> dict[str, Any]:
    """The summary's `run_health` of a sweep's runs (before any exclusion): the limits and the unhealthy runs."""
    subset_size = float(stats.n_in.sum()) / stats.n_runs
    per_run = {"test_acc": np.asarray(stats.test_acc), "train_in_acc": np.asarray(stats.train_in_acc)}
    found = {"test_acc": limits(per_run["test_acc"], stats.test_label, stats.n_test),
             "train_in_acc": limits(per_run["train_in_acc"], stats.train_label, subset_size)}
    unhealthy = []
    for k, seed in enumerate(stats.seeds):
        reasons = [reason for key, name in ACCURACIES for reason in _reasons(name, per_run[key][k], found[key])]
        if reasons:
            unhealthy.append({"seed": int(seed), **{key: float(per_run[key][k]) for key in per_run},
                              "reasons": reasons})
    return {"rule": RULE, "runs_checked": stats.n_runs,
            "limits": {key: {"chance": limit.chance, "outlier": limit.outlier, "median": limit.median}
                       for key, limit in found.items()},
            "unhealthy": unhealthy, "excluded": False, "exclusion_effect": None}


def unhealthy_seeds(health: dict[str, Any]) -> frozenset[int]:
    return frozenset(int(run["seed"]) for run in health["unhealthy"])


def exclusion_effect(before: SweepStats, after: SweepStats, mem_of: Callable[[SweepStats], np.ndarray],
                     theta_mem: float) -> dict[str, Any]:
    """What leaving the unhealthy runs out changed: runs used, examples memorized, mean mem (each [with, without])."""
    mems = [mem_of(stats) for stats in (before, after)]
    return {"runs_used": [before.n_runs, after.n_runs],
            "memorized": [int(np.sum(np.nan_to_num(mem, nan=-np.inf) >= theta_mem)) for mem in mems],
            "mean_mem": [finite_or_none(np.nanmean(mem)) if np.any(~np.isnan(mem)) else None for mem in mems]}


def load_checked(sweep_dir: Path, options: ReduceOptions, mem_of: Callable[[SweepStats], np.ndarray],
                 theta_mem: float, cache_dir: Path | None = None,
                 check: Callable[[SweepStats], None] | None = None) -> tuple[SweepStats, list[Problem], dict[str, Any]]:
    """load_sweep, the runs' health, and with `options.exclude_unhealthy` the sweep loaded again without the
    unhealthy runs (its own stats cache, keyed on the seeds left out); returns the stats used, the problems and
    the summary's `run_health`."""
    def load(cache_name: str, excluded: frozenset[int] = frozenset()) -> tuple[SweepStats, list[Problem]]:
        return load_sweep(sweep_dir, strict=options.strict, progress=options.load_progress,
                          cache_path=None if cache_dir is None else cache_dir / cache_name,
                          use_cache=options.use_cache, notify=options.notify, check=check, excluded_seeds=excluded)

    stats, problems = load(CACHE_NAME)
    health = check_runs(stats)
    if not options.exclude_unhealthy or not health["unhealthy"]:
        return stats, problems, health
    kept, problems = load(EXCLUDING_CACHE_NAME, unhealthy_seeds(health))
    health.update(excluded=True, exclusion_effect=exclusion_effect(stats, kept, mem_of, theta_mem))
    return kept, problems, health
