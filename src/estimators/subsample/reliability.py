"""Split-half reliability of a subsample estimate: would the answers a user reads be the same from other runs?

The runs fall into seed groups (stats.py: seed mod RELIABILITY_GROUPS), and each group keeps its own counts, so
nothing here reads a record again and adding runs stays incremental. A halving is a set of groups (half A)
against the others (half B). HALVINGS: the interleaved halving (even against odd seeds) and the halvings by
the second and the third bit of the seed, so that any two of them cut each other's halves into equal parts.
Each half gets its own estimate, by the same rules as the full one (memorization.py, influence.py): mem and its
Agresti-Caffo SE, and the high-influence pairs. Their agreement, per halving and averaged in the summary:

- spearman_non_trivial: Spearman of mem_A and mem_B on the examples either half calls non-trivial
  (mem >= NON_TRIVIAL);
- jaccard_memorized: Jaccard of the memorized sets (mem >= theta_mem);
- jaccard_pairs: Jaccard of the high-influence pair sets;
- pearson: Pearson of mem over every example both halves estimate;
- se_calibration: the share of those examples with |mem_A - mem_B| <= Z_95 sqrt(se_A^2 + se_B^2): about 0.95 when
  the standard errors are honest; se_calibration_non_trivial the same on the non-trivial examples. Agresti-Caffo's
  pseudo-counts make the SE conservative for examples every run gets right (their halves agree exactly while
  the SE stays above zero), so the first share sits near 1 on data sets that are mostly easy.

Projection to other K (projection.py): from the halves' Pearson by Spearman-Brown, and for the Spearman and the
memorized sets' Jaccard by a fit through the agreements of disjoint parts of K/8, K/4 and K/2 runs: each gives
the agreement expected between this sweep and an independent one of the same K, and the runs per sweep at
which two independent sweeps agree at PROJECTION_TARGET. Pearson also gives this sweep's agreement with the
K -> infinity answer, sqrt(rho).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from src.estimators.subsample.influence import pair_keys_of_runs
from src.estimators.subsample.memorization import EstimateConfig, agresti_caffo_se, mean_difference
from src.estimators.subsample.projection import (
    fitted_agreement,
    fitted_runs_for,
    logit_fit,
    runs_for,
    spearman_brown,
)
from src.estimators.subsample.stats import (
    GROUP_HARD_ALL,
    GROUP_HARD_IN,
    GROUP_N_IN,
    RELIABILITY_GROUPS,
    SweepStats,
)
from src.util.stats import CONFIDENCE, finite_or_none, jaccard_index, pearson, spearman

NON_TRIVIAL = 0.05  # mem at or above which an example counts as non-trivially memorized (issue 12)
Z_95 = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # the two-sided 95% normal quantile (no scipy import at start)
PROJECTION_TARGET = 0.9  # the agreement of two independent sweeps that the "runs for" figures aim at
# The projections are validated up to 10 times the runs they come from (docs/EXPERIMENTS.md section 9: from 100
# runs to K = 1,000); a "runs for" figure further out is printed as beyond that reach, not as a number.
PROJECTION_REACH = 10
HALVINGS = (  # groups of half A (seed mod RELIABILITY_GROUPS); half B is the rest
    frozenset(g for g in range(RELIABILITY_GROUPS) if g % 2 == 0),
    frozenset(g for g in range(RELIABILITY_GROUPS) if g // 2 % 2 == 0),
    frozenset(g for g in range(RELIABILITY_GROUPS) if g // 4 % 2 == 0),
)
METRICS = ("spearman_non_trivial", "jaccard_memorized", "jaccard_pairs", "pearson", "se_calibration",
           "se_calibration_non_trivial")
MIN_HALF_RUNS = 2  # a half with fewer runs has no estimate worth comparing
# Disjoint parts of K/8 and of K/4 runs, compared pairwise for the empirical projection (projection.py): groups
# g and g + 4; then {0, 4} against {2, 6} and {1, 5} against {3, 7}. The halves are HALVINGS.
NESTED_PARTS = (
    tuple((frozenset({g}), frozenset({g + 4})) for g in range(4)),
    ((frozenset({0, 4}), frozenset({2, 6})), (frozenset({1, 5}), frozenset({3, 7}))),
)
# The pairs' Jaccard is not projected: at the runs of K/8 most pairs are chance, and the fit through them
# fails its validation (docs/EXPERIMENTS.md section 9).
EMPIRICAL_METRICS = ("spearman_non_trivial", "jaccard_memorized")


@dataclass(frozen=True)
class PartEstimate:
    """An estimate from some of the runs: their count, mem and SE, the high-influence pairs (train * n_test + test)."""

    runs: int
    mem: np.ndarray
    mem_se: np.ndarray
    pair_keys: np.ndarray


def half_estimates(stats: SweepStats, config: EstimateConfig,
                   groups: frozenset[int]) -> tuple[PartEstimate, PartEstimate]:
    """The estimates of the runs in `groups` and of the other runs."""
    return (part_estimate(stats, config, groups),
            part_estimate(stats, config, frozenset(range(RELIABILITY_GROUPS)) - groups))


def part_estimate(stats: SweepStats, config: EstimateConfig, groups: frozenset[int],
                  with_pairs: bool = True) -> PartEstimate:
    """The estimate of the runs in the seed groups `groups` (without pairs: none)."""
    rows = np.isin(np.asarray(stats.seeds, dtype=np.int64) % RELIABILITY_GROUPS, sorted(groups))
    sums = stats.group_sums[np.isin(np.arange(RELIABILITY_GROUPS), sorted(groups))].sum(axis=0, dtype=np.float64)
    runs = int(rows.sum())
    n_in, hard_in = sums[GROUP_N_IN], sums[GROUP_HARD_IN]
    n_out, hard_out = runs - n_in, sums[GROUP_HARD_ALL] - hard_in
    mem = mean_difference(hard_in, n_in, hard_out, n_out)
    pair_keys = pair_keys_of_runs(stats, config, rows, mem, n_in) if with_pairs else np.zeros(0, dtype=np.int64)
    return PartEstimate(runs, mem, agresti_caffo_se(hard_in, n_in, hard_out, n_out), pair_keys)


def agreement(a: PartEstimate, b: PartEstimate, theta_mem: float) -> dict[str, float | None]:
    """The METRICS of two estimates of the same examples."""
    both = ~np.isnan(a.mem) & ~np.isnan(b.mem)
    non_trivial = both & ((a.mem >= NON_TRIVIAL) | (b.mem >= NON_TRIVIAL))
    within = np.abs(a.mem - b.mem) <= Z_95 * np.sqrt(a.mem_se**2 + b.mem_se**2)
    return {
        "spearman_non_trivial": spearman(a.mem[non_trivial], b.mem[non_trivial]),
        "jaccard_memorized": jaccard_index(np.flatnonzero(both & (a.mem >= theta_mem)),
                                      np.flatnonzero(both & (b.mem >= theta_mem))),
        "jaccard_pairs": jaccard_index(a.pair_keys, b.pair_keys),
        "pearson": pearson(a.mem[both], b.mem[both]),
        "se_calibration": _share(within, both),
        "se_calibration_non_trivial": _share(within, non_trivial),
    }


def _share(hits: np.ndarray, where: np.ndarray) -> float | None:
    return float(np.mean(hits[where])) if where.any() else None


def split_half(stats: SweepStats, config: EstimateConfig) -> dict[str, Any]:
    """The summary's `reliability`: each halving's agreement, their means, and the projections."""
    halvings = []
    for groups in HALVINGS:
        a, b = half_estimates(stats, config, groups)
        if min(a.runs, b.runs) >= MIN_HALF_RUNS:
            halvings.append({"groups_a": sorted(groups), "runs": [a.runs, b.runs],
                             **agreement(a, b, config.theta_mem)})
    means = {metric: _mean([h[metric] for h in halvings]) for metric in METRICS}
    projection = None
    if halvings and means["pearson"] is not None:
        half_runs = float(np.mean([sum(h["runs"]) / 2 for h in halvings]))
        projection = {"pearson": _pearson_projection(means["pearson"], half_runs, stats.n_runs),
                      **_empirical_projection(stats, config, means, half_runs)}
    return {"halvings": halvings, **means, "projection": projection, "non_trivial": NON_TRIVIAL, "runs": stats.n_runs,
            "target": PROJECTION_TARGET,
            "method": "halves by seed mod 8 (even/odd seeds, and by the seed's second and third bit); Pearson "
                      "projected by Spearman-Brown, Spearman and Jaccard by a logit fit over K/8, K/4, K/2"}


def _pearson_projection(r: float, half_runs: float, runs: int) -> dict[str, float | int | None]:
    """Spearman-Brown from the halves' Pearson r: the Pearson with an independent sweep of this size, the
    agreement with the K -> infinity answer, and the runs for PROJECTION_TARGET."""
    rho = spearman_brown(r, runs / half_runs) if r > 0 else None
    needed = runs_for(r, half_runs, PROJECTION_TARGET)
    return {"with_independent_sweep": finite_or_none(rho) if rho is not None else None,
            "with_infinite_k": finite_or_none(np.sqrt(rho)) if rho is not None else None,
            "runs_for_target": int(np.ceil(needed)) if needed is not None else None}


def _empirical_projection(stats: SweepStats, config: EstimateConfig, halves: dict[str, float | None],
                          half_runs: float) -> dict[str, dict[str, Any]]:
    """For EMPIRICAL_METRICS: the agreement of disjoint parts of K/8, K/4 runs (NESTED_PARTS) and the halves,
    the logit fit through them (projection.py), its value at this K and the runs for PROJECTION_TARGET."""
    measured: dict[str, dict[float, float | None]] = {metric: {} for metric in EMPIRICAL_METRICS}
    for pairs in NESTED_PARTS:
        results, runs = [], []
        for first, second in pairs:
            a, b = (part_estimate(stats, config, groups, with_pairs=False) for groups in (first, second))
            if min(a.runs, b.runs) >= MIN_HALF_RUNS:
                results.append(agreement(a, b, config.theta_mem))
                runs.append((a.runs + b.runs) / 2)
        if results:
            for metric in EMPIRICAL_METRICS:
                measured[metric][float(np.mean(runs))] = _mean([result[metric] for result in results])
    out = {}
    for metric in EMPIRICAL_METRICS:
        measured[metric][half_runs] = halves[metric]
        fit = logit_fit(measured[metric])
        out[metric] = {"measured": [[runs, value] for runs, value in sorted(measured[metric].items())],
                       "slope": fit[0] if fit else None,
                       "with_independent_sweep": _fitted_or_none(fit, stats.n_runs),
                       "runs_for_target": int(np.ceil(fitted_runs_for(fit, PROJECTION_TARGET))) if fit else None}
    return out


def _fitted_or_none(fit: tuple[float, float] | None, runs: int) -> float | None:
    return finite_or_none(fitted_agreement(fit, runs)) if fit else None


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def format_reliability(reliability: dict[str, Any]) -> str:
    """The printed summary's line (a reason in place of the numbers when no halving had two usable halves)."""
    if not reliability["halvings"]:
        runs = reliability.get("runs")
        return (f"split-half reliability: none ({'' if runs is None else f'{runs} runs: '}no halving of the seeds "
                f"by their last three bits gives both halves {MIN_HALF_RUNS} runs or more: at least "
                f"{2 * MIN_HALF_RUNS} runs are needed, e.g. seeds 0..{2 * MIN_HALF_RUNS - 1})")
    shown = {metric: _shown(reliability[metric]) for metric in METRICS}
    line = (f"split-half reliability ({len(reliability['halvings'])} halvings): Spearman (mem >= "
            f"{reliability['non_trivial']}) {shown['spearman_non_trivial']}, Jaccard memorized "
            f"{shown['jaccard_memorized']}, Jaccard pairs {shown['jaccard_pairs']}, Pearson {shown['pearson']}; "
            f"SE calibration {shown['se_calibration']}, {shown['se_calibration_non_trivial']} on those examples "
            "(0.95 if honest)")
    projection = reliability["projection"]
    if projection:
        runs = reliability.get("runs") or sum(reliability["halvings"][0]["runs"])
        parts = [f"{label} {_projected(projection[key], reliability['target'], runs, why)}"
                 for key, label, why in PROJECTED]
        line += f"\nprojected agreement with an independent sweep of this size: {', '.join(parts)}"
    return line


# The projected metrics as printed, and why each can have no projection (projection.py).
PROJECTED = (("pearson", "Pearson", "the halves do not correlate"),
             ("spearman_non_trivial", "Spearman", "its agreements at K/8, K/4, K/2 do not grow within (0, 1)"),
             ("jaccard_memorized", "Jaccard memorized", "its agreements at K/8, K/4, K/2 do not grow within (0, 1)"))


def _projected(projection: dict[str, Any], target: float, runs: int, why_none: str) -> str:
    """One projection as printed: its agreement and the runs for `target`, or why there is no such figure."""
    agreement, needed = projection["with_independent_sweep"], projection["runs_for_target"]
    if needed is None:
        return f"{_shown(agreement)} (not projected: {why_none})" if agreement is not None \
            else f"not projected ({why_none})"
    if needed > PROJECTION_REACH * runs:
        return (f"{_shown(agreement)} ({target} beyond {PROJECTION_REACH * runs} runs, {PROJECTION_REACH}x this "
                "sweep: further than the projection is validated)")
    return f"{_shown(agreement)} (about {needed} runs for {target})"


def _shown(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.3f}"
