"""Convergence of a sweep's estimate with the runs: estimates of its first K runs (by seed), K = 16, 32, 64, ...,
against the estimate of all its runs and, when given, against an independent sweep of the same data.

(the command line is src/convergence.py)

Agreement as in the split-half reliability (src/estimators/subsample/reliability.py): Spearman of mem on the
examples either side calls non-trivial, Jaccard of the memorized sets and of the high-influence pairs, Pearson of
mem. Against the full sweep the first K runs are part of it, so that agreement reaches 1 at the full K; against an
independent sweep it levels off where the sampling error of the other sweep dominates. The records are read once
more, in seed order, after the sweep's statistics have been loaded and checked.

Outputs (in --out, default <sweep dir>/convergence), each written atomically: convergence.csv (one row per K and
reference: k, reference, reference_runs, then the metrics; an empty field where a metric is undefined) and
convergence.png (each metric against K, log scale).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.records import read_record
from src.errors import MeminfError
from src.estimators.subsample.influence import estimate
from src.estimators.subsample.memorization import EstimateConfig
from src.estimators.subsample.reliability import PartEstimate, agreement
from src.estimators.subsample.stats import SweepStats
from src.util.plotting import new_figure, png_bytes
from src.util.tables import csv_text

OUTPUT_FILES = ("convergence.csv", "convergence.png")
FIRST_K = 16  # the smallest nested K; each next one doubles
CURVE_METRICS = ("spearman_non_trivial", "jaccard_memorized", "jaccard_pairs", "pearson")


def nested_ks(n_runs: int) -> list[int]:
    """16, 32, 64, ... below n_runs, then n_runs itself."""
    ks, k = [], FIRST_K
    while k < n_runs:
        ks.append(k)
        k *= 2
    return [*ks, n_runs]


def part_of(stats: SweepStats, config: EstimateConfig) -> PartEstimate:
    est = estimate(stats, config)
    return PartEstimate(stats.n_runs, est.mem, est.mem_se, est.pairs.train_idx * stats.n_test + est.pairs.test_idx)


def check_independent(sweep_dir: Path, stats: SweepStats, other_dir: Path, other: SweepStats) -> None:
    """One line when the other sweep holds other data, or shares subsets with this one (same seeds and salt)."""
    if (other.meta["data_fingerprint"] != stats.meta["data_fingerprint"]
            or not np.array_equal(other.train_label, stats.train_label)
            or not np.array_equal(other.test_label, stats.test_label)):
        raise MeminfError(f"--against {other_dir} holds other data than {sweep_dir} (data_fingerprint "
                          f"{other.meta['data_fingerprint']} vs {stats.meta['data_fingerprint']}); pass a sweep "
                          "of the same data")
    shared = sorted(set(other.seeds) & set(stats.seeds))
    if shared and other.meta["salt"] == stats.meta["salt"] and other.meta["ratio"] == stats.meta["ratio"]:
        raise MeminfError(f"--against {other_dir} shares {len(shared)} seeds (first {shared[0]}) and their subsets "
                          f"with {sweep_dir}, so it is not independent; pass a sweep of disjoint seeds or another "
                          "subset.salt")


def nested_stats(stats: SweepStats, ks: list[int]) -> Iterator[SweepStats]:
    """The statistics of the first k runs (by seed) for each k of `ks`, folded from the records in one pass."""
    nested = None
    for count, path in enumerate(stats.paths, start=1):
        record = read_record(path)
        if nested is None:
            nested = SweepStats.from_record(record, path, capacity=stats.n_runs)
        else:
            nested.add_record(record, path)
        if count in ks:
            yield nested


def convergence_rows(stats: SweepStats, other: SweepStats | None, config: EstimateConfig) -> list[dict[str, Any]]:
    """One row per K and reference ("full", and "against" with another sweep)."""
    full = part_of(stats, config)
    references = {"full": full} | ({"against": part_of(other, config)} if other is not None else {})
    rows = []
    ks = nested_ks(stats.n_runs)
    for k, nested in zip(ks, nested_stats(stats, ks), strict=True):
        part = part_of(nested, config) if k < stats.n_runs else full
        for name, reference in references.items():
            rows.append({"k": k, "reference": name, "reference_runs": reference.runs,
                         **{metric: value for metric, value in agreement(part, reference, config.theta_mem).items()
                            if metric in CURVE_METRICS}})
    return rows


def render_png(rows: list[dict[str, Any]]) -> bytes:
    figure = new_figure((10, 3), layout="constrained")
    for position, metric in enumerate(CURVE_METRICS, start=1):
        axes = figure.add_subplot(1, len(CURVE_METRICS), position)
        for reference in dict.fromkeys(row["reference"] for row in rows):
            points = [(row["k"], row[metric]) for row in rows if row["reference"] == reference
                      and row[metric] is not None]
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", label=reference)
        axes.set_xscale("log", base=2)
        axes.set_xlabel("runs K")
        axes.set_title(metric.replace("_", " "), fontsize="small")
        axes.set_ylim(0, 1.02)
    figure.axes[0].legend(fontsize="small")
    return png_bytes(figure)


def convergence_outputs(stats: SweepStats, other: SweepStats | None,
                        config: EstimateConfig) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    rows = convergence_rows(stats, other, config)
    columns = {key: np.array([np.nan if row[key] is None else row[key] for row in rows]) if key in CURVE_METRICS
               else np.array([row[key] for row in rows]) for key in rows[0]}
    return {"convergence.csv": csv_text(columns).encode(), "convergence.png": render_png(rows)}, rows
