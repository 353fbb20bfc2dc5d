"""The linear datamodeling score (Park et al. 2023) of influence matrices on the held-out runs, and its noise
ceiling from held-out subsets trained more than once (definitions: src/evaluate.py).

For a benchmark: `linear_datamodel_scores(infl, masks, actual)` gives LDS_j from any (n_train, n_test) matrix,
run masks and outputs; `lds_ceiling(outputs)` the repeat agreement and ceiling of outputs (subsets, repeats,
n_test); `ceiling_summary` both side by side with their intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from src.errors import ConfigError, DataError
from src.estimators.subsample.influence import MB, estimate
from src.estimators.subsample.memorization import EstimateConfig, SubsampleEstimates
from src.estimators.subsample.stats import SweepStats
from src.util.plotting import new_figure, png_bytes
from src.util.stats import CONFIDENCE, column_spearman, finite_or_none, mean_ci
from src.util.tables import csv_text

if TYPE_CHECKING:
    from src.analyses.evaluation.split import SplitSweep

FIT_MATRIX = "estimate"
PLOT_INCHES = (6.0, 4.5)
MIN_REPEATED_SUBSETS = 3  # a Spearman over subsets needs 3
MIN_REPEATS = 2
BOOTSTRAP_REPLICATES = 200  # enough for a standard error (the interval is estimate +- 1.96 SE)
BOOTSTRAP_SEED = 0
CEILING_CI = (f"ci95: normal over the test examples (mean +- 1.96 sd / sqrt(m)); ci95_subsets: the estimate +- "
              f"1.96 sd of it over {BOOTSTRAP_REPLICATES} bootstrap resamples of the held-out subsets, each drawn "
              f"with its repeats")


def check_dense_cap(n_train: int, n_test: int, cap_mb: float) -> None:
    size_mb = n_train * n_test * 4 / MB
    if size_mb > cap_mb:
        raise ConfigError(f"the influence matrix ({n_train} x {n_test} float32, {size_mb:.0f} MB) exceeds "
                          f"--dense-cap-mb {cap_mb:g}; raise the cap or leave lds out of --parts")


def read_influence(path: Path, n_train: int, n_test: int, cap_mb: float) -> np.ndarray:
    """An (n_train, n_test) float matrix from a .npy file, as float32."""
    check_dense_cap(n_train, n_test, cap_mb)
    try:
        matrix = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read {path} as a .npy array ({err})") from err
    if matrix.shape != (n_train, n_test) or matrix.dtype.kind != "f":
        raise DataError(f"{path} has dtype {matrix.dtype} shape {matrix.shape}; --infl needs floats of shape "
                        f"(n_train, n_test) = ({n_train}, {n_test})")
    return np.asarray(matrix, dtype=np.float32)


def fit_estimate(split: SplitSweep, dense_cap_mb: float, out_dir: Path) -> tuple[SubsampleEstimates, np.ndarray | None]:
    """Estimates of the fit runs with their influence matrix (in a temp file under out_dir that write_outputs
    moves into place), and the matrix in memory; None when it exceeds the cap."""
    config = EstimateConfig(null_perms=0, dense_cap_mb=dense_cap_mb)
    est = estimate(split.fit, config, dense_dir=out_dir)
    if est.dense is None:
        return est, None
    return est, np.array(np.load(est.dense.tmp, allow_pickle=False, mmap_mode="r"))


def predicted_outputs(infl: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(runs, n_test): sum_{i in run k's subset} infl(i, j), a NaN influence counted as 0."""
    return masks.astype(np.float32) @ np.nan_to_num(infl, nan=0.0)


def linear_datamodel_scores(infl: np.ndarray, masks: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """LDS_j for every test example: Spearman over runs of sum_{i in subset} infl(i, j) (NaN as 0) vs actual."""
    return column_spearman(predicted_outputs(infl, masks), actual)


@dataclass(frozen=True)
class Ceiling:
    """Per test example: the repeat agreement r_j and the LDS ceiling sqrt(max(r_j, 0)); NaN where undefined."""

    agreement: np.ndarray
    ceiling: np.ndarray


def lds_ceiling(outputs: np.ndarray) -> Ceiling:
    """The noise ceiling of LDS from outputs (n_subsets, repeats, n_test) of models trained on one subset each
    with another seed: r_j = Spearman over subsets between the outputs of two repeats, averaged over every pair
    of repeats (NaN where a pair's side is constant), and sqrt(max(r_j, 0)), the largest correlation with one
    model's output that a predictor seeing only the subset can reach (src/evaluate.py)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim != 3 or outputs.shape[0] < MIN_REPEATED_SUBSETS or outputs.shape[1] < MIN_REPEATS:
        raise ValueError(f"outputs of shape {outputs.shape}: need (subsets >= {MIN_REPEATED_SUBSETS}, "
                         f"repeats >= {MIN_REPEATS}, n_test)")
    pairs = combinations(range(outputs.shape[1]), 2)
    agreement = np.mean([column_spearman(outputs[:, a], outputs[:, b]) for a, b in pairs], axis=0)
    return Ceiling(agreement, np.sqrt(np.clip(agreement, 0.0, None)))


def repeated_subsets(subset_seeds: Sequence[int]) -> np.ndarray | None:
    """(subsets, repeats) indices of runs that share a subset (by subset seed, in run order): every subset
    trained by at least MIN_REPEATS runs, each with its first R runs, R the fewest runs of such a subset; None
    when fewer than MIN_REPEATED_SUBSETS subsets were repeated."""
    runs_of: dict[int, list[int]] = {}
    for run, seed in enumerate(subset_seeds):
        runs_of.setdefault(int(seed), []).append(run)
    groups = [runs for runs in runs_of.values() if len(runs) >= MIN_REPEATS]
    if len(groups) < MIN_REPEATED_SUBSETS:
        return None
    repeats = min(len(runs) for runs in groups)
    return np.array([runs[:repeats] for runs in groups], dtype=np.int64)


@dataclass(frozen=True)
class CeilingMeans:
    """Means over the test examples where LDS and the agreement are both defined."""

    lds: float
    agreement: float
    ceiling: float

    @property
    def ratio(self) -> float:
        return self.lds / self.ceiling if self.ceiling > 0 else math.nan

    @classmethod
    def of(cls, lds: np.ndarray, ceiling: Ceiling) -> CeilingMeans:
        both = np.isfinite(lds) & np.isfinite(ceiling.agreement)
        if not both.any():
            return cls(math.nan, math.nan, math.nan)
        return cls(float(lds[both].mean()), float(ceiling.agreement[both].mean()), float(ceiling.ceiling[both].mean()))


Interval = list[float] | None


def _bootstrap_interval(estimate: float, draws: Sequence[float]) -> Interval:
    """estimate +- z sd of the finite bootstrap draws (centred on the estimate: a resample repeats subsets, which
    ties their outputs and pulls a resampled Spearman, and so percentiles, below the sample's)."""
    finite = np.asarray(draws, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2 or not math.isfinite(estimate):
        return None
    half = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2) * float(finite.std(ddof=1))
    return [estimate - half, estimate + half]


def bootstrap_ceiling(predicted: np.ndarray, actual: np.ndarray, groups: np.ndarray,
                      replicates: int = BOOTSTRAP_REPLICATES, seed: int = BOOTSTRAP_SEED) -> dict[str, Interval]:
    """95% intervals of the CeilingMeans (and their ratio) on the runs of `groups`: the estimate +- 1.96 sd over
    `replicates` resamples of the subsets (rows of `groups`, each with its repeats); predicted and actual are
    (runs, n_test)."""
    rng = np.random.default_rng(seed)
    rows = groups.ravel()
    estimate = CeilingMeans.of(column_spearman(predicted[rows], actual[rows]), lds_ceiling(actual[groups]))
    draws: dict[str, list[float]] = {"lds": [], "agreement": [], "ceiling": [], "ratio": []}
    for _ in range(replicates):
        picked = groups[rng.integers(0, len(groups), len(groups))]
        rows = picked.ravel()
        means = CeilingMeans.of(column_spearman(predicted[rows], actual[rows]), lds_ceiling(actual[picked]))
        for name, values in draws.items():
            values.append(getattr(means, name))
    return {name: _bootstrap_interval(getattr(estimate, name), values) for name, values in draws.items()}


def matrix_ceiling(predicted: np.ndarray, actual: np.ndarray, groups: np.ndarray, ceiling: Ceiling,
                   replicates: int = BOOTSTRAP_REPLICATES) -> dict[str, Any]:
    """One matrix's LDS on the runs of `groups` beside the agreement and ceiling, all on the test examples
    where LDS and the agreement are both defined, and LDS / ceiling (intervals: CEILING_CI)."""
    rows = groups.ravel()
    lds = column_spearman(predicted[rows], actual[rows])
    both = np.isfinite(lds) & np.isfinite(ceiling.agreement)
    intervals = bootstrap_ceiling(predicted, actual, groups, replicates)
    per_example = {"lds": lds, "agreement": ceiling.agreement, "ceiling": ceiling.ceiling}
    means = CeilingMeans.of(lds, ceiling)
    return {
        "examples": int(both.sum()), "examples_left_out": int((~both).sum()),
        **{name: {**mean_ci(values[both]).as_dict(), "ci95_subsets": intervals[name]}
           for name, values in per_example.items()},
        "ratio": {"value": finite_or_none(means.ratio), "ci95_subsets": intervals["ratio"]},
        "sqrt_mean_agreement": finite_or_none(math.sqrt(max(means.agreement, 0.0))) if both.any() else None,
    }


def ceiling_summary(predicted: Mapping[str, np.ndarray], actual: np.ndarray, groups: np.ndarray,
                    replicates: int = BOOTSTRAP_REPLICATES) -> tuple[dict[str, Any], Ceiling]:
    """LDS beside its ceiling on the held-out runs of `groups` (subsets, repeats: indices into the rows of
    `actual`, (runs, n_test)), for each matrix's predicted outputs (runs, n_test); and the per-example ceiling.
    `agreement_all` and `ceiling_all` are over every test example with a defined agreement."""
    ceiling = lds_ceiling(actual[groups])
    return {
        "held_out_subsets": int(groups.shape[0]), "repeats": int(groups.shape[1]), "runs": int(groups.size),
        "ci": CEILING_CI, "agreement_all": mean_ci(ceiling.agreement).as_dict(),
        "ceiling_all": mean_ci(ceiling.ceiling).as_dict(),
        "matrices": {name: matrix_ceiling(values, actual, groups, ceiling, replicates)
                     for name, values in predicted.items()},
    }, ceiling


def render_lds(columns: Mapping[str, np.ndarray], ceiling: np.ndarray | None = None) -> bytes:
    figure = new_figure(PLOT_INCHES)
    ax = figure.add_subplot()
    bins = np.linspace(-1, 1, 41)
    shown = {**columns, **({} if ceiling is None else {"ceiling sqrt(r)": ceiling})}
    for name, values in shown.items():
        finite = values[np.isfinite(values)]
        if finite.size:
            ax.hist(finite, bins=bins, alpha=0.6, label=f"{name} (mean {finite.mean():.3f})")
    ax.set(xlabel="LDS of a test example (Spearman over held-out runs)", ylabel="test examples",
           title="linear datamodeling score" + ("" if ceiling is None else " and its noise ceiling"))
    ax.legend(loc="upper left")
    figure.tight_layout()
    return png_bytes(figure)


def evaluate_lds(split: SplitSweep, stats: SweepStats, matrices: Mapping[str, np.ndarray],
                 replicates: int = BOOTSTRAP_REPLICATES) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The `lds` section of evaluation.json, lds.csv and lds.png; with `ceiling` when at least
    MIN_REPEATED_SUBSETS held-out subsets were trained by MIN_REPEATS runs or more."""
    masks, actual = np.stack(split.held_out.masks), np.stack(split.held_out.test_prob)
    predicted = {name: predicted_outputs(infl, masks) for name, infl in matrices.items()}
    columns = {name: column_spearman(values, actual) for name, values in predicted.items()}
    summary = {
        "target": "test_prob (probability of the test label)", "held_out_runs": len(split.held_out.seeds),
        "matrices": {name: mean_ci(values).as_dict() for name, values in columns.items()},
    }
    csv_columns = {"test_index": np.arange(stats.n_test), "label": stats.test_label}
    csv_columns.update({f"lds_{name}": values for name, values in columns.items()})
    groups = repeated_subsets(split.held_out.subset_seeds)
    ceiling = None
    if groups is not None:
        summary["ceiling"], per_example = ceiling_summary(predicted, actual, groups, replicates)
        csv_columns.update(repeat_agreement=per_example.agreement, ceiling=per_example.ceiling)
        ceiling = per_example.ceiling
    return summary, {"lds.csv": csv_text(csv_columns).encode(), "lds.png": render_lds(columns, ceiling)}
