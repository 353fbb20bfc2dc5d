"""Input-loss curvature (src/estimators/curvature.py): the analytic quadratic case, a naive per-example loop
over a real job's epochs, packing, and that scoring leaves training unchanged."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from src.contracts.records import read_record
from src.errors import ConfigError
from src.estimators.base import EpochEnd
from src.estimators.curvature import (
    InputCurvature,
    batch_directions,
    directions_generator,
    input_curvature,
    rademacher,
)
from src.training.job import run_job

FEW_STEPS = ["subset.ratio=0.1", "trainer.max_epochs=2", "optim.lr=0.05", "record.scores=[curvature]",
             "record.curvature.directions=3"]
STEP = 1e-3


def quadratic(matrix: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """l(x) = x^T A x / 2 for every example of (P, B, d) inputs."""
    return lambda x: 0.5 * torch.einsum("pbi,ij,pbj->pb", x, matrix, x)


def test_a_diagonal_quadratic_of_entries_plus_minus_c_scores_c_sqrt_d_in_every_direction() -> None:
    d, c = 40, 0.7
    matrix = torch.diag(torch.tensor([c if i % 2 else -c for i in range(d)], dtype=torch.float64))
    x = torch.randn(2, 5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = rademacher((10, 2, 5, d), torch.Generator().manual_seed(1)).double()
    score = input_curvature(quadratic(matrix), x, v, STEP)
    torch.testing.assert_close(score, torch.full((2, 5), c * math.sqrt(d), dtype=torch.float64))


def test_the_mean_square_of_a_general_quadratic_tends_to_its_squared_frobenius_norm() -> None:
    d, examples = 20, 20000
    half = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    matrix = (half + half.T) / 2  # indefinite: a Hessian is symmetric
    assert (torch.linalg.eigvalsh(matrix) < 0).any() and (torch.linalg.eigvalsh(matrix) > 0).any()
    x = torch.randn(1, examples, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    v = rademacher((1, 1, examples, d), torch.Generator().manual_seed(4)).double()
    mean_square = (input_curvature(quadratic(matrix), x, v, STEP) ** 2).mean().item()
    frobenius = (matrix ** 2).sum().item()
    # E ||A v||^2 = ||A||_F^2; the sd of ||A v||^2 is at most 2 ||A||_F^2 / sqrt(2), so 5 sd of the mean:
    assert abs(mean_square - frobenius) < 5 * 2 * frobenius / math.sqrt(examples)


@pytest.mark.parametrize("setting", ["directions=0", "directions=1.5", "step=0", "step=-1"])
def test_bad_settings_are_refused(setting: str) -> None:
    name, _, text = setting.partition("=")
    value = float(text) if name == "step" or "." in text else int(text)
    kwargs = {"directions": 10, "step": STEP, name: value}
    with pytest.raises(ConfigError, match=f"record.curvature.{name}"):
        InputCurvature(**kwargs)


def naive_epoch(epoch: EpochEnd, directions: int) -> dict[int, dict[int, float]]:
    """Member k's curvature of each of its examples, one example and one direction at a time."""
    generators = [directions_generator(seed, epoch.epoch, epoch.subset_idx.device) for seed in epoch.seeds]
    pack, subset = epoch.subset_idx.shape
    out: dict[int, dict[int, float]] = {k: {} for k in range(pack)}
    for start in range(0, subset, epoch.batch_size):
        idx = epoch.subset_idx[:, start:start + epoch.batch_size]
        x = epoch.inputs(idx).detach()
        v = batch_directions(generators, idx.shape[1], directions, tuple(x.shape[2:]))
        for j in range(idx.shape[1]):
            def gradient(inputs: torch.Tensor, rows: torch.Tensor = idx[:, j:j + 1]) -> torch.Tensor:
                inputs = inputs.clone().requires_grad_(True)
                with torch.enable_grad():
                    epoch.losses(inputs, rows).sum().backward()
                return inputs.grad
            at_x = gradient(x[:, j:j + 1])
            norms = [(gradient(x[:, j:j + 1] + STEP * v[d][:, j:j + 1]) - at_x).flatten(1).norm(dim=1) / STEP
                     for d in range(directions)]
            mean = torch.stack(norms).mean(0)
            for k in range(pack):
                out[k][int(idx[k, j])] = float(mean[k])
    return out


def test_a_record_holds_the_epoch_mean_of_a_naive_per_example_loop(compose_cfg: Callable[..., DictConfig]) -> None:
    by_epoch: list[dict[int, dict[int, float]]] = []
    original = InputCurvature.on_epoch_end

    def spy(self: InputCurvature, epoch: EpochEnd) -> None:
        by_epoch.append(naive_epoch(epoch, self.directions))
        original(self, epoch)

    InputCurvature.on_epoch_end = spy
    try:
        written = run_job(compose_cfg(*FEW_STEPS, "seeds=[3,4]", "name=curv", "dataset.eval_batch_size=50"))
    finally:
        InputCurvature.on_epoch_end = original
    assert len(by_epoch) == 2
    for k, path in enumerate(written):
        record = read_record(path)
        curvature = record.proxies["curvature"]
        assert np.array_equal(np.isnan(curvature), ~record.subset_mask)
        rows = np.flatnonzero(record.subset_mask)
        expected = np.mean([[epoch[k][i] for i in rows] for epoch in by_epoch], axis=0)
        # float32 finite differences: the batched and the one-example gradients round apart by ~1e-5 absolute
        np.testing.assert_allclose(curvature[rows], expected, rtol=1e-3, atol=2e-5)
        assert (expected > 0).all()


def test_a_packed_member_scores_like_its_seed_alone_and_scoring_leaves_training_unchanged(
        compose_cfg: Callable[..., DictConfig]) -> None:
    packed = [read_record(p) for p in run_job(compose_cfg(*FEW_STEPS, "seeds=[3,4]", "name=packed"))]
    [alone] = [read_record(p) for p in run_job(compose_cfg(*FEW_STEPS, "seed=4", "name=alone"))]
    [plain] = [read_record(p) for p in run_job(compose_cfg(*FEW_STEPS, "seed=4", "name=plain",
                                                           "record.scores=[loss]"))]
    np.testing.assert_allclose(packed[1].proxies["curvature"], alone.proxies["curvature"], rtol=1e-3, atol=1e-5)
    assert np.array_equal(alone.train_prob, plain.train_prob) and np.array_equal(alone.test_prob, plain.test_prob)
