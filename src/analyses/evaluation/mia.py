"""LiRA membership inference (Carlini et al. 2022) with the fit runs as shadow models and each held-out run as a
target (the definitions: src/evaluate.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.metrics import roc_curve

from src.util.plotting import new_figure, png_bytes
from src.util.stats import auroc, finite_or_none
from src.util.tables import csv_text

PROB_CLIP = 1e-6
# Carlini et al. 2022 (LiRA, "fixed variance"): below 64 shadow models a global variance estimate does
# better than per-example ones.
PER_EXAMPLE_MIN_SHADOW = 64
# Per-example phi variances are floored: an example whose probability is clipped in every shadow run has
# variance 0 (a degenerate Gaussian). The floor is far below the pooled variances of real sweeps
# (docs/EXPERIMENTS.md, membership inference), so it only touches such examples.
PHI_VARIANCE_FLOOR = 0.01
FPR_TARGETS = (0.01, 0.001)
# TPR at FPR a is reported when a x non-members >= 5: with fewer, it rests on a handful of points.
MIN_FALSE_POSITIVES = 5
ATTACKS = ("online", "offline", "baseline")
PLOT_DPI = 100
PLOT_INCHES = (6.0, 4.5)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The largest TPR over the ROC points (all thresholds) whose FPR is at most `target`."""
    return float(tpr[fpr <= target].max())


def logit(prob: np.ndarray) -> np.ndarray:
    """phi = log(p / (1 - p)), p clipped to [PROB_CLIP, 1 - PROB_CLIP]; float64."""
    p = np.clip(np.asarray(prob, dtype=np.float64), PROB_CLIP, 1 - PROB_CLIP)
    return np.log(p) - np.log1p(-p)


@dataclass
class LogitSums:
    """Per-example counts, sums and sums of squares of phi over the shadow runs, in and out of the subset."""

    n_in: np.ndarray
    sum_in: np.ndarray
    sq_in: np.ndarray
    n_out: np.ndarray
    sum_out: np.ndarray
    sq_out: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> LogitSums:
        return cls(*(np.zeros(n) for _ in range(6)))

    def add(self, mask: np.ndarray, prob: np.ndarray) -> None:
        phi = logit(prob)
        for side, where in (("in", mask), ("out", ~mask)):
            getattr(self, f"n_{side}")[where] += 1
            getattr(self, f"sum_{side}")[where] += phi[where]
            getattr(self, f"sq_{side}")[where] += phi[where] ** 2

    def gaussian(self, side: str, per_example: bool) -> tuple[np.ndarray, np.ndarray | float]:
        """(mean, variance) of phi on a side: NaN mean without runs there; variance per example (NaN below 2
        runs, floored at PHI_VARIANCE_FLOOR) or pooled over the examples with 2 runs or more."""
        n, total, squares = (getattr(self, f"{name}_{side}") for name in ("n", "sum", "sq"))
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(n > 0, total / n, np.nan)
            deviations = np.where(n >= 2, np.maximum(squares - total * mean, 0.0), 0.0)
            if per_example:
                return mean, np.where(n >= 2, np.maximum(deviations / (n - 1), PHI_VARIANCE_FLOOR), np.nan)
        dof = float(np.sum(np.maximum(n - 1, 0)))
        return mean, float(deviations.sum()) / dof if dof > 0 else float("nan")


def lira_scores(phi_sums: LogitSums, train_prob: np.ndarray, per_example: bool) -> dict[str, np.ndarray]:
    """(runs, n) scores of the target runs: online and offline LiRA and the confidence baseline."""
    phi = logit(train_prob)
    mu_in, var_in = phi_sums.gaussian("in", per_example)
    mu_out, var_out = phi_sums.gaussian("out", per_example)
    online = norm.logpdf(phi, mu_in, np.sqrt(var_in)) - norm.logpdf(phi, mu_out, np.sqrt(var_out))
    return {"online": online, "offline": (phi - mu_out) / np.sqrt(var_out), "baseline": phi}


def attack_metrics(scores: np.ndarray, members: np.ndarray) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """AUC, TPR at the FPR targets the non-members support, counts; and the ROC with collinear points
    dropped (for the CSV and plot)."""
    scores, members = scores.ravel(), members.ravel()
    result = auroc(scores, members)
    finite = ~np.isnan(scores)
    fpr, tpr, _ = roc_curve(members[finite], scores[finite], drop_intermediate=False)
    metrics = {"auc": finite_or_none(result.auroc), "members": result.n_pos, "non_members": result.n_neg,
               "nan_excluded": result.nan_pos + result.nan_neg,
               "tpr_at_fpr": {str(target): tpr_at_fpr(fpr, tpr, target) for target in FPR_TARGETS
                              if target * result.n_neg >= MIN_FALSE_POSITIVES}}
    thin_fpr, thin_tpr, _ = roc_curve(members[finite], scores[finite], drop_intermediate=True)
    return metrics, thin_fpr, thin_tpr


def vulnerability(online: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean online score of each example over the target runs that included it (NaN: none), and their count."""
    valid = masks & np.isfinite(online)
    count = valid.sum(axis=0)
    total = np.where(valid, online, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0), masks.sum(axis=0)


def use_per_example_variance(mode: str, shadow_runs: int) -> bool:
    return mode == "per-example" or (mode == "auto" and shadow_runs >= PER_EXAMPLE_MIN_SHADOW)


def render_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], metrics: Mapping[str, dict[str, Any]]) -> bytes:
    """Log-log ROC of the attacks (the low-FPR regime LiRA is judged by) with the chance line."""
    figure = new_figure(PLOT_INCHES)
    ax = figure.add_subplot()
    floor = 1e-4
    for name, (fpr, tpr) in curves.items():
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=f"{name} (AUC {metrics[name]['auc']:.3f})")
    ax.plot([floor, 1], [floor, 1], "k:", label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), xlabel="false positive rate",
           ylabel="true positive rate", title="membership inference on held-out runs")
    ax.legend(loc="lower right")
    figure.tight_layout()
    return png_bytes(figure)


def roc_csv(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    names = np.concatenate([np.full(fpr.size, name) for name, (fpr, _) in curves.items()])
    return csv_text({"attack": names, "fpr": np.concatenate([fpr for fpr, _ in curves.values()]),
                     "tpr": np.concatenate([tpr for _, tpr in curves.values()])})
