"""Planted-noise AUROC of every score column: how well a score ranks the flipped training labels as suspect."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.estimates import read_estimates
from src.errors import DataError
from src.estimators.subsample.influence import estimate
from src.estimators.subsample.memorization import EstimateConfig
from src.estimators.subsample.stats import SweepStats
from src.util.stats import auroc, finite_or_none
from src.util.tables import csv_rows

# Scores for which a LOW value flags an example (slow learning, small margin, low in-subset accuracy); the
# noise AUROC negates them (their raw AUROCs on a sweep with flipped labels are far below 1/2:
# docs/EXPERIMENTS.md).
LOW_SCORE_FLAGS = frozenset({"proxy_learn_speed", "proxy_margin", "acc_in", "acc_out"})
SWEEP_SOURCE = "sweep"


def estimate_scores(path: Path, stats: SweepStats) -> dict[str, np.ndarray]:
    """The score columns of an estimates dir: float arrays of shape (n_train,) not named *_se."""
    est = read_estimates(path)
    if est.n_train != stats.n_train or not np.array_equal(est.arrays["flipped"].astype(bool), flipped_mask(stats)):
        raise DataError(f"{est.path} flags other flipped examples than the sweep; pass estimates of this sweep")
    return {key: values for key, values in est.arrays.items()
            if values.dtype.kind == "f" and values.shape == (stats.n_train,) and not key.endswith("_se")}


def flipped_mask(stats: SweepStats) -> np.ndarray:
    flipped = np.zeros(stats.n_train, dtype=bool)
    flipped[stats.flipped_idx] = True
    return flipped


def noise_auroc(sources: Mapping[str, Mapping[str, np.ndarray]], flipped: np.ndarray) -> list[dict[str, Any]]:
    """One row per (source, score): AUROC of flipped vs clean and the counts. Scores in LOW_SCORE_FLAGS are
    negated first, so that every AUROC reads "how well the score ranks flipped labels as suspect"."""
    rows = []
    for source, scores in sources.items():
        for name, values in scores.items():
            low_flags = name in LOW_SCORE_FLAGS
            result = auroc(-values if low_flags else values, flipped)
            rows.append({"source": source, "score": name, "flags": "low" if low_flags else "high",
                         "auroc": finite_or_none(result.auroc),
                         "n_flipped": result.n_pos, "n_clean": result.n_neg, "nan_flipped": result.nan_pos,
                         "nan_clean": result.nan_neg})
    return rows


def evaluate_noise(stats: SweepStats, estimates_dirs: Sequence[Path]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The `noise` section of evaluation.json and noise_auroc.csv."""
    if stats.flipped_idx.size == 0:
        return {"skipped": "the records carry no flipped labels (train with dataset.label_noise=0.1, say)"}, {}
    est = estimate(stats, EstimateConfig(null_perms=0))
    sources = {SWEEP_SOURCE: {"mem": est.mem, "mem_soft": est.mem_soft}}
    sources.update({str(path): estimate_scores(path, stats) for path in estimates_dirs})
    rows = noise_auroc(sources, flipped_mask(stats))
    summary = {"n_flipped": int(stats.flipped_idx.size), "runs": stats.n_runs, "scores": rows}
    return summary, {"noise_auroc.csv": csv_rows(list(rows[0]), [list(row.values()) for row in rows]).encode()}
