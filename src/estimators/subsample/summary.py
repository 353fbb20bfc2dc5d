"""The subsampled estimator's summary (summary.json, the printed lines): counts, accuracies, the runs needed
for a target SE, pairs against chance, the split-half reliability (reliability.py), the record scores'
Spearman with mem."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from src.contracts.estimates import MEM_FRACTION_THRESHOLDS, RUN_HEALTH, TRAIN_IN_ACC_WARNING, health_lines
from src.contracts.identity import experiment_identity, record_experiment_hash
from src.estimators.subsample.health import check_runs
from src.estimators.subsample.memorization import SubsampleEstimates
from src.estimators.subsample.reliability import format_reliability, split_half
from src.estimators.subsample.stats import Problem, SweepStats
from src.util.stats import finite_or_none, spearman

ESTIMATOR = "subsample"
SE_TARGETS = (0.05, 0.03, 0.02)
NAN_RULE = ("mem, infl and their SEs are NaN (empty in CSV, null in JSON) when an example was never in "
            "or never out of a subset; NaN never passes a threshold, so such examples form no pairs and "
            "are no top-k influencers.")


def experiment_of(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The canonical experiment identity of the records' config (None for records that store none)."""
    config = meta.get("config")
    return experiment_identity(config, str(meta.get("data_fingerprint"))) if isinstance(config, Mapping) else None


def runs_needed(ratio: float, n_runs: int) -> dict[str, Any]:
    """Runs for a target SE of mem at the worst case p = 1/2: plug-in K = 0.25 c / se^2 and the paper's
    bound sd ~ sqrt(c / K), with c = 1/r + 1/(1-r) (0.035 at K=4000, 0.05 at K=2000 for r=0.7)."""
    c = 1 / ratio + 1 / (1 - ratio) if ratio < 1 else float("inf")
    return {
        "worst_case_se_now": {"plug_in": finite_or_none(np.sqrt(0.25 * c / n_runs)),
                              "paper_bound": finite_or_none(np.sqrt(c / n_runs))},
        "targets": [{"se": se, "plug_in_runs": _count(0.25 * c / se**2),
                     "paper_bound_runs": _count(c / se**2)} for se in SE_TARGETS],
    }


def _count(value: float) -> int | None:
    """Runs rounded up; rounding to 6 decimals first keeps float noise (624.99999999) from adding one."""
    return int(np.ceil(round(value, 6))) if np.isfinite(value) else None


def sweep_summary(stats: SweepStats, problems: list[Problem], estimator: str, mem: np.ndarray,
                  theta_mem: float, health: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary keys of any estimate made from a sweep's records: the sweep, its runs and accuracies, the
    runs' health (health.py; checked on `stats` when not given), and how many examples `mem` estimates and calls
    memorized."""
    meta = stats.meta
    has_estimate = ~np.isnan(mem)
    train_in_acc = float(np.mean(stats.train_in_acc))
    warning = None
    if train_in_acc < TRAIN_IN_ACC_WARNING:
        warning = (f"mean in-subset train accuracy {train_in_acc:.4f} < {TRAIN_IN_ACC_WARNING}: the models "
                   "do not fit their subsets, so memorization is underestimated; train longer")
    return {
        "runs_used": stats.n_runs, "problems_excluded": len(problems),
        "identical_duplicates_skipped": len(stats.identical_duplicates), "estimator": estimator,
        **{key: meta.get(key) for key in ("dataset", "model", "experiment_name", "data_fingerprint", "num_classes",
                                          "ratio", "salt")},
        "experiment_hash": record_experiment_hash(meta), "experiment": experiment_of(meta),
        "n_train": stats.n_train, "n_test": stats.n_test, "n_flipped": int(stats.flipped_idx.size),
        "mean_test_acc": finite_or_none(np.mean(stats.test_acc)), "mean_train_in_acc": finite_or_none(train_in_acc),
        "train_in_acc_warning": warning, RUN_HEALTH: check_runs(stats) if health is None else health,
        "examples_with_estimate": int(has_estimate.sum()), "examples_without_estimate": int((~has_estimate).sum()),
        **{f"frac_mem_ge_{theta}": finite_or_none(np.mean(mem[has_estimate] >= theta)) if has_estimate.any()
           else None for theta in MEM_FRACTION_THRESHOLDS},
        "memorized": int(np.sum(mem >= theta_mem)),
    }


def summarize(stats: SweepStats, est: SubsampleEstimates, problems: list[Problem],
              health: dict[str, Any] | None = None) -> dict[str, Any]:
    meta, config = stats.meta, est.config
    has_estimate = ~np.isnan(est.mem)
    influencers = est.pairs.influencers_per_test(stats.n_test)
    return {
        **sweep_summary(stats, problems, ESTIMATOR, est.mem, config.theta_mem, health),
        "pairs": int(est.pairs.infl.size),
        "pair_train_examples": int(np.unique(est.pairs.train_idx).size),
        "pair_test_examples": int(np.sum(influencers > 0)),
        "test_with_one_influencer": int(np.sum(influencers == 1)),
        "null_pair_counts": est.null_pair_counts,
        "expected_false_pairs": finite_or_none(np.mean(est.null_pair_counts)) if est.null_pair_counts else None,
        "runs_needed": runs_needed(float(meta["ratio"]), stats.n_runs),
        "reliability": split_half(stats, config),
        "epoch_list": stats.epoch_list.tolist(),
        "mean_mem_by_epoch": [finite_or_none(np.mean(row[has_estimate])) if has_estimate.any() else None
                              for row in est.mem_epoch],
        "proxy_spearman_with_mem": {name: spearman(values, est.mem) for name, values in est.proxies.items()},
        "thresholds": {"theta_mem": config.theta_mem, "theta_infl": config.theta_infl, "top_k": config.top_k,
                       "null_perms": config.null_perms, "seed": config.seed},
        "influence_npy": est.has_dense,
        "estimators": {"mem": "hard: 0/1 correctness of the trained label; SE Agresti-Caffo",
                       "mem_soft": "probability of the trained label; plug-in SE with sample variances",
                       "pairs": "infl >= theta_infl and mem >= theta_mem and same trained class",
                       "mem_epoch": "mem from the correctness at the end of each epoch of epoch_list",
                       "proxies": "mean over runs with the example in the subset; Spearman with mem over "
                                  "examples where both are defined",
                       "nan": NAN_RULE},
    }


def format_summary(summary: dict[str, Any]) -> str:
    se_now = summary["runs_needed"]["worst_case_se_now"]
    thresholds = summary["thresholds"]
    fractions = ", ".join(f"{_percent(summary[f'frac_mem_ge_{t}'])} >= {t}" for t in MEM_FRACTION_THRESHOLDS)
    lines = [
        f"{summary['experiment_name']} ({summary['experiment_hash']}): {summary['dataset']}, "
        f"{summary['model']}, {summary['runs_used']} runs ({summary['problems_excluded']} skipped"
        f"{_duplicates(summary)}), "
        f"{summary['n_train']} train x {summary['n_test']} test, ratio {summary['ratio']}",
        f"accuracy: test {_fmt(summary['mean_test_acc'])}, "
        f"in-subset train {_fmt(summary['mean_train_in_acc'])}",
        f"memorization: {summary['examples_with_estimate']} examples with an estimate "
        f"({summary['examples_without_estimate']} without), {fractions}; worst-case SE "
        f"{_fmt(se_now['plug_in'])} (plug-in), {_fmt(se_now['paper_bound'])} (paper bound)",
        f"influence: {summary['pairs']} pairs (infl >= {thresholds['theta_infl']}, mem >= "
        f"{thresholds['theta_mem']}, same class) over {summary['pair_test_examples']} test examples "
        f"({summary['test_with_one_influencer']} with one influencer); expected by chance "
        f"{_fmt(summary['expected_false_pairs'], '.1f')} ({thresholds['null_perms']} shuffles)",
    ]
    reliability = format_reliability(summary["reliability"]) if summary.get("reliability") else None
    if reliability:
        lines.append(reliability)
    if summary["epoch_list"]:
        by_epoch = ", ".join(f"{epoch}: {_fmt(mem)}" for epoch, mem in zip(summary["epoch_list"],
                                                                           summary["mean_mem_by_epoch"], strict=True))
        lines.append(f"mean mem by epoch: {by_epoch}")
    if summary["proxy_spearman_with_mem"]:
        rhos = ", ".join(f"{name} {_fmt(rho, '.3f')}" for name, rho in summary["proxy_spearman_with_mem"].items())
        lines.append(f"proxies, Spearman with mem: {rhos}")
    if summary["train_in_acc_warning"]:
        lines.append(f"warning: {summary['train_in_acc_warning']}")
    return "\n".join(lines + health_lines(summary))


def _duplicates(summary: dict[str, Any]) -> str:
    count = summary.get("identical_duplicates_skipped") or 0
    return f", {count} identical cop{'y' if count == 1 else 'ies'} used once" if count else ""


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
