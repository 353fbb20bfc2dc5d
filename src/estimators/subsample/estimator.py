"""Feldman & Zhang's subsampled estimator (Algorithm 1 of the paper): the subset job writes one record per seed
(src/training/job.py); the reduce streams the records into sufficient statistics (load.py, stats.py, cache.py)
and computes memorization (memorization.py), influence, top-k influencers, high-influence pairs and the pairs
expected by chance (influence.py, topk.py), and the summary (summary.py).

Notebook API (numpy only): `stats, problems = load_sweep(dir)`, `est = estimate(stats)`,
`write_outputs(out_dir, stats, est, summarize(stats, est, problems))`; `pair_influence` gives the influence of
chosen (train, test) pairs with their standard errors.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.estimates import Estimates, write_estimates
from src.errors import MeminfError
from src.estimators.base import Estimator, ReduceOptions
from src.estimators.subsample.health import load_checked
from src.estimators.subsample.influence import estimate
from src.estimators.subsample.load import load_notes
from src.estimators.subsample.memorization import EstimateConfig, SubsampleEstimates, memorization
from src.estimators.subsample.stats import SweepStats
from src.estimators.subsample.summary import ESTIMATOR, format_summary, summarize

TRAIN_COLUMNS = ("mem", "mem_se", "mem_soft", "mem_soft_se", "n_in", "n_out", "acc_in", "acc_out")


def to_estimates(stats: SweepStats, est: SubsampleEstimates, summary: dict[str, Any],
                 train_paths: list[str] | None = None) -> Estimates:
    """The estimates contract's form of a sweep's estimates (src/contracts/estimates.py)."""
    flipped = np.zeros(stats.n_train, dtype=bool)
    flipped[stats.flipped_idx] = True
    arrays: dict[str, np.ndarray] = {name: getattr(est, name) for name in TRAIN_COLUMNS}
    arrays.update({
        "orig_label": stats.orig_label, "flipped": flipped, "train_label": stats.train_label,
        "test_label": stats.test_label, "topk_idx": est.topk_idx, "topk_infl": est.topk_infl,
        "pair_train_idx": est.pairs.train_idx, "pair_test_idx": est.pairs.test_idx,
        "pair_infl": est.pairs.infl, "pair_infl_se": est.pairs.infl_se,
        "seeds": np.asarray(stats.seeds, dtype=np.int64), "test_acc": np.asarray(stats.test_acc),
        "train_in_acc": np.asarray(stats.train_in_acc), "mem_epoch": est.mem_epoch, "epoch_list": stats.epoch_list,
    })
    arrays.update({f"proxy_{name}": values for name, values in est.proxies.items()})
    arrays.update({f"extra_{name}": np.asarray(values) for name, values in stats.extras.items()})
    if train_paths is not None:
        arrays["train_path"] = np.array(train_paths, dtype=str)
    return Estimates(summary, arrays, dense=est.dense)


def write_outputs(out_dir: str | Path, stats: SweepStats, est: SubsampleEstimates, summary: dict[str, Any],
                  gallery_png: bytes | None = None, train_paths: list[str] | None = None) -> list[Path]:
    """Write a sweep's estimates through the contract (with gallery.png when given); the dense matrix, if any,
    moves into place."""
    estimates = to_estimates(stats, est, summary, train_paths)
    est.dense = None
    return write_estimates(out_dir, estimates, {} if gallery_png is None else {"gallery.png": gallery_png})


# Examples that must be both in and out of some subset before a sweep is worth estimating.
COVERAGE_TARGET = 0.99


def check_estimable(stats: SweepStats) -> None:
    """mem needs, for an example, runs with it in the subset and runs without it: refuse a sweep where no example
    has both, saying how many runs would do."""
    if np.any((stats.n_in > 0) & (stats.n_in < stats.n_runs)):
        return
    ratio = float(stats.meta["ratio"])
    if ratio >= 1:
        raise MeminfError(f"the {stats.n_runs} run(s) trained at subset.ratio={ratio:g}, on every example: none was "
                          "ever left out, so no example has a memorization estimate. mem needs runs with each "
                          "example in its subset and runs without it: sweep at a ratio below 1 (the paper's: 0.7)")
    needed = math.ceil(math.log(1 - COVERAGE_TARGET) / math.log(max(ratio, 1 - ratio)))
    raise MeminfError(f"{stats.n_runs} run(s): no example was both in and out of a subset, so none has a "
                      f"memorization estimate. Every example needs runs with it in its subset and runs without it: "
                      f"train at least {needed} seeds at subset.ratio={ratio:g} (then {COVERAGE_TARGET:.0%} of the "
                      "examples have both)")


class SubsampleEstimator(Estimator):
    name = ESTIMATOR
    description = "Feldman & Zhang's subsampled estimator: K subset models, mem and infl from in/out differences"
    trains = "subsets"

    def reduce(self, sweep_dir: Path, options: ReduceOptions) -> Estimates:
        config = options.settings or EstimateConfig()
        config.validate()
        notify = options.notify or print
        out_dir = options.out_dir if options.out_dir is not None else self.out_dir(sweep_dir)
        stats, problems, health = load_checked(sweep_dir, replace(options, notify=notify),
                                               lambda stats: memorization(stats)["mem"], config.theta_mem,
                                               cache_dir=out_dir, check=check_estimable)
        for line in load_notes(stats, problems):
            notify(line)
        est = estimate(stats, config, dense_dir=out_dir, progress=options.reduce_progress)
        try:
            return to_estimates(stats, est, summarize(stats, est, problems, health))
        except BaseException:
            est.discard_dense()
            raise

    def format_summary(self, summary: dict[str, Any]) -> str:
        return format_summary(summary)
