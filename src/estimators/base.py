"""The estimator interface, and the record scores an estimator accumulates inside training.

An `Estimator` turns a sweep directory into estimates (the reduce side) written through the estimates
contract (src/contracts/estimates.py). Its map side is either the subset job of src/training/job.py (`trains =
"subsets"`: one record per seed, src/contracts/records.py) or a job of its own (`trains = "own"`, run by
`run_job`). `check_config` refuses, before anything launches, what its job would refuse.

A `RecordScore` is a per-example array that every training job accumulates for each of its P members, without
an extra pass, and stores in the record as the optional, versioned array `proxy_train_<name>` (its validation
rule is the contract's SCORE_RULES). `record.scores` in conf/config.yaml lists those a job records. Its hooks
get torch tensors on the training device: `on_step` a `TrainStep` (one training batch of every member, train
mode, augmented, before the update); `on_epoch_end` an `EpochEnd` (each member's subset and its differentiable
per-example loss, eval mode, after the epoch's last update); `finish` the final evaluation of member k on the
training examples (src/training/module.py `Evaluation`).
This module imports neither torch nor Lightning: reducing records needs neither.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from src.contracts.estimates import Estimates

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ReduceOptions:
    """How `src.estimate` asked for the reduce."""

    out_dir: Path | None = None  # where the estimates go (default <sweep dir>/<estimator out_name>)
    strict: bool = False  # any damaged or foreign record is fatal
    use_cache: bool = True
    settings: Any = None  # the estimator's own options (the subsampled estimator's EstimateConfig)
    load_progress: Progress | None = None
    reduce_progress: Progress | None = None
    notify: Callable[[str], None] | None = None
    exclude_unhealthy: bool = False  # leave out the runs that did not train (src/estimators/subsample/health.py)


class Estimator(ABC):
    """One way of estimating memorization and influence (module docstring)."""

    name: ClassVar[str]
    description: ClassVar[str]
    trains: ClassVar[str]  # "subsets": the subset job writes one record per seed; "own": `run_job`
    out_name: ClassVar[str] = "estimates"  # the estimates directory under the sweep

    def check_config(self, cfg: Any) -> None:  # noqa: B027 (optional hook)
        """Refuse, with a one-line ConfigError, a config its job would refuse; before anything launches."""

    def run_job(self, cfg: Any) -> list[Path]:
        """Its own training job (estimators with `trains = "own"`)."""
        raise NotImplementedError(f"estimator {self.name} trains through the subset job")

    def out_dir(self, sweep_dir: Path) -> Path:
        """Where its estimates of a sweep go by default."""
        return Path(sweep_dir) / self.out_name

    @abstractmethod
    def reduce(self, sweep_dir: Path, options: ReduceOptions) -> Estimates:
        """The estimates of a sweep, ready to be written by src/contracts/estimates.py."""

    def format_summary(self, summary: dict[str, Any]) -> str:
        """What the command line prints of the summary."""
        from src.contracts.estimates import health_lines

        theta_mem = summary.get("thresholds", {}).get("theta_mem")
        pairs = summary.get("pairs")
        return "\n".join([f"{summary['experiment_name']} ({summary['experiment_hash']}): {summary['dataset']}, "
                          f"{summary['model']}, estimator {self.name}, {summary['runs_used']} runs; "
                          f"{summary.get('memorized')} memorized (mem >= {theta_mem}), "
                          + (f"{pairs} pairs" if pairs is not None
                             else "no influence pairs (this estimator estimates none)"),
                          *health_lines(summary)])


class TrainStep(NamedTuple):
    """One training batch of P members, torch tensors on the training device, detached."""

    idx: Any  # int64 (P, B): global indices of the training examples
    logits: Any  # (P, B, classes)
    labels: Any  # int64 (P, B): the trained labels
    losses: Any  # (P, B): per-example cross-entropy
    correct: Any  # bool (P, B): argmax of the logits == label


class EpochEnd(NamedTuple):
    """The end of a training epoch, for a score that needs the model itself (eval mode, no augmentation)."""

    epoch: int  # 0-based
    seeds: tuple[int, ...]  # member k's seed
    subset_idx: Any  # int64 (P, m): member k's training examples, on the training device
    inputs: Callable[[Any], Any]  # global indices (P, B) -> each member's normalised inputs (P, B, ...)
    losses: Callable[[Any, Any], Any]  # (inputs (P, B, ...), indices (P, B)) -> per-example loss (P, B), differentiable
    batch_size: int  # the evaluation batch size: how many examples a score should take at once


class RecordScore(ABC):
    """A per-example array accumulated inside training and stored in each record (module docstring)."""

    name: ClassVar[str]

    def start(self, pack: int, n_train: int, device: Any) -> None:  # noqa: B027 (optional hook)
        """Allocate the accumulators of P members (on the training device), before the first step."""

    def on_step(self, step: TrainStep) -> None:  # noqa: B027 (optional hook)
        """One training batch of every member."""

    def on_epoch_end(self, epoch: EpochEnd) -> None:  # noqa: B027 (optional hook)
        """The end of every training epoch; the model is in eval mode and must be left unchanged."""

    def synchronize(self, all_reduce: Callable[[Any], None]) -> None:  # noqa: B027
        """Under DDP, after training: sum what each rank accumulated over its share of the batches."""

    @abstractmethod
    def finish(self, k: int, train_eval: Any) -> np.ndarray:
        """Member k's float32 (n_train,) values; `train_eval` is the final evaluation on the training set."""
