"""`experiment=fz_mnist` against the definitions of the authors' MNIST demo (heldout-influence-estimation,
mnist_infl_mem.py): stax's initialisation, bytes / 255 inputs, int(n * r) subsets drawn by RandomState(seed),
JAX's momentum update, a fresh permutation per epoch with the last batch partial. The statistical agreement of
whole sweeps is benchmarks/fz_agreement.py (docs/EXPERIMENTS.md)."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from src.config.compose import compose_config
from src.contracts.records import read_record, record_path
from src.data.dataset import load_dataset
from src.data.subsets import subset_indices, subset_mask, subset_size
from src.errors import ConfigError, ModelError, RecordError
from src.estimators.subsample.stats import SweepStats
from src.models.build import build_model
from src.models.init import stax_init, truncated_normal_std
from src.training.epochs import EpochPlan
from tests.conftest import TINY, run_cli

# jax.nn.initializers.variance_scaling: "constant is stddev of standard normal truncated to (-2, 2)"
JAX_TRUNCATED_STD = .87962566103423978


def fz_cfg(*overrides: str) -> DictConfig:
    return compose_config(["experiment=fz_mnist", *overrides])


def test_the_truncation_constant_is_jax_s() -> None:
    # A stored float against one computed here, on whatever CPU: about ten float64 operations (erf, exp, three
    # square roots, arithmetic), each within an ulp, so 16 float64 eps leaves room for every one of them.
    assert truncated_normal_std(2.0) == pytest.approx(JAX_TRUNCATED_STD, rel=16 * sys.float_info.epsilon)


def test_stax_init_draws_glorot_normal_truncated_weights_and_small_biases() -> None:
    torch.manual_seed(0)
    model = build_model(fz_cfg().model, (1, 28, 28), 10)
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    assert [tuple(linear.weight.shape) for linear in linears] == [(512, 784), (256, 512), (10, 256)]
    for linear in linears:
        fan_out, fan_in = linear.weight.shape
        target = math.sqrt(2 / (fan_in + fan_out))  # glorot: the std after truncation
        weight = linear.weight.detach().double()
        assert weight.std().item() == pytest.approx(target, rel=5 / math.sqrt(weight.numel()) + 0.02)
        assert weight.abs().max().item() <= 2 * target / JAX_TRUNCATED_STD * (1 + 1e-6)
        assert abs(weight.mean().item()) < 5 * target / math.sqrt(weight.numel())
    biases = torch.cat([linear.bias.detach() for linear in linears]).double()
    assert biases.std().item() == pytest.approx(1e-2, rel=0.1)  # stax.Dense b_init=normal(): stddev 1e-2


def test_stax_init_of_a_conv_counts_the_receptive_field() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 64, 3)
    stax_init(conv)
    fan_in, fan_out = 16 * 9, 64 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
    assert conv.bias.abs().max().item() < 1e-5  # stax.GeneralConv: b_init=normal(1e-6)


def test_the_init_is_the_seed_s_and_the_default_stays_the_model_s() -> None:
    def weights(seed: int, init: str) -> torch.Tensor:
        torch.manual_seed(seed)
        return build_model(fz_cfg(f"model.init={init}").model, (784,), 10).layers[1].weight.detach().clone()

    assert torch.equal(weights(3, "stax"), weights(3, "stax"))
    assert not torch.equal(weights(3, "stax"), weights(4, "stax"))
    torch.manual_seed(3)
    default = nn.Linear(784, 512).weight.detach()  # what PyTorch itself draws first for this layer
    assert torch.equal(weights(3, "default"), default)


def test_an_unknown_init_is_one_line() -> None:
    with pytest.raises(ModelError, match=r"init='glorot' is unknown; use one of default, stax"):
        build_model(fz_cfg("model.init=glorot").model, (784,), 10)


def test_inputs_are_bytes_over_255_without_standardisation(tmp_path: Path) -> None:
    cfg = fz_cfg(f"paths.data_dir={tmp_path}")
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    assert dataset.x_train.dtype == np.uint8
    mean, std = (torch.tensor(list(cfg.dataset.normalize[key])) for key in ("mean", "std"))
    x = torch.from_numpy(dataset.x_train[:64])
    prepared = (x.float() * dataset.pixel_scale - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    np.testing.assert_allclose(prepared.numpy(), dataset.x_train[:64].astype(np.float32) / 255, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("n", "ratio", "floor", "half_up"), [(4000, 0.7, 2800, 2800), (1437, 0.7, 1005, 1006),
                                                               (10, 0.25, 2, 3), (10, 0.35, 3, 4)])
def test_size_rules(n: int, ratio: float, floor: int, half_up: int) -> None:
    assert subset_size(n, ratio, "floor") == floor == int(n * ratio)
    assert subset_size(n, ratio) == subset_size(n, ratio, "round_half_up") == half_up


def test_floor_subsets_are_the_demo_s_draw_where_the_rules_differ() -> None:
    for seed in (0, 7, 123):
        demo = np.random.RandomState(seed).choice(1437, size=int(1437 * 0.7), replace=False)
        assert np.array_equal(subset_indices(seed, 1437, 0.7, size_rule="floor"), np.sort(demo))
    assert fz_cfg().subset.size_rule == "floor"


def test_an_unknown_size_rule_is_refused_before_launch(tmp_path: Path) -> None:
    result = run_cli("src.run", *TINY, "subset.size_rule=ceil", f"paths.output_dir={tmp_path / 'o'}", "--dry-run",
                     cwd=tmp_path)
    assert result.returncode == 2 and "subset.size_rule=ceil is unknown; use one of round_half_up, floor" in \
        result.stderr
    with pytest.raises(ConfigError):
        subset_mask(0, 10, 0.5, size_rule="ceil")


def test_a_floor_sweep_is_estimated(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """Records drawn with the floor rule pass the aggregator's subset check (digits: 1437 * 0.7 = 1005.9)."""
    from src import estimate_sweep, load_sweep
    from src.training.job import run_job

    run_job(compose_cfg("subset.size_rule=floor", "trainer.max_epochs=1", "seeds=[0,1,2,3]", "name=floor"))
    stats, problems = load_sweep(tmp_path / "outputs" / "floor", strict=True)
    assert not problems and stats.n_in.sum() == 4 * 1005
    assert np.isfinite(estimate_sweep(stats).mem).any()
    record = read_record(record_path(tmp_path / "outputs" / "floor", 3))  # checked under its own rule only:
    config = {**record.meta["config"], "subset": {**record.meta["config"]["subset"], "size_rule": "round_half_up"}}
    with pytest.raises(RecordError, match=r"is not the subset of seed 3 .*size_rule round_half_up"):
        SweepStats.from_record(dataclasses.replace(record, meta={**record.meta, "config": config}))


def test_torch_sgd_momentum_is_jax_s_momentum() -> None:
    """jax.experimental.optimizers.momentum(0.1, mass=0.9): v <- 0.9 v + g; w <- w - 0.1 v, from v = 0."""
    generator = torch.Generator().manual_seed(0)
    gradients = [torch.randn(5, generator=generator) for _ in range(6)]
    weight = torch.zeros(5, requires_grad=True)
    optimizer = torch.optim.SGD([weight], **{key: fz_cfg().optim[key] for key in ("lr", "momentum", "nesterov",
                                                                                     "weight_decay")})
    by_hand, velocity = torch.zeros(5), torch.zeros(5)
    for gradient in gradients:
        weight.grad = gradient.clone()
        optimizer.step()
        velocity = 0.9 * velocity + gradient
        by_hand = by_hand - 0.1 * velocity
    torch.testing.assert_close(weight.detach(), by_hand, rtol=0, atol=1e-7)


def test_each_epoch_is_a_fresh_permutation_with_the_last_batch_partial() -> None:
    cfg = fz_cfg()
    subset = torch.from_numpy(subset_indices(0, 4000, 0.7, size_rule="floor"))[None]
    plan = EpochPlan(subset, int(cfg.batch_size), [0], 0, False)
    orders = []
    for epoch in range(2):
        plan.set_epoch(epoch)
        batches = [batch[0][0] for batch in plan]
        assert [len(batch) for batch in batches] == [128] * 21 + [2800 - 21 * 128]  # ceil(2800 / 128) batches
        order = torch.cat(batches)
        assert torch.equal(order.sort().values, subset[0])
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])
