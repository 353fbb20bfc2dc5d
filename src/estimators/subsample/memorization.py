"""Memorization from the sums: mem (hard, 0/1 correctness of the trained label) and mem_soft (its probability),
their standard errors, the in/out accuracies, per-epoch mem and the record scores' in-subset means.

- mem(i) = mean{C[k,i] : i in} - mean{C[k,i] : i out}; mem_soft the same with P.
- mem_se: Agresti-Caffo, one pseudo success and one pseudo failure added to each side, p~ = (s+1)/(n+2),
  se = sqrt(p~in(1-p~in)/(n_in+2) + p~out(1-p~out)/(n_out+2)); never zero, so an all-correct side (flipped
  labels, small K) still gets an uncertainty. The estimates themselves are the plain differences of means.
- mem_soft_se: plug-in sqrt(var_in/n_in + var_out/n_out) with sample variances (ddof 1) from the per-example
  sums and sums of squares; NaN when a side has fewer than 2 runs.
- An example with n_in = 0 or n_out = 0 has no estimate: NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from src.contracts.estimates import PendingFile, Thresholds
from src.errors import ConfigError
from src.estimators.subsample.stats import IN, SweepStats


def masked_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """total / count, NaN where count == 0; keeps float32 when both are float32."""
    total, count = np.asarray(total), np.asarray(count)
    shape = np.broadcast_shapes(total.shape, count.shape)
    out = np.full(shape, np.nan, dtype=np.result_type(total, count, 1.0))
    return np.divide(total, count, out=out, where=count > 0)


def mean_difference(s_in: np.ndarray, n_in: np.ndarray, s_out: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """s_in/n_in - s_out/n_out; NaN where a side has no run."""
    diff = masked_mean(s_in, n_in)
    diff -= masked_mean(s_out, n_out)
    return diff


def agresti_caffo_se(s_in: np.ndarray, n_in: np.ndarray, s_out: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """SE of a difference of two proportions with one pseudo success and failure per side; NaN where a side
    has no run."""
    s_in, n_in, s_out, n_out = (np.asarray(a, dtype=np.float64) for a in (s_in, n_in, s_out, n_out))
    p_in, p_out = (s_in + 1) / (n_in + 2), (s_out + 1) / (n_out + 2)
    se = np.sqrt(p_in * (1 - p_in) / (n_in + 2) + p_out * (1 - p_out) / (n_out + 2))
    return np.where((n_in > 0) & (n_out > 0), se, np.nan)


def plug_in_se(sum_in: np.ndarray, sq_in: np.ndarray, n_in: np.ndarray,
                sum_out: np.ndarray, sq_out: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """sqrt(var_in/n_in + var_out/n_out), sample variances from sums and sums of squares; NaN below 2 runs."""
    def var_over_n(total: np.ndarray, squares: np.ndarray, n: np.ndarray) -> np.ndarray:
        var = np.maximum(masked_mean(squares - total * masked_mean(total, n), n - 1), 0.0)
        return masked_mean(var, n)

    return np.sqrt(var_over_n(sum_in, sq_in, n_in) + var_over_n(sum_out, sq_out, n_out))


@dataclass(frozen=True)
class EstimateConfig:
    """The subsampled estimator's settings (`python -m src.estimate` options); thresholds default to the paper's."""

    theta_mem: float = Thresholds.theta_mem
    theta_infl: float = Thresholds.theta_infl
    top_k: int = Thresholds.top_k
    null_perms: int = 2
    block_mb: float = 256.0
    dense_cap_mb: float = 512.0
    seed: int = 0

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.theta_mem, self.theta_infl, self.top_k)

    def validate(self) -> None:
        self.thresholds.validate()
        if self.null_perms < 0:
            raise ConfigError(f"--null-perms {self.null_perms} must be >= 0")
        if self.block_mb <= 0 or self.dense_cap_mb < 0:
            raise ConfigError(f"--block-mb {self.block_mb} must be > 0 and --dense-cap-mb "
                              f"{self.dense_cap_mb} >= 0 (0 turns influence.npy off)")


@dataclass
class Pairs:
    """High-influence pairs, sorted by infl descending (ties: test index, then train index)."""

    train_idx: np.ndarray
    test_idx: np.ndarray
    infl: np.ndarray
    infl_se: np.ndarray

    def influencers_per_test(self, n_test: int) -> np.ndarray:
        return np.bincount(self.test_idx, minlength=n_test)


@dataclass
class SubsampleEstimates:
    """Everything the subsampled estimator computes for a sweep (the notebook API's `estimate` returns it)."""

    config: EstimateConfig
    mem: np.ndarray
    mem_se: np.ndarray
    mem_soft: np.ndarray
    mem_soft_se: np.ndarray
    n_in: np.ndarray  # int64
    n_out: np.ndarray
    acc_in: np.ndarray
    acc_out: np.ndarray
    mem_epoch: np.ndarray  # (E, n): mem from the correctness at the end of each epoch of stats.epoch_list
    proxies: dict[str, np.ndarray]  # name -> (n,) mean over runs with the example in; NaN where none
    topk_idx: np.ndarray  # int64 (n_test, top_k); -1 where fewer train examples have an estimate
    topk_infl: np.ndarray  # float32 (n_test, top_k), descending; NaN where topk_idx is -1
    pairs: Pairs
    null_pair_counts: list[int]
    dense: PendingFile | None = None  # the influence matrix in a temp file; writing the estimates moves it
    has_dense: bool = False  # the influence matrix was within the cap and computed into `dense`

    def discard_dense(self) -> None:
        if self.dense is not None:
            self.dense.discard()
            self.dense = None


def memorization(stats: SweepStats) -> dict[str, Any]:
    n_in = stats.n_in
    n_out = stats.n_runs - n_in
    hard_out = stats.hard_all - stats.hard_in
    soft_out, soft_out_sq = stats.soft_all - stats.soft_in, stats.soft_all_sq - stats.soft_in_sq
    return {
        "mem": mean_difference(stats.hard_in, n_in, hard_out, n_out),
        "mem_se": agresti_caffo_se(stats.hard_in, n_in, hard_out, n_out),
        "mem_soft": mean_difference(stats.soft_in, n_in, soft_out, n_out),
        "mem_soft_se": plug_in_se(stats.soft_in, stats.soft_in_sq, n_in, soft_out, soft_out_sq, n_out),
        "n_in": n_in.astype(np.int64), "n_out": n_out.astype(np.int64),
        "acc_in": masked_mean(stats.hard_in, n_in), "acc_out": masked_mean(hard_out, n_out),
        "mem_epoch": mean_difference(stats.epoch_hard_in, n_in, stats.epoch_hard_all - stats.epoch_hard_in, n_out),
        "proxies": {name: masked_mean(sums[IN], n_in) for name, sums in stats.proxy_sums.items()},
    }
