"""Turn-over dropout (src/estimators/turnover/): masks from the index alone, separated halves, estimates against
naive loops, refusal of other models, estimates readable by src.compare, the CLI dispatch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

from src.analyses.compare import compare, load_input
from src.contracts.estimates import Thresholds, write_estimates
from src.data.dataset import load_dataset
from src.errors import ConfigError
from src.estimators.subsample.topk import TopK
from src.estimators.turnover.job import (
    check_turnover_config,
    estimate_turnover,
    fit_turnover,
)
from src.estimators.turnover.masks import TRAIN_DOMAIN, half_masks
from src.estimators.turnover.network import HalfMaskedNetwork, TurnoverClassifier
from src.estimators.turnover.summary import turnover_summary
from src.models.build import build_model
from tests.conftest import CONF, TINY, run_cli

INFLUENCE_CAP = 23  # training examples with influence rows in the trained-model tests: a short last block


def turnover_cfg(tmp: Path, *overrides: str) -> DictConfig:
    base = [*TINY, "estimator=turnover", "trainer.max_epochs=1", f"paths.output_dir={tmp}",
            f"paths.data_dir={tmp / 'data'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[DictConfig, TurnoverClassifier]:
    cfg = turnover_cfg(tmp_path_factory.mktemp("turnover"))
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    return cfg, fit_turnover(cfg, dataset, Path(cfg.estimator.out_dir))


# ---------------------------------------------------------------------------------------------- masks

def test_mask_is_a_function_of_seed_domain_index_and_halves_exactly() -> None:
    widths = [512, 7, 64]
    batch = half_masks(0, TRAIN_DOMAIN, torch.tensor([5, 9, 5, 1000]), widths)
    for point, width in enumerate(widths):
        alone = half_masks(0, TRAIN_DOMAIN, torch.tensor([9]), widths)[point][0]
        assert torch.equal(batch[point][1], alone)  # recomputed from the index alone
        assert torch.equal(batch[point][0], batch[point][2])
        assert not torch.equal(batch[point][0], batch[point][3])
        assert (batch[point].sum(dim=1) == width // 2).all()  # exactly half of the units
    other_seed = half_masks(1, TRAIN_DOMAIN, torch.tensor([5]), widths)[0][0]
    other_domain = half_masks(0, 1, torch.tensor([5]), widths)[0][0]
    assert not torch.equal(other_seed, batch[0][0]) and not torch.equal(other_domain, batch[0][0])
    many = half_masks(0, TRAIN_DOMAIN, torch.arange(4000), [256, 256])
    per_unit = many[0].double().mean(dim=0)  # each unit is in about half of the examples' halves ...
    assert per_unit.min() > 0.44 and per_unit.max() < 0.56
    agreement = (many[0] == many[1]).double().mean()  # ... and the points draw independently
    assert 0.48 < agreement < 0.52


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 as src/estimators/turnover/__init__.py writes it, on numpy's uint64 (wrapping)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def test_masks_are_the_documented_uint64_algorithm() -> None:
    """The torch masks (int64 bits, computed on the training device) equal the algorithm in uint64 arithmetic,
    for indices and seeds that set the top bit of the keys."""
    seed, domain, widths = 4_000_000_000, TRAIN_DOMAIN, [512, 7, 2, 1]
    indices = np.array([0, 1, 2, 3, 1436, 2**40 + 7, 2**62 + 1], dtype=np.uint64)
    example = _splitmix64(_splitmix64(_splitmix64(np.array([seed], np.uint64)) + np.uint64(domain)) + indices)
    masks = half_masks(seed, domain, torch.from_numpy(indices.astype(np.int64)), widths)
    for point, (mask, width) in enumerate(zip(masks, widths, strict=True)):
        keys = _splitmix64(_splitmix64(example + np.uint64(point))[:, None] + np.arange(width, dtype=np.uint64))
        expected = keys < np.sort(keys, axis=1)[:, width // 2, None]
        np.testing.assert_array_equal(mask.numpy(), expected)


# ---------------------------------------------------------------------------------- separated halves

def _gradients(network: HalfMaskedNetwork, x: torch.Tensor, masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    network.zero_grad()
    network.use(masks)
    network(x).logsumexp(1).sum().backward()
    return {name: p.grad.clone() for name, p in network.model.named_parameters()}


@pytest.mark.parametrize(("model", "classifier_bias"), [("mlp", "layers.5.bias"), ("cnn_small", "head.2.bias"),
                                                         ("resnet18", "fc.bias")])
def test_a_half_and_its_complement_share_only_the_classifier_bias(model: str, classifier_bias: str) -> None:
    """Gradients of an example under its half and of another example under the complement touch disjoint
    parameter entries (eval mode: BatchNorm uses running statistics), except the classifier's bias."""
    cfg = turnover_cfg(Path("/unused"), f"model={model}")
    torch.manual_seed(0)
    network = HalfMaskedNetwork(build_model(cfg.model, (1, 8, 8), 10), seed=0).eval()
    for norm in network.modules():  # as after training: timm zero-initialises each block's last BN scale
        if isinstance(norm, nn.BatchNorm2d):
            for tensor in (norm.weight.data, norm.running_var):
                tensor.uniform_(0.5, 1.5)
            for tensor in (norm.bias.data, norm.running_mean):
                tensor.normal_(0, 0.1)
    half = network.halves(torch.tensor([3]), TRAIN_DOMAIN)
    x = torch.randn(2, 1, 8, 8)
    own = _gradients(network, x[:1], half)
    other = _gradients(network, x[1:], [~mask for mask in half])
    shared = sorted(name for name in own if ((own[name] != 0) & (other[name] != 0)).any())
    assert shared == [classifier_bias]
    for grads in (own, other):  # not vacuous; at most half of any layer (inactive ReLUs pass no gradient)
        touched = sum(int((g != 0).sum()) for g in grads.values()) / sum(g.numel() for g in grads.values())
        assert 0.02 < touched < 0.5


def test_mlp_output_under_a_half_ignores_every_weight_outside_it() -> None:
    cfg = turnover_cfg(Path("/unused"), "model=mlp")
    network = HalfMaskedNetwork(build_model(cfg.model, (64,), 10), seed=0).eval()
    x = torch.randn(1, 64)
    (m1, m2) = network.halves(torch.tensor([11]), TRAIN_DOMAIN)
    network.use([m1, m2])
    with torch.no_grad():
        before = network(x)
        layers = [module for module in network.model.layers if isinstance(module, nn.Linear)]
        keep_in = [torch.ones(64, dtype=torch.bool), m1[0], m2[0]]
        keep_out = [m1[0], m2[0], torch.ones(10, dtype=torch.bool)]
        for layer, rows, cols in zip(layers, keep_out, keep_in, strict=True):
            layer.weight[~(rows[:, None] & cols[None, :])] = 0
            layer.bias[~rows] = 0
        after = network(x)
        network.use([~m1, ~m2])
        complement = network(x)
    torch.testing.assert_close(after, before)
    assert torch.count_nonzero(complement - layers[-1].bias) == 0  # the complement kept nothing but that bias


def test_grouped_masks_equal_per_row_masks() -> None:
    """The influence pass's layout (G masks x r rows, the prefix run once) equals one mask per row."""
    cfg = turnover_cfg(Path("/unused"), "model=cnn_small")
    network = HalfMaskedNetwork(build_model(cfg.model, (1, 8, 8), 10), seed=0).eval()
    x = torch.randn(5, 1, 8, 8)
    masks = network.halves(torch.tensor([2, 40, 7]), TRAIN_DOMAIN)
    with torch.no_grad():
        network.use(masks, rows_per_mask=5)
        grouped = network(x)
        network.use([mask.repeat_interleave(5, dim=0) for mask in masks])
        per_row = network(x.repeat(3, 1, 1, 1))
    torch.testing.assert_close(grouped, per_row)


def test_the_training_halves_table_holds_each_examples_halves(
        trained: tuple[DictConfig, TurnoverClassifier]) -> None:
    """The table a step gathers its batch's halves from (computed in chunks at fit start) equals the halves
    computed for those examples alone."""
    _, module = trained
    assert module.train_halves is not None
    probe = torch.tensor([0, 1, 1023, 1024, len(module.y_train) - 1])
    for table, mask in zip(module.train_halves, module.network.halves(probe, TRAIN_DOMAIN), strict=True):
        assert table.shape == (len(module.y_train), mask.shape[1])
        assert torch.equal(table[probe], mask)


# ------------------------------------------------------------------------------------------ estimates

def _per_row(module: TurnoverClassifier, x: torch.Tensor, labels: torch.Tensor,
             masks: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """One forward, one mask per row (the training layout): correct and probability of the label."""
    with torch.no_grad():
        module.network.use(masks)
        prob = torch.softmax(module.network(module.prepare(x)), dim=1)
    return (prob.argmax(1) == labels).numpy().astype(float), prob.gather(1, labels[:, None])[:, 0].numpy()


@pytest.mark.parametrize("eval_rows", [500, 4000])  # test batches of 250 + 110 with groups of 1; groups of 5
def test_memorization_and_influence_equal_naive_loops(trained: tuple[DictConfig, TurnoverClassifier],
                                                      eval_rows: int) -> None:
    cfg, module = trained
    cfg = cfg.copy()
    cfg.estimator.influence_cap, cfg.estimator.eval_rows = INFLUENCE_CAP, eval_rows
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    estimates = estimate_turnover(module, dataset, cfg, train_time=np.zeros(2))
    arrays, summary = estimates.arrays, estimates.summary
    module.eval()
    probe = np.array([0, 7, 500, 1436, *dataset.flipped_idx[:2]], dtype=np.int64)
    own = module.network.halves(torch.from_numpy(probe), TRAIN_DOMAIN)
    correct_own, prob_own = _per_row(module, module.x_train[probe], module.y_train[probe], own)
    correct_flip, prob_flip = _per_row(module, module.x_train[probe], module.y_train[probe], [~m for m in own])
    np.testing.assert_array_equal(arrays["mem"][probe], correct_own - correct_flip)
    np.testing.assert_allclose(arrays["mem_soft"][probe], prob_own - prob_flip, atol=1e-6)
    n_test = len(dataset.y_test)
    infl, infl_soft = np.empty((INFLUENCE_CAP, n_test)), np.empty((INFLUENCE_CAP, n_test))
    for i in range(INFLUENCE_CAP):
        half = [mask.expand(n_test, -1) for mask in module.network.halves(torch.tensor([i]), TRAIN_DOMAIN)]
        c_own, p_own = _per_row(module, module.x_test, module.y_test, half)
        c_flip, p_flip = _per_row(module, module.x_test, module.y_test, [~mask for mask in half])
        infl[i], infl_soft[i] = c_own - c_flip, p_own - p_flip
    theta_mem, theta_infl = Thresholds.theta_mem, Thresholds.theta_infl
    train, test = np.nonzero((infl >= theta_infl) & (arrays["mem"][:INFLUENCE_CAP, None] >= theta_mem)
                             & (dataset.y_train[:INFLUENCE_CAP, None] == dataset.y_test[None, :]))
    assert sorted(zip(arrays["pair_train_idx"].tolist(), arrays["pair_test_idx"].tolist(), strict=True)) == \
        sorted(zip(train.tolist(), test.tolist(), strict=True))
    assert (arrays["pair_infl"] == 1).all() and np.isnan(arrays["pair_infl_se"]).all()
    # top-k by infl_soft: the k largest naive values, and each chosen index carries its naive value (the
    # order of near-ties may differ between a single-row and a batched forward in the last float bits)
    best = -np.sort(-infl_soft, axis=0)[:Thresholds.top_k].T
    np.testing.assert_allclose(arrays["topk_infl"], best, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(infl_soft.T, arrays["topk_idx"], axis=1), best, atol=1e-5)
    assert summary["turnover"]["influence_train_examples"] == INFLUENCE_CAP
    assert summary["runs_used"] == 1 and np.isnan(arrays["mem_se"]).all()


def test_top_k_breaks_ties_to_the_lower_index_across_blocks() -> None:
    topk = TopK(2, 3)
    every = np.ones(2, dtype=bool)
    topk.merge(np.array([0, 1]), np.array([[0.5, 0.0, -1.0], [0.5, 0.2, -1.0]], dtype=np.float32), every)
    topk.merge(np.array([2, 3]), np.array([[0.5, 0.2, -2.0], [0.9, 0.0, -1.0]], dtype=np.float32), every)
    indices, values = topk.result()
    np.testing.assert_array_equal(indices, [[3, 0], [1, 2], [0, 1]])
    np.testing.assert_allclose(values, [[0.9, 0.5], [0.2, 0.2], [-1.0, -1.0]])


def test_estimates_dir_is_read_by_compare(trained: tuple[DictConfig, TurnoverClassifier], tmp_path: Path) -> None:
    cfg, module = trained
    cfg = cfg.copy()
    cfg.estimator.influence = "none"
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    estimates = estimate_turnover(module, dataset, cfg, train_time=np.zeros(2))
    arrays = estimates.arrays
    for name in ("a", "b"):
        write_estimates(tmp_path / name, estimates)
    item = load_input(tmp_path / "a", "a")
    np.testing.assert_array_equal(item.mem, arrays["mem"])
    assert item.summary["estimator"] == "turnover" and item.summary["model"] == "mlp"
    assert item.pair_keys.size == 0 and (arrays["topk_idx"] == -1).all()
    (row,) = compare([tmp_path / "a", tmp_path / "b"])
    assert row["spearman"] == pytest.approx(1.0) and row["common"] == len(dataset.y_train)
    header = (tmp_path / "a" / "memorization.csv").read_text().splitlines()[0]
    assert header.startswith("index,label,orig_label,flipped,mem,mem_se,mem_soft")


# ------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("override", ["model=densenet_bc100", "model=inception_small", "estimator.influence=all",
                                      "estimator.influence_cap=0", "perf.compile=true"])
def test_bad_turnover_config_is_refused_in_one_line(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_turnover_config(turnover_cfg(Path("/unused"), override))
    assert "\n" not in str(info.value)
    if override.startswith("model="):
        assert "model=mlp, model=cnn_small or a timm ResNet" in str(info.value)


def test_network_refuses_other_architectures() -> None:
    with pytest.raises(ConfigError, match="estimator=turnover supports"):
        HalfMaskedNetwork(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), seed=0)


# ------------------------------------------------------------------------------------------------ CLI

@pytest.mark.slow
def test_cli_runs_one_turnover_job_per_seed(tmp_path: Path) -> None:
    args = ["src.run", "-m", "estimator=turnover", *TINY, "trainer.max_epochs=1", "estimator.influence_cap=10",
            f"paths.output_dir={tmp_path}", "seed=0..1"]
    result = run_cli(*args, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert "2 seeds, 0 done, 2 to train in 2 job(s)" in result.stderr
    sweep = tmp_path / "digits_mlp_r0.7"
    assert not list(sweep.rglob("record.npz"))
    mems = []
    for seed in (0, 1):
        out = sweep / "turnover" / f"seed={seed}"
        assert (out / "run.log").is_file() and (out / "pairs.csv").is_file()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["seed"] == seed and summary["turnover"]["influence_train_examples"] == 10
        mems.append(load_input(out, str(seed)).mem)
    assert not np.array_equal(*mems)  # another seed: another initialisation, order and masks
    bad = run_cli("src.run", "estimator=turnover", "model=densenet_bc100", cwd=Path(__file__).resolve().parent.parent)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "error: estimator=turnover" in bad.stderr


def test_an_underfitting_warning_is_about_this_run(trained: tuple[DictConfig, TurnoverClassifier]) -> None:
    """The warning names what to change (train longer, lower lr), not another experiment's learning rate."""
    cfg, _ = trained
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    n, none = len(dataset.y_train), np.zeros(0, dtype=np.int64)
    arrays = {"mem": np.zeros(n), "train_in_acc": np.array([0.5]), "test_acc": np.array([0.5]),
              "acc_in": np.full(n, 0.5), "acc_out": np.full(n, 0.5), "pair_train_idx": none, "pair_test_idx": none,
              "pair_infl": np.zeros(0)}
    summary = turnover_summary(cfg, dataset, arrays, {"correct_own": np.ones(1), "correct_flip": np.ones(1)}, [1], 0,
                               {}, Thresholds())
    warning = summary["train_in_acc_warning"]
    assert "train longer or lower optim.lr" in warning and "fz_mnist" not in warning and "0.02" not in warning
