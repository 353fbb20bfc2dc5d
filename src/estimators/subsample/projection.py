"""How agreement grows with the runs: the projections of the split-half reliability (reliability.py).

- Pearson over all examples (Spearman-Brown): two disjoint estimates of k runs that correlate at r become, with
  c times the runs each, rho(c) = c r / (1 + (c - 1) r).
- The Spearman on non-trivial examples and the Jaccard of the memorized sets, which Spearman-Brown does not cover
  (the sets are chosen from noisy estimates): an empirical fit of the agreement a(k) of two disjoint k-run
  estimates measured at k = K/8, K/4 and K/2, logit a(k) = slope * log k + intercept. Spearman-Brown itself is
  this curve with slope 1 (a / (1 - a) = k / k0), so the fit keeps its shape and lets the data set the rate.
  It is fitted only where the three agreements lie in (0, 1) and grow with k.
The validation against measured agreements of independent sweeps: docs/EXPERIMENTS.md (section 9).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping


def spearman_brown(r: float, c: float) -> float:
    """The correlation of two estimates of c times the runs of two estimates that correlate at r."""
    return c * r / (1 + (c - 1) * r)


def runs_for(r: float, half_runs: float, target: float) -> float | None:
    """Runs per sweep at which two independent sweeps correlate at `target`, from two halves of `half_runs`
    runs that correlate at r (Spearman-Brown solved for c); None where r <= 0."""
    if r <= 0:
        return None
    return target * (1 - r) / (r * (1 - target)) * half_runs


def _logit(a: float) -> float:
    return math.log(a / (1 - a))


def logit_fit(agreement_at: Mapping[float, float | None]) -> tuple[float, float] | None:
    """(slope, intercept) of logit a(k) = slope * log k + intercept by least squares over the k of
    `agreement_at`; None unless every agreement is in (0, 1) and they grow with k."""
    points = sorted(agreement_at.items())
    if len(points) < 2 or any(a is None or not 0 < a < 1 for _, a in points):
        return None
    if any(later <= earlier for (_, earlier), (_, later) in itertools.pairwise(points)):  # type: ignore[operator]
        return None
    xs = [math.log(k) for k, _ in points]
    ys = [_logit(a) for _, a in points]  # type: ignore[arg-type]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / sum((x - x_mean) ** 2 for x in xs)
    return slope, y_mean - slope * x_mean


def fitted_agreement(fit: tuple[float, float], runs: float) -> float:
    """a(runs) of the fit: the agreement of two independent sweeps of `runs` runs each."""
    slope, intercept = fit
    return 1 / (1 + math.exp(-(slope * math.log(runs) + intercept)))


def fitted_runs_for(fit: tuple[float, float], target: float) -> float:
    """The runs per sweep at which the fit reaches `target`."""
    slope, intercept = fit
    return math.exp((_logit(target) - intercept) / slope)
