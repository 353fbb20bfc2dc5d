"""Cumulative sample loss (Ravikumar et al., ICML 2025, "Towards Memorization Estimation: Fast, Formal and
Free"): an example's training loss summed over the steps in which it was in the mini-batch (train mode,
augmented, before the update), scatter-added on the training device beside the learning-speed counters: no extra
pass. NaN outside the subset (the example was never trained on).

Records hold it when `record.scores` names it (`'record.scores=[learn_speed,loss,margin,cumulative_loss]'`);
`python -m src.estimate <sweep> --estimator cumulative_loss` then gives its mean over the runs whose subset held
the example (one run at `subset.ratio=1.0`: that run's sum).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from src.estimators.base import RecordScore, TrainStep
from src.estimators.record_scores import RecordScoreEstimator

NAME = "cumulative_loss"


class CumulativeLoss(RecordScore):
    name = NAME

    def start(self, pack: int, n_train: int, device: Any) -> None:
        import torch

        # float64: a sum over thousands of steps keeps its small terms
        self.total = torch.zeros(pack, n_train, dtype=torch.float64, device=device)
        self.seen = torch.zeros(pack, n_train, dtype=torch.int32, device=device)

    def on_step(self, step: TrainStep) -> None:
        import torch

        self.total.scatter_add_(1, step.idx, step.losses.to(torch.float64))
        self.seen.scatter_add_(1, step.idx, torch.ones_like(step.idx, dtype=torch.int32))

    def synchronize(self, all_reduce: Callable[[Any], None]) -> None:
        for counts in (self.total, self.seen):
            all_reduce(counts)

    def finish(self, k: int, train_eval: Any) -> np.ndarray:
        total, seen = self.total[k].cpu().numpy(), self.seen[k].cpu().numpy()
        return np.where(seen > 0, total, np.nan).astype(np.float32)


class CumulativeLossEstimator(RecordScoreEstimator):
    name = NAME
    description = "cumulative sample loss (Ravikumar et al. 2025): training loss summed over an example's steps"
    score = NAME
    orientation = NAME
