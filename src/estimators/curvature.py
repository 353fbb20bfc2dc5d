"""Input-loss curvature (Garg, Ravikumar & Roy 2023, "Memorization through the lens of curvature of loss function
around samples"; the authors' code: DeepakTatachar/Privacy-Memorization-Curvature, utils/loss_curve_score.py).

At the end of every training epoch, with the model in eval mode and no augmentation, each example i of a member's
subset gets
    curv_e(i) = mean over `directions` Rademacher vectors v of ||grad_x l(x_i + h v) - grad_x l(x_i)|| / h,
a finite-difference estimate of ||H v|| for the Hessian H of the example's loss in its (normalised) input; the
record holds the mean of curv_e over the epochs. NaN outside the subset (the example was never trained on).

Where this differs from the authors' code, and why the ranking within a run does not change: their loss is the
batch mean (every gradient scaled by 1/B) and they do not divide by h; here the loss is per example and the
difference is divided by h, so that the score is the curvature itself, independent of the batch size (their last,
partial batch gets another scale). They recompute grad_x l(x) for every direction; it is computed once here.

Cost: 1 + `directions` forward-and-input-gradient passes over the subset per epoch (11 with the paper's 10
directions), against one forward-and-backward pass of training: see benchmarks/estimators.py and
docs/ESTIMATORS.md for the measured seconds. The directions of member k come from (seed k, epoch) alone, drawn
batch by batch in subset order, so member k of a pack gets the directions of seed k trained alone. They are drawn
on the training device (a torch.Generator there), never copied from the host: the same directions on the CPU
as before, others on a GPU (its generator's stream), each reproducible per seed.

Records hold it when `record.scores` names it (`'record.scores=[learn_speed,loss,margin,curvature]'`; the
settings are `record.curvature`); `python -m src.estimate <sweep> --estimator curvature` gives its mean over the
runs whose subset held the example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from src.errors import ConfigError
from src.estimators.base import EpochEnd, RecordScore
from src.estimators.record_scores import RecordScoreEstimator

NAME = "curvature"
DIRECTIONS_STREAM = 0x63757276  # ("curv"): the directions' random stream, apart from the epoch's batch order


def directions_generator(seed: int, epoch: int, device: Any) -> Any:
    """The generator, on the training device, of member `seed`'s directions in `epoch`."""
    import torch

    state = np.random.SeedSequence([seed, epoch, DIRECTIONS_STREAM]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def rademacher(shape: tuple[int, ...], generator: Any) -> Any:
    """Entries -1 or +1 with probability 1/2 each (float32, on the generator's device)."""
    import torch

    return torch.randint(0, 2, shape, generator=generator, device=generator.device).float().mul_(2).sub_(1)


def batch_directions(generators: list[Any], batch: int, directions: int, input_shape: tuple[int, ...]) -> Any:
    """(D, P, B, ...) directions of one batch: member k draws (B, D, ...) from its own generator."""
    import torch

    draws = [rademacher((batch, directions, *input_shape), gen) for gen in generators]
    return torch.stack(draws).permute(2, 0, 1, *range(3, 3 + len(input_shape)))


def input_curvature(losses_of: Callable[[Any], Any], x: Any, directions: Any, step: float) -> Any:
    """mean over d of ||grad l(x + step v_d) - grad l(x)|| / step, per example.

    `losses_of` maps inputs (P, B, ...) to per-example losses (P, B); `directions` is (D, P, B, ...) on x's device.
    Every example's loss depends on its own input only (eval mode), so the gradient of their sum is each
    example's own gradient.
    """
    import torch

    def input_gradient(inputs: Any) -> Any:
        inputs = inputs.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(losses_of(inputs).sum(), inputs)
        return gradient

    with torch.enable_grad():
        at_x = input_gradient(x)
        total = torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device)
        for v in directions:
            difference = input_gradient(x + step * v) - at_x
            total += difference.flatten(2).norm(dim=2).double() / step
    return total / len(directions)


class InputCurvature(RecordScore):
    name = NAME

    def __init__(self, directions: int, step: float) -> None:
        if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
            raise ConfigError(f"record.curvature.directions={directions!r} must be an integer >= 1 (the paper: 10)")
        if not step > 0:
            raise ConfigError(f"record.curvature.step={step!r} must be > 0 (the paper: 0.001)")
        self.directions, self.step = directions, float(step)

    def start(self, pack: int, n_train: int, device: Any) -> None:
        import torch

        self.total = torch.zeros(pack, n_train, dtype=torch.float64, device=device)
        self.in_subset = torch.zeros(pack, n_train, dtype=torch.bool, device=device)
        self.epochs = 0

    def on_epoch_end(self, epoch: EpochEnd) -> None:
        generators = [directions_generator(seed, epoch.epoch, epoch.subset_idx.device) for seed in epoch.seeds]
        if self.epochs == 0:  # the subsets are fixed for the whole run
            self.in_subset.scatter_(1, epoch.subset_idx, True)
        for start in range(0, epoch.subset_idx.shape[1], epoch.batch_size):
            idx = epoch.subset_idx[:, start:start + epoch.batch_size]
            x = epoch.inputs(idx)
            v = batch_directions(generators, idx.shape[1], self.directions, tuple(x.shape[2:]))
            score = input_curvature(lambda inputs, rows=idx: epoch.losses(inputs, rows), x, v, self.step)
            self.total.scatter_add_(1, idx, score)
        self.epochs += 1

    def finish(self, k: int, train_eval: Any) -> np.ndarray:
        mean = (self.total[k] / max(self.epochs, 1)).cpu().numpy()
        return np.where(self.in_subset[k].cpu().numpy(), mean, np.nan).astype(np.float32)


class CurvatureEstimator(RecordScoreEstimator):
    name = NAME
    description = "input-loss curvature (Garg et al. 2023): ||H v|| of the loss in the input, averaged over epochs"
    score = NAME
    orientation = NAME
