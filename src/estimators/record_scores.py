"""Estimators that read one record score (src/estimators/base.py `RecordScore`): the score of an example is its
mean over the runs whose subset held it (from a run at `subset.ratio=1.0`: that run's value), oriented so that
larger means more memorized. They need no influence pass: their estimates carry `mem`, the raw score as
`proxy_<name>`, and the sweep's per-run accuracies; no pairs.

Registered: learn_speed (1 - learning speed), loss (final loss), margin (minus the final margin), and
cumulative_loss (src/estimators/csl.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from src.contracts.estimates import Estimates, Thresholds
from src.errors import ConfigError
from src.estimators.base import Estimator, ReduceOptions
from src.estimators.subsample.health import load_checked
from src.estimators.subsample.load import load_notes
from src.estimators.subsample.memorization import masked_mean
from src.estimators.subsample.stats import IN, SweepStats
from src.estimators.subsample.summary import sweep_summary


class RecordScoreEstimator(Estimator):
    """mem = orientation(mean over in-subset runs of record score `score`)."""

    trains = "subsets"
    score: ClassVar[str]
    orientation: ClassVar[str]  # how mem is made from the score, for the summary (e.g. "1 - learn_speed")

    def out_dir(self, sweep_dir: Path) -> Path:
        return Path(sweep_dir) / f"estimates_{self.name}"

    def oriented(self, values: np.ndarray) -> np.ndarray:
        return values

    def check(self, stats: SweepStats, sweep_dir: Path) -> None:
        if self.score not in stats.proxy_sums:
            raise ConfigError(f"the records under {sweep_dir} hold no record score {self.score}; train the sweep "
                              f"with record.scores including {self.score}")

    def raw(self, stats: SweepStats) -> np.ndarray:
        """The score's mean over the runs whose subset held each example."""
        return masked_mean(stats.proxy_sums[self.score][IN], stats.n_in)

    def reduce(self, sweep_dir: Path, options: ReduceOptions) -> Estimates:
        thresholds = Thresholds()
        stats, problems, health = load_checked(sweep_dir, options, lambda stats: self.oriented(self.raw(stats)),
                                               thresholds.theta_mem, check=lambda stats: self.check(stats, sweep_dir))
        for line in load_notes(stats, problems):
            (options.notify or print)(line)
        raw = self.raw(stats)
        mem = self.oriented(raw)
        summary = {**sweep_summary(stats, problems, self.name, mem, thresholds.theta_mem, health),
                   "thresholds": {"theta_mem": thresholds.theta_mem},
                   "score": {"record_score": self.score, "mem": self.orientation,
                             "definition": "mean over the runs whose subset held the example; NaN where none did"}}
        return Estimates(summary, score_arrays(stats, mem, {f"proxy_{self.score}": raw}))


def score_arrays(stats: SweepStats, mem: np.ndarray, extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The estimates contract's arrays of a score-only estimate."""
    flipped = np.zeros(stats.n_train, dtype=bool)
    flipped[stats.flipped_idx] = True
    return {"mem": mem, "train_label": stats.train_label, "orig_label": stats.orig_label, "flipped": flipped,
            "test_label": stats.test_label, "seeds": np.asarray(stats.seeds, dtype=np.int64),
            "test_acc": np.asarray(stats.test_acc), "train_in_acc": np.asarray(stats.train_in_acc), **extra}


class LearnSpeedEstimator(RecordScoreEstimator):
    name = "learn_speed"
    description = "1 - learning speed (Jiang et al. 2021): slow-to-learn examples score high"
    score = "learn_speed"
    orientation = "1 - learn_speed"

    def oriented(self, values: np.ndarray) -> np.ndarray:
        return 1.0 - values


class FinalLossEstimator(RecordScoreEstimator):
    name = "loss"
    description = "the final training loss of the trained label"
    score = "loss"
    orientation = "loss"


class MarginEstimator(RecordScoreEstimator):
    name = "margin"
    description = "minus the final margin of the trained label"
    score = "margin"
    orientation = "-margin"

    def oriented(self, values: np.ndarray) -> np.ndarray:
        return -values
