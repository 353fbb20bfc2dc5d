"""The free proxies every record carries (record scores, src/estimators/base.py): learning speed, final loss
and margin. Nothing here needs an extra pass over the data.

- learn_speed: the fraction of an example's training steps (all epochs, augmented batches, train mode,
  before the update) whose prediction was its trained label; NaN exactly outside the subset. Two int32
  counters per member and example, scatter-added on the training device (no host sync per step).
- loss: the final cross-entropy of the trained label (the evaluation pass that gives the record's
  predictions); margin: that label's logit minus the largest other logit, from the same pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from src.estimators.base import RecordScore, TrainStep


class LearnSpeed(RecordScore):
    name = "learn_speed"

    def start(self, pack: int, n_train: int, device: Any) -> None:
        import torch

        # int32: exact up to 2**31 steps per example
        self.seen = torch.zeros(pack, n_train, dtype=torch.int32, device=device)
        self.correct = torch.zeros(pack, n_train, dtype=torch.int32, device=device)

    def on_step(self, step: TrainStep) -> None:
        import torch

        self.seen.scatter_add_(1, step.idx, torch.ones_like(step.idx, dtype=torch.int32))
        self.correct.scatter_add_(1, step.idx, step.correct.int())

    def synchronize(self, all_reduce: Callable[[Any], None]) -> None:
        for counts in (self.seen, self.correct):
            all_reduce(counts)

    def finish(self, k: int, train_eval: Any) -> np.ndarray:
        seen, hits = self.seen[k].cpu().numpy(), self.correct[k].cpu().numpy()
        learn_speed = np.full(seen.shape, np.nan, dtype=np.float32)
        np.divide(hits, seen, out=learn_speed, where=seen > 0)
        return learn_speed


class FinalLoss(RecordScore):
    name = "loss"

    def finish(self, k: int, train_eval: Any) -> np.ndarray:
        return train_eval.loss[k]


class FinalMargin(RecordScore):
    name = "margin"

    def finish(self, k: int, train_eval: Any) -> np.ndarray:
        return train_eval.margin[k]
