"""Learning-rate schedules: conf/schedule/*.yaml name one of these with `_partial_`, and the module calls it with
the run's step counts to get the factor of optim.lr at each optimizer step (torch's LambdaLR).

Every schedule starts with a linear warm-up from 0 over `warmup_epochs` (factor (step + 1) / warm-up steps),
then: constant 1; cosine 0.5 (1 + cos(pi progress)); linear 1 - progress, where progress runs from 0 to 1
over the steps after the warm-up; step: gamma to the power of the milestones (epochs) passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Factor = Callable[[int], float]


def _with_warmup(after: Callable[[int, float], float], warmup_steps: int, total_steps: int) -> Factor:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return after(step, (step - warmup_steps) / max(1, total_steps - warmup_steps))

    return factor


def constant(total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0) -> Factor:
    return _with_warmup(lambda step, progress: 1.0, int(warmup_epochs * steps_per_epoch), total_steps)


def cosine(total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0) -> Factor:
    return _with_warmup(lambda step, progress: 0.5 * (1 + math.cos(math.pi * progress)),
                        int(warmup_epochs * steps_per_epoch), total_steps)


def linear(total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0) -> Factor:
    return _with_warmup(lambda step, progress: 1.0 - progress, int(warmup_epochs * steps_per_epoch), total_steps)


def step(total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0, milestones: Sequence[float] = (),
         gamma: float = 0.1) -> Factor:
    steps = [int(epoch * steps_per_epoch) for epoch in milestones]
    return _with_warmup(lambda step, progress: gamma ** sum(step >= m for m in steps),
                        int(warmup_epochs * steps_per_epoch), total_steps)
