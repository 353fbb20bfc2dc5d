"""Memorization over epochs and the free proxies: what training records (per-epoch correctness at the last
epoch equals the final predictions; learn speed against a hand loop over the steps; packed members equal
single runs), config checks, the aggregator against naive loops over records, mixed record layouts, and
the dynamics report (groups, intervals, AUROC) with its CLI."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from scipy.stats import spearmanr

import src.training.module as training
from src.analyses.dynamics import GROUPS, dynamics
from src.config.checks import config_hash as experiment_hash
from src.config.paths import seed_record_path
from src.contracts.records import read_record, record_path, write_record
from src.dynamics import main as dynamics_main
from src.errors import ConfigError
from src.estimate import main as estimate_main
from src.estimators.subsample.influence import estimate
from src.estimators.subsample.load import load_sweep
from src.estimators.subsample.summary import summarize
from src.training.job import run_job
from tests.test_estimate import Sweep, small_sweep

EPOCHS = "record.epochs=[1,2]"


# ---------------------------------------------------------------------------------------------- training

def test_last_epoch_equals_final_predictions_and_proxies_are_consistent(compose_cfg: Callable[..., DictConfig]
                                                                       ) -> None:
    records = [read_record(path) for path in run_job(compose_cfg(EPOCHS, "seeds=[0,1]"))]
    assert [record.seed for record in records] == [0, 1]
    for record in records:
        assert record.epoch_list.tolist() == [1, 2] and record.meta["record_epochs"] == [1, 2]
        np.testing.assert_array_equal(record.epoch_train_correct[-1], record.train_correct)
        np.testing.assert_array_equal(record.epoch_test_correct[-1], record.test_correct)
        assert not np.array_equal(record.epoch_train_correct[0], record.epoch_train_correct[1])
        proxies = record.proxies
        np.testing.assert_allclose(np.exp(-proxies["loss"]), record.train_prob, atol=1e-5)
        np.testing.assert_array_equal(proxies["margin"] > 0, record.train_correct)


def test_learn_speed_equals_a_hand_loop_over_the_steps(compose_cfg: Callable[..., DictConfig],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The predictions of every training step, recomputed before the step with the same weights and batch."""
    steps: list[tuple[np.ndarray, np.ndarray]] = []
    original = training.SubsetClassifier.training_step

    def spy(self: training.SubsetClassifier, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        idx, shifts, flips = batch
        with torch.no_grad():
            logits = self.members(self.normalize_batch(self.x_train[idx], shifts, flips))
        steps.append((idx.numpy().copy(), (logits.argmax(2) == self.y_train[idx]).numpy()))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(training.SubsetClassifier, "training_step", spy)
    records = [read_record(path) for path in run_job(compose_cfg("seeds=[3,4]"))]
    for k, record in enumerate(records):
        seen, hits = np.zeros(record.train_label.size), np.zeros(record.train_label.size)
        for idx, correct in steps:
            for i, right in zip(idx[k], correct[k], strict=True):
                seen[i] += 1
                hits[i] += right
        assert np.array_equal(seen > 0, record.subset_mask) and set(np.unique(seen[seen > 0])) == {2}
        expected = np.where(seen > 0, hits / np.maximum(seen, 1), np.nan).astype(np.float32)
        assert record.proxies["learn_speed"].tobytes() == expected.tobytes()
        assert record.epoch_list.size == 0 and record.epoch_train_correct is None


def test_packed_member_equals_its_seed_alone(compose_cfg: Callable[..., DictConfig]) -> None:
    packed = read_record(run_job(compose_cfg(EPOCHS, "seeds=[5,6]", "name=packed"))[1])
    alone = read_record(run_job(compose_cfg(EPOCHS, "seed=6", "name=alone"))[0])
    assert packed.meta["pack"] == 2 and alone.meta["pack"] == 1
    for key in ("epoch_train_correct", "epoch_test_correct"):
        assert np.mean(getattr(packed, key) == getattr(alone, key)) >= 0.995, key
    np.testing.assert_allclose(packed.proxies["learn_speed"], alone.proxies["learn_speed"], atol=0.5,
                               equal_nan=True)
    inside = packed.subset_mask
    assert np.mean(packed.proxies["learn_speed"][inside] == alone.proxies["learn_speed"][inside]) >= 0.99
    for name in ("loss", "margin"):
        np.testing.assert_allclose(packed.proxies[name], alone.proxies[name], atol=2e-3, rtol=1e-3, err_msg=name)


@pytest.mark.parametrize("epochs", ["[x]", "[true]"])
def test_record_epochs_of_the_wrong_type_fail_when_composed(compose_cfg: Callable[..., DictConfig],
                                                            epochs: str) -> None:
    with pytest.raises(ConfigError, match=r"^record.epochs\[0\]=\w+ must be an integer$"):
        compose_cfg(f"record.epochs={epochs}")


@pytest.mark.parametrize("epochs", ["[0]", "[3]", "[1,1]"])
def test_bad_record_epochs_fail_before_training(compose_cfg: Callable[..., DictConfig], epochs: str) -> None:
    cfg = compose_cfg(f"record.epochs={epochs}")
    with pytest.raises(ConfigError, match=r"record.epochs=.* must be distinct epochs in 1..2"):
        run_job(cfg)
    assert not seed_record_path(cfg).parent.exists()


def test_record_epochs_not_hashed_but_a_record_without_them_is_retrained(compose_cfg: Callable[..., DictConfig]
                                                                         ) -> None:
    plain, with_epochs = compose_cfg(), compose_cfg("record.epochs=[2]")
    assert experiment_hash(plain, "fp") == experiment_hash(with_epochs, "fp")
    assert len(run_job(plain)) == 1
    assert len(run_job(with_epochs)) == 1 and read_record(seed_record_path(plain)).epoch_list.tolist() == [2]
    assert run_job(with_epochs) == []


# -------------------------------------------------------------------------------------------- aggregator

def naive_in_out_mean(values: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per example: mean of values (K, n) over runs with it in, and over runs with it out (NaN if none)."""
    inside, outside = np.full(masks.shape[1], np.nan), np.full(masks.shape[1], np.nan)
    for i in range(masks.shape[1]):
        column, mask = values[:, i].astype(np.float64), masks[:, i]
        if mask.any():
            inside[i] = column[mask].mean()
        if (~mask).any():
            outside[i] = column[~mask].mean()
    return inside, outside


def test_mem_epoch_and_proxies_equal_naive_loops() -> None:
    sweep = small_sweep()
    stats = sweep.stats()
    est = estimate(stats)
    masks = sweep.masks
    assert stats.epoch_list.tolist() == [1, 3] and est.mem_epoch.shape == (2, masks.shape[1])
    for e in range(2):
        inside, outside = naive_in_out_mean(sweep.epoch_correct[e], masks)
        expected = np.where(np.isnan(inside) | np.isnan(outside), np.nan, inside - outside)
        np.testing.assert_allclose(est.mem_epoch[e], expected, rtol=0, atol=1e-12, equal_nan=True)
    assert np.isnan(est.mem_epoch[1]).sum() > 0
    assert est.mem_epoch[1].tobytes() == est.mem.tobytes()  # epoch 3 is the final correctness here
    summary = summarize(stats, est, [])
    for name in ("learn_speed", "loss", "margin"):
        records = np.stack([sweep.record(k).proxies[name] for k in sweep.seeds])
        inside, _ = naive_in_out_mean(np.where(masks, records, 0), masks)
        np.testing.assert_allclose(est.proxies[name], inside, rtol=0, atol=1e-6, equal_nan=True, err_msg=name)
        both = np.isfinite(est.proxies[name]) & np.isfinite(est.mem)
        rho = spearmanr(est.proxies[name][both], est.mem[both]).statistic
        assert summary["proxy_spearman_with_mem"][name] == pytest.approx(rho, abs=1e-12)
    assert summary["mean_mem_by_epoch"][1] == pytest.approx(np.nanmean(est.mem))


def without_layout(sweep: Sweep, keep_epochs: bool, keep_proxies: bool) -> Sweep:
    other = Sweep(**sweep.__dict__)
    if not keep_epochs:
        other.epoch_list, other.epoch_correct = np.zeros(0, dtype=np.int64), None
    if not keep_proxies:
        other.proxies = {}
    return other


@pytest.mark.parametrize(("keep_epochs", "keep_proxies"), [(False, True), (True, False)])
def test_a_run_without_epochs_or_proxies_joins_and_the_sweep_keeps_what_all_have(
        tmp_path: Path, keep_epochs: bool, keep_proxies: bool) -> None:
    sweep = small_sweep(n_runs=8)
    sweep.write(tmp_path)
    write_record(record_path(tmp_path, 8), without_layout(small_sweep(n_runs=9), keep_epochs, keep_proxies).record(8))
    stats, problems = load_sweep(tmp_path, strict=True)
    assert stats.n_runs == 9 and not problems
    assert stats.epoch_list.tolist() == ([1, 3] if keep_epochs else [])
    assert sorted(stats.proxy_sums) == (sorted(sweep.proxies) if keep_proxies else [])


def test_a_run_with_more_epochs_contributes_the_common_ones(tmp_path: Path) -> None:
    sweep = small_sweep(n_runs=9)
    records = [sweep.record(k) for k in range(9)]
    extra = records[8]
    rows = np.insert(extra.epoch_train_correct, 1, ~extra.epoch_train_correct[0], axis=0)  # epoch 2 in between
    test_rows = np.insert(extra.epoch_test_correct, 1, extra.epoch_test_correct[0], axis=0)
    records[8] = dataclasses.replace(extra, epoch_list=np.array([1, 2, 3]), epoch_train_correct=rows,
                                     epoch_test_correct=test_rows, meta={**extra.meta, "epochs": 3})
    for k, record in enumerate(records):
        write_record(record_path(tmp_path, k), record)
    stats, _ = load_sweep(tmp_path, strict=True)
    assert stats.epoch_list.tolist() == [1, 3]
    expected = sum(record.epoch_train_correct[[0, -1]] for record in records)
    np.testing.assert_array_equal(stats.epoch_hard_all, expected)


# -------------------------------------------------------------------------------------------- dynamics

def planted_estimates(n: int = 400, n_flipped: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, n_flipped, replace=False)] = True
    mem_epoch = np.stack([rng.uniform(0, 0.2, n) + flipped * shift for shift in (0.0, 0.3, 0.6)])
    mem = mem_epoch[-1].copy()
    no_estimate = rng.choice(n, 10, replace=False)
    mem[no_estimate] = mem_epoch[:, no_estimate] = np.nan
    learn_speed = rng.permutation(n) / n
    learn_speed[no_estimate] = np.nan
    return {"mem": mem, "mem_epoch": mem_epoch, "epoch_list": np.array([1, 2, 5]), "flipped": flipped,
            "proxy_learn_speed": learn_speed}


def test_dynamics_groups_intervals_and_auroc() -> None:
    arrays = planted_estimates()
    columns, report = dynamics(arrays, 0.1)
    has_estimate = np.isfinite(arrays["mem"])
    clean, flipped = has_estimate & ~arrays["flipped"], has_estimate & arrays["flipped"]
    speed = arrays["proxy_learn_speed"]
    hard = clean & (speed < np.sort(speed[clean])[round(0.1 * clean.sum())])
    expected = {"clean": clean, "flipped": flipped, "hard": hard, "easy": clean & ~hard}
    assert report["group_sizes"] == {name: int(members.sum()) for name, members in expected.items()}
    assert report["group_sizes"]["hard"] == round(0.1 * clean.sum())
    for row in range(len(columns["group"])):
        members = expected[str(columns["group"][row])]
        e = [1, 2, 5].index(int(columns["epoch"][row]))
        values = arrays["mem_epoch"][e][members]
        half = 1.959963984540054 * values.std(ddof=1) / np.sqrt(values.size)
        assert columns["n"][row] == values.size
        assert columns["mean_mem"][row] == pytest.approx(values.mean())
        assert columns["ci_high"][row] - columns["mean_mem"][row] == pytest.approx(half)
    assert sorted(set(columns["group"].tolist())) == sorted(GROUPS)
    for e, epoch in enumerate([1, 2, 5]):
        mem = arrays["mem_epoch"][e]
        pairs = mem[flipped][:, None] - mem[clean][None, :]
        naive = (np.sum(pairs > 0) + 0.5 * np.sum(pairs == 0)) / pairs.size
        assert report["auroc_flipped_vs_clean"][str(epoch)] == pytest.approx(naive)
    assert report["auroc_flipped_vs_clean"]["5"] == 1.0 and 0.3 < report["auroc_flipped_vs_clean"]["1"] < 0.7


def test_dynamics_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = small_sweep(n_runs=8).write(tmp_path / "sweep")
    assert estimate_main([str(sweep_dir), "--gallery", "0"]) == 0
    assert dynamics_main([str(sweep_dir), "--hard-fraction", "0.2"]) == 0
    out = sweep_dir / "estimates" / "dynamics"
    assert sorted(path.name for path in out.iterdir()) == ["dynamics.csv", "dynamics.json", "dynamics.png"]
    with np.load(sweep_dir / "estimates" / "estimates.npz", allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in ("mem", "mem_epoch", "epoch_list", "flipped", "proxy_learn_speed")}
    columns, _ = dynamics(arrays, 0.2)
    with open(out / "dynamics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["group"] for row in rows] == columns["group"].tolist()
    np.testing.assert_allclose([float(row["mean_mem"] or "nan") for row in rows], columns["mean_mem"], rtol=1e-5,
                               equal_nan=True)
    capsys.readouterr()

    plain = Sweep(**small_sweep(n_runs=8).__dict__)
    plain.epoch_list, plain.epoch_correct = np.zeros(0, dtype=np.int64), None
    plain_dir = plain.write(tmp_path / "plain")
    assert estimate_main([str(plain_dir), "--gallery", "0"]) == 0
    capsys.readouterr()
    for args, message in (([str(plain_dir)], "no per-epoch results"), ([str(tmp_path / "none")], "no estimates.npz"),
                          ([str(sweep_dir), "--hard-fraction", "1.5"], "--hard-fraction 1.5")):
        assert dynamics_main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (plain_dir / "estimates" / "dynamics").exists()
