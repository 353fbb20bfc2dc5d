"""Correlations, AUROC and confidence intervals used by the estimators and the analyses (numpy and scipy only).

Conventions: a correlation of fewer than 3 (Spearman) or 2 (Pearson) values, or of a constant side, is
undefined (None); a confidence interval of fewer than 2 values has no bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


def finite_or_none(value: object) -> float | None:
    """A float for JSON: None for NaN and infinities."""
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None with fewer than 2 values or a constant side."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return None
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denominator if denominator > 0 else None


def jaccard_index(a: np.ndarray, b: np.ndarray) -> float | None:
    """|a & b| / |a | b| of two arrays of unique keys; None when both are empty."""
    both = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - both
    return both / union if union else None


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman correlation (Pearson of average ranks) over the entries where both are finite; None when
    fewer than 3 such entries or either side is constant."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < 3:
        return None
    value = pearson(rankdata(x[both]), rankdata(y[both]))
    return None if value is None else finite_or_none(value)


def column_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of a[:, j] and b[:, j] for every column j (Pearson of midranks); NaN where a
    column is constant."""
    from scipy.stats import rankdata

    ranks_a, ranks_b = rankdata(a, axis=0), rankdata(b, axis=0)
    ranks_a -= ranks_a.mean(axis=0)
    ranks_b -= ranks_b.mean(axis=0)
    numerator = (ranks_a * ranks_b).sum(axis=0)
    denominator = np.sqrt((ranks_a**2).sum(axis=0) * (ranks_b**2).sum(axis=0))
    out = np.full(numerator.shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


@dataclass(frozen=True)
class Auroc:
    auroc: float  # NaN when a class is empty
    n_pos: int
    n_neg: int
    nan_pos: int  # left out: NaN score
    nan_neg: int


def auroc(scores: np.ndarray, positive: np.ndarray) -> Auroc:
    """AUROC of positives above negatives: Mann-Whitney U / (n_pos n_neg) with midranks (a tie counts 1/2);
    NaN scores are left out and counted per class."""
    from scipy.stats import rankdata

    scores, positive = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(positive, dtype=bool).ravel()
    missing = np.isnan(scores)
    s, y = scores[~missing], positive[~missing]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    value = float("nan")
    if n_pos and n_neg:
        ranks = rankdata(s)
        value = (float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return Auroc(value, n_pos, n_neg, int((missing & positive).sum()), int((missing & ~positive).sum()))


@dataclass(frozen=True)
class MeanCI:
    """Mean of the finite values with a two-sided interval: normal (mean ± z sd/√n) or Student-t."""

    n: int
    n_nan: int
    mean: float | None
    half: float | None  # half-width; None below 2 values
    median: float | None

    @property
    def low(self) -> float | None:
        return None if self.half is None or self.mean is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None or self.mean is None else self.mean + self.half

    def as_dict(self) -> dict[str, object]:
        """{mean, ci95, median, n, n_nan} for JSON summaries."""
        ci = None if self.half is None else [self.low, self.high]
        return {"mean": self.mean, "ci95": ci, "median": self.median, "n": self.n, "n_nan": self.n_nan}


def mean_ci(values: np.ndarray | list[float], level: float = CONFIDENCE, student_t: bool = False) -> MeanCI:
    """Mean, interval half-width (sd ddof 1 / √n times the normal, or with `student_t` the t, quantile of
    `level`) and median over the finite values; how many were not finite."""
    from scipy.stats import norm, t

    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    if not finite.size:
        return MeanCI(0, int(array.size), None, None, None)
    mean, half = float(finite.mean()), None
    if finite.size >= 2:
        quantile = t.ppf(0.5 + level / 2, finite.size - 1) if student_t else norm.ppf(0.5 + level / 2)
        half = float(quantile * finite.std(ddof=1) / math.sqrt(finite.size))
    return MeanCI(int(finite.size), int(array.size - finite.size), mean, half, float(np.median(finite)))
