"""The linear datamodeling score (Park et al. 2023) of influence matrices on the held-out runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from src.errors import ConfigError, DataError
from src.estimators.subsample.influence import MB, estimate
from src.estimators.subsample.memorization import EstimateConfig, SubsampleEstimates
from src.estimators.subsample.stats import SweepStats
from src.util.plotting import new_figure, png_bytes
from src.util.stats import column_spearman, mean_ci
from src.util.tables import csv_text

if TYPE_CHECKING:
    from src.analyses.evaluation.split import SplitSweep

FIT_MATRIX = "estimate"
PLOT_INCHES = (6.0, 4.5)


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


def linear_datamodel_scores(infl: np.ndarray, masks: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """LDS_j for every test example: Spearman over runs of sum_{i in subset} infl(i, j) (NaN as 0) vs actual."""
    predicted = masks.astype(np.float32) @ np.nan_to_num(infl, nan=0.0)
    return column_spearman(predicted, actual)


def render_lds(columns: Mapping[str, np.ndarray]) -> bytes:
    figure = new_figure(PLOT_INCHES)
    ax = figure.add_subplot()
    bins = np.linspace(-1, 1, 41)
    for name, values in columns.items():
        finite = values[np.isfinite(values)]
        if finite.size:
            ax.hist(finite, bins=bins, alpha=0.6, label=f"{name} (mean {finite.mean():.3f})")
    ax.set(xlabel="LDS of a test example (Spearman over held-out runs)", ylabel="test examples",
           title="linear datamodeling score")
    ax.legend(loc="upper left")
    figure.tight_layout()
    return png_bytes(figure)


def evaluate_lds(split: SplitSweep, stats: SweepStats,
                 matrices: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The `lds` section of evaluation.json, lds.csv and lds.png."""
    masks, actual = np.stack(split.held_out.masks), np.stack(split.held_out.test_prob)
    columns = {name: linear_datamodel_scores(infl, masks, actual) for name, infl in matrices.items()}
    summary = {
        "target": "test_prob (probability of the test label)", "held_out_runs": len(split.held_out.seeds),
        "matrices": {name: mean_ci(values).as_dict() for name, values in columns.items()},
    }
    csv_columns = {"test_index": np.arange(stats.n_test), "label": stats.test_label}
    csv_columns.update({f"lds_{name}": values for name, values in columns.items()})
    return summary, {"lds.csv": csv_text(csv_columns).encode(), "lds.png": render_lds(columns)}
