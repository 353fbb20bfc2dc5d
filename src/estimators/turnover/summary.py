"""The summary of a turn-over run: src.estimate's summary keys that readers need, plus the turn-over details."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from omegaconf import DictConfig

from src.config.checks import config_hash, config_identity
from src.contracts.estimates import MEM_FRACTION_THRESHOLDS, TRAIN_IN_ACC_WARNING, Thresholds
from src.data.dataset import Dataset
from src.estimators.turnover.network import KEEP

ESTIMATOR = "turnover"


def clock() -> np.ndarray:
    """(wall, CPU) seconds now; CPU is this process's time over all its threads, less sensitive than wall time
    to other processes on a shared machine."""
    return np.array([time.perf_counter(), time.process_time()])

def _fraction(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def turnover_summary(cfg: DictConfig, dataset: Dataset, arrays: dict[str, np.ndarray],
                     test: dict[str, np.ndarray], widths: list[int], n_influence: int,
                     times: dict[str, dict[str, float]], limits: Thresholds) -> dict[str, Any]:
    """summary.json: the keys of src.estimate's summary that src.compare reads, plus the turnover details."""
    est, mem = cfg.estimator, arrays["mem"]
    own_acc = float(arrays["train_in_acc"][0])
    warning = None
    if own_acc < TRAIN_IN_ACC_WARNING:
        warning = (f"own-half train accuracy {own_acc:.4f} < {TRAIN_IN_ACC_WARNING}: the halves do not fit their "
                   "examples, so memorization is underestimated; train longer or lower optim.lr")
    influencers = np.bincount(arrays["pair_test_idx"], minlength=len(dataset.y_test))
    forward_rows = 2 * len(mem) + 2 * n_influence * len(dataset.y_test)
    return {
        "estimator": ESTIMATOR, "runs_used": 1, "n_runs": 1, "problems_excluded": 0,
        "identical_duplicates_skipped": 0, "dataset": dataset.name, "model": str(cfg.model.name),
        "experiment_name": str(cfg.name), "experiment_hash": config_hash(cfg, dataset.fingerprint),
        "experiment": config_identity(cfg, dataset.fingerprint),
        "data_fingerprint": dataset.fingerprint, "num_classes": dataset.num_classes, "ratio": 1.0, "salt": 0,
        "seed": int(cfg.seed), "n_train": len(mem), "n_test": len(dataset.y_test),
        "n_flipped": int(dataset.flipped_idx.size),
        "mean_test_acc": float(np.mean(arrays["test_acc"])), "mean_train_in_acc": own_acc,
        "train_in_acc_warning": warning, "examples_with_estimate": len(mem), "examples_without_estimate": 0,
        **{f"frac_mem_ge_{theta}": float(np.mean(mem >= theta)) for theta in MEM_FRACTION_THRESHOLDS},
        "memorized": int(np.sum(mem >= limits.theta_mem)), "pairs": int(arrays["pair_infl"].size),
        "pair_train_examples": int(np.unique(arrays["pair_train_idx"]).size),
        "pair_test_examples": int(np.sum(influencers > 0)), "test_with_one_influencer": int(np.sum(influencers == 1)),
        "null_pair_counts": [], "expected_false_pairs": None,
        "thresholds": {"theta_mem": float(limits.theta_mem), "theta_infl": float(limits.theta_infl),
                       "top_k": int(limits.top_k), "null_perms": 0, "seed": int(cfg.seed)},
        "influence_npy": False,
        "estimators": {
            "mem": "correct(x_i; own half m_i) - correct(x_i; complement ~m_i), one run; SE NaN (no replicate)",
            "mem_soft": "the same with the probability of the trained label",
            "pairs": "infl >= theta_infl and mem >= theta_mem and same trained class; infl = correct(x'_j; m_i) "
                     "- correct(x'_j; ~m_i)",
            "topk": "ranked by infl_soft (probability difference), ties to the lower training index",
            "nan": "SEs are NaN: one run has no replicate; run a second seed for a noise floor"},
        "turnover": {
            "masks": "splitmix64 of (seed, domain, index, mask point, unit); exactly width // 2 units per half "
                     "(src/estimators/turnover/network.py)", "scale": 1 / KEEP, "mask_widths": widths,
            "influence": str(est.influence), "influence_train_examples": n_influence,
            "test_acc_half": float(test["correct_own"].mean()),
            "test_acc_complement": float(test["correct_flip"].mean()),
            "train_acc_own_half": float(arrays["acc_in"].mean()),
            "train_acc_complement": float(arrays["acc_out"].mean()),
            "train_acc_own_half_flipped": _fraction(arrays["acc_in"][dataset.flipped_idx]),
            "train_acc_complement_flipped": _fraction(arrays["acc_out"][dataset.flipped_idx]),
            "masked_forward_rows": forward_rows, "time_s": times,
            "leaks": "indirect (other examples' halves overlap both), classifier bias, BatchNorm batch and "
                     "running statistics, weight decay acts on all weights "
                     "(src/estimators/turnover/__init__.py docstring)"},
    }
