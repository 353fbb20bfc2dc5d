"""The aggregator: calibration on planted ground truth, block-wise influence against a naive loop, the
permutation null, sweep validation, the output files, and the stats cache (an incremental update equals a
full load bit for bit; a cache that cannot be used is rebuilt)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import src.estimate
import src.estimators.subsample.cache as subsample_cache
import src.estimators.subsample.load as subsample_load
import src.estimators.subsample.scan as subsample_scan
from src.contracts.records import (
    FORMAT_VERSION,
    PROXIES,
    REQUIRED_META,
    Record,
    find_records,
    record_path,
    write_record,
)
from src.data.subsets import subset_mask
from src.errors import MeminfError, RecordError
from src.estimate import main
from src.estimators.subsample.cache import CACHE_NAME, CACHE_VERSION
from src.estimators.subsample.estimator import write_outputs
from src.estimators.subsample.influence import MB, _influence, _InfluenceBlocks, estimate, pair_influence
from src.estimators.subsample.load import load_sweep
from src.estimators.subsample.memorization import EstimateConfig
from src.estimators.subsample.stats import SweepStats
from src.estimators.subsample.summary import runs_needed, summarize
from src.reporting.gallery import gallery_size, render_gallery, write_gallery
from src.util.tables import csv_text

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# ------------------------------------------------------------------------------------------- synthetic

@dataclass
class Sweep:
    """Planted runs: C (K, n) and T (K, n_test) correctness drawn from known probabilities."""

    masks: np.ndarray  # bool (K, n)
    train_correct: np.ndarray  # bool (K, n)
    train_prob: np.ndarray  # float32 (K, n)
    test_correct: np.ndarray  # bool (K, n_test)
    train_label: np.ndarray
    test_label: np.ndarray
    ratio: float
    num_classes: int
    flipped_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    epoch_list: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    epoch_correct: np.ndarray | None = None  # bool (E, K, n) train correctness at the end of each epoch
    proxies: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float32 (K, n); learn speed: NaN'd out

    @property
    def seeds(self) -> range:
        return range(len(self.masks))

    def record(self, k: int, **meta_overrides: object) -> Record:
        wrong = (self.train_label + 1) % self.num_classes
        test_pred = np.where(self.test_correct[k], self.test_label, (self.test_label + 1) % self.num_classes)
        meta = make_meta(k, len(self.train_label), len(self.test_label), self.num_classes, self.ratio)
        meta.update(test_acc=float(self.test_correct[k].mean()),
                    train_in_acc=float(self.train_correct[k][self.masks[k]].mean()), **meta_overrides)
        return Record(
            meta=meta, subset_mask=self.masks[k], train_label=self.train_label,
            train_pred=np.where(self.train_correct[k], self.train_label, wrong),
            train_prob=self.train_prob[k], test_label=self.test_label, test_pred=test_pred,
            test_prob=np.full(len(self.test_label), 0.5, dtype=np.float32),
            flipped_idx=self.flipped_idx, flipped_orig_label=wrong[self.flipped_idx], extras=self.extras,
            epoch_list=self.epoch_list,
            epoch_train_correct=None if self.epoch_correct is None else self.epoch_correct[:, k],
            epoch_test_correct=None if self.epoch_correct is None else np.tile(self.test_correct[k],
                                                                                (len(self.epoch_list), 1)),
            proxies={name: np.where(self.masks[k], values[k], np.nan).astype(np.float32) if PROXIES[name][0]
                     else values[k] for name, values in self.proxies.items()},
        )

    def stats(self) -> SweepStats:
        stats = SweepStats.from_record(self.record(0), capacity=len(self.masks))
        for k in self.seeds[1:]:
            stats.add_record(self.record(k))
        return stats

    def write(self, sweep_dir: Path) -> Path:
        for k in self.seeds:
            write_record(record_path(sweep_dir, k), self.record(k))
        return sweep_dir


def make_meta(seed: int, n_train: int, n_test: int, num_classes: int, ratio: float) -> dict:
    meta = {
        "format_version": FORMAT_VERSION, "dataset": "synthetic", "n_train": n_train, "n_test": n_test,
        "num_classes": num_classes, "data_fingerprint": "fp0", "model": "planted", "ratio": ratio, "salt": 0,
        "epochs": 3, "seed": seed, "experiment_hash": "hash0", "experiment_name": "planted", "test_acc": 0.0,
        "train_in_acc": 0.0, "versions": {"numpy": np.__version__}, "git": {"commit": None},
        "wall_time_s": 0.0,
    }
    assert set(meta) == set(REQUIRED_META)
    return meta


def planted_sweep(n: int, n_runs: int, n_test: int, rng: np.random.Generator, p_in: np.ndarray,
                  p_out: np.ndarray, t_in: np.ndarray | None = None, t_out: np.ndarray | None = None,
                  influencer: np.ndarray | None = None, ratio: float = 0.7, num_classes: int = 10,
                  test_p: float = 0.6, soft: tuple[np.ndarray, np.ndarray] | None = None) -> Sweep:
    """Train example i is correct with p_in(i) when in the subset, p_out(i) when out. Test example j is
    correct with t_in(j) when influencer(j) is in the subset, t_out(j) when out (test_p without influencer).
    soft = (a_in, a_out): P uniform on a +- 0.15 around the side's mean. Labels are drawn first, so sweeps
    that differ only in n_runs share them."""
    train_label, test_label = rng.integers(0, num_classes, n), rng.integers(0, num_classes, n_test)
    masks = np.stack([subset_mask(seed, n, ratio) for seed in range(n_runs)])
    train_correct = rng.random((n_runs, n)) < np.where(masks, p_in, p_out)
    test_p_matrix = np.full((n_runs, n_test), test_p)
    if influencer is not None:
        test_p_matrix = np.where(masks[:, influencer], t_in, t_out)
    test_correct = rng.random((n_runs, n_test)) < test_p_matrix
    if soft is None:
        train_prob = rng.random((n_runs, n))
    else:
        train_prob = np.where(masks, *soft) + rng.uniform(-0.15, 0.15, (n_runs, n))
    return Sweep(masks=masks, train_correct=train_correct, train_prob=train_prob.astype(np.float32),
                 test_correct=test_correct, train_label=train_label, test_label=test_label, ratio=ratio,
                 num_classes=num_classes)


def small_sweep(seed: int = 0, n: int = 60, n_runs: int = 12, n_test: int = 25, ratio: float = 0.8,
                num_classes: int = 3) -> Sweep:
    """Small enough for naive loops; ratio 0.8 with 12 runs leaves a few examples never out (NaN). With
    correctness after epochs 1 and 3 (the last one the final C) and the three proxies."""
    rng = np.random.default_rng(seed)
    sweep = planted_sweep(n, n_runs, n_test, rng, rng.uniform(0.2, 1, n), rng.uniform(0, 0.8, n),
                          ratio=ratio, num_classes=num_classes)
    sweep.flipped_idx = np.array([1, 7, 30])
    sweep.extras = {"train_subpop": np.arange(n) % 5, "test_subpop": np.arange(n_test) % 5}
    add_epochs_and_proxies(sweep, rng)
    return sweep


def add_epochs_and_proxies(sweep: Sweep, rng: np.random.Generator) -> None:
    shape = sweep.masks.shape
    sweep.epoch_list = np.array([1, 3])
    sweep.epoch_correct = np.stack([rng.random(shape) < 0.5, sweep.train_correct])
    sweep.proxies = {
        "learn_speed": (rng.integers(0, 4, shape) / 3).astype(np.float32),
        "loss": rng.exponential(1.0, shape).astype(np.float32),
        "margin": rng.normal(0.0, 3.0, shape).astype(np.float32),
    }


def z_stats(z: np.ndarray) -> tuple[float, float, float]:
    return float(np.mean(z)), float(np.std(z)), float(np.mean(np.abs(z) <= 1.96))


def assert_calibrated(z: np.ndarray) -> None:
    mean, sd, coverage = z_stats(z)
    tolerance = 3 * np.sqrt(0.95 * 0.05 / z.size)
    assert abs(mean) < 0.1 and 0.9 <= sd <= 1.1 and abs(coverage - 0.95) <= tolerance, (mean, sd, coverage)


# ---------------------------------------------------------------------------------------- calibration

def test_mem_calibrated_on_planted_truth() -> None:
    rng = np.random.default_rng(1)
    n, n_all_correct = 4000, 50
    p_in = np.concatenate([rng.uniform(0.05, 0.95, n), np.ones(n_all_correct)])
    p_out = np.concatenate([rng.uniform(0.05, 0.95, n), rng.uniform(0.2, 0.8, n_all_correct)])
    soft = rng.uniform(0.2, 0.8, n + n_all_correct), rng.uniform(0.2, 0.8, n + n_all_correct)
    est = estimate(planted_sweep(n + n_all_correct, 400, 50, rng, p_in, p_out, soft=soft).stats())
    assert_calibrated(((est.mem - (p_in - p_out)) / est.mem_se)[:n])
    assert_calibrated(((est.mem_soft - (soft[0] - soft[1])) / est.mem_soft_se)[:n])
    all_correct = slice(n, None)
    assert np.all(est.acc_in[all_correct] == 1) and np.all(est.mem_se[all_correct] > 0.005)


def test_infl_calibrated_on_planted_influence() -> None:
    rng = np.random.default_rng(2)
    n, n_test = 400, 1500
    influencer = rng.integers(0, n, n_test)
    t_in, t_out = rng.uniform(0.05, 0.95, n_test), rng.uniform(0.05, 0.95, n_test)
    sweep = planted_sweep(n, 400, n_test, rng, np.full(n, 0.9), np.full(n, 0.5), t_in, t_out, influencer)
    infl, infl_se = pair_influence(sweep.stats(), influencer, np.arange(n_test))
    assert_calibrated((infl - (t_in - t_out)) / infl_se)


# ------------------------------------------------------------------------------ block-wise vs naive

def naive_influence(sweep: Sweep) -> np.ndarray:
    n, n_test = sweep.masks.shape[1], sweep.test_correct.shape[1]
    infl = np.full((n, n_test), np.nan)
    for i in range(n):
        inside = sweep.masks[:, i]
        if inside.all() or not inside.any():
            continue
        for j in range(n_test):
            infl[i, j] = sweep.test_correct[inside, j].mean() - sweep.test_correct[~inside, j].mean()
    return infl


def naive_agresti_caffo(sweep: Sweep, i: int, j: int) -> float:
    inside = sweep.masks[:, i]
    sides = [sweep.test_correct[inside, j], sweep.test_correct[~inside, j]]
    p = [(side.sum() + 1) / (side.size + 2) for side in sides]
    return float(np.sqrt(sum(pk * (1 - pk) / (side.size + 2) for pk, side in zip(p, sides, strict=True))))


@pytest.mark.parametrize("block_mb", [0.0005, 0.004, 64])
def test_blockwise_influence_equals_naive(tmp_path: Path, block_mb: float) -> None:
    sweep = small_sweep()
    stats = sweep.stats()
    config = EstimateConfig(theta_mem=0.1, theta_infl=0.1, top_k=4, block_mb=block_mb)
    calls: list[tuple[int, int]] = []
    est = estimate(stats, config, dense_dir=tmp_path, progress=lambda done, total: calls.append((done, total)))
    write_outputs(tmp_path, stats, est, summarize(stats, est, []))
    naive = naive_influence(sweep)
    done = [d for d, _ in calls]  # one progress call per block, ending with every training example
    assert done == sorted(set(done)) and calls[-1] == (stats.n_train, stats.n_train)
    assert (len(calls) > 1) == (block_mb < 1)
    assert np.isnan(naive).any(axis=1).sum() >= 2, "the fixture should have examples without an estimate"
    dense = np.load(tmp_path / "influence.npy")
    np.testing.assert_allclose(dense, naive, atol=1e-6)

    for j in range(naive.shape[1]):
        column = np.where(np.isnan(naive[:, j]), -np.inf, naive[:, j])
        np.testing.assert_allclose(est.topk_infl[j], np.sort(column)[::-1][:4], atol=1e-6)
        np.testing.assert_allclose(naive[est.topk_idx[j], j], est.topk_infl[j], atol=1e-6)
        # Exact order of the float32 values, ties (many at K = 12) to the lower train index, any block size.
        by_value_then_index = np.lexsort((np.arange(len(dense)), -np.nan_to_num(dense[:, j], nan=-np.inf)))
        np.testing.assert_array_equal(est.topk_idx[j], by_value_then_index[:4])

    mem = est.mem
    expected = {(i, j) for i, j in zip(*np.nonzero(naive >= 0.1 - 1e-6), strict=True)
                if mem[i] >= 0.1 and sweep.train_label[i] == sweep.test_label[j]}
    found = set(zip(est.pairs.train_idx.tolist(), est.pairs.test_idx.tolist(), strict=True))
    assert found == expected and found
    assert np.all(np.diff(est.pairs.infl) <= 0)
    np.testing.assert_allclose(est.pairs.infl, naive[est.pairs.train_idx, est.pairs.test_idx], atol=1e-6)
    np.testing.assert_allclose(est.pairs.infl_se, [naive_agresti_caffo(sweep, i, j) for i, j in
                                                   zip(est.pairs.train_idx, est.pairs.test_idx, strict=True)])
    direct, _ = pair_influence(stats, est.pairs.train_idx, est.pairs.test_idx)
    np.testing.assert_allclose(direct, est.pairs.infl, atol=1e-6)


def test_block_working_set_stays_within_block_mb() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    stats = planted_sweep(n, 200, 500, rng, rng.uniform(0.05, 0.95, n), rng.uniform(0.05, 0.95, n)).stats()
    config = EstimateConfig(block_mb=2)
    est = estimate(stats, config)
    blocks = _InfluenceBlocks(stats, est.mem, config)
    assert blocks.block_rows < n / 4
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    _influence(stats, blocks, config, None)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert peak <= config.block_mb * MB, peak / MB


def test_never_left_out_has_no_estimate() -> None:
    sweep = small_sweep(seed=4)
    never_out = sweep.masks.all(axis=0)
    assert never_out.any()
    tiny = 1e-12  # the smallest thresholds: every example and pair with a positive estimate qualifies
    est = estimate(sweep.stats(), EstimateConfig(theta_mem=tiny, theta_infl=tiny))
    for values in (est.mem, est.mem_se, est.mem_soft, est.mem_soft_se, est.acc_out):
        assert np.all(np.isnan(values[never_out]))
    assert not np.isnan(est.mem[~never_out]).any()
    assert not np.isin(est.pairs.train_idx, np.flatnonzero(never_out)).any()
    assert not np.isin(est.topk_idx, np.flatnonzero(never_out)).any()


# ------------------------------------------------------------------------------------ permutation null

def null_sweep(planted: bool, seed: int = 5) -> Sweep:
    """60 memorized train examples (mem ~ 0.6); with `planted`, each sets 8 same-class test examples."""
    rng = np.random.default_rng(seed)
    n, n_test, memorized = 600, 500, 60
    p_in, p_out = np.full(n, 0.7), np.full(n, 0.7)
    p_in[:memorized], p_out[:memorized] = 0.95, 0.35
    influencer = np.repeat(np.arange(memorized), 8)
    influencer = np.concatenate([influencer, rng.integers(memorized, n, n_test - influencer.size)])
    t_in = np.where(influencer < memorized, 0.9, 0.6) if planted else np.full(n_test, 0.6)
    sweep = planted_sweep(n, 400, n_test, rng, p_in, p_out, t_in, np.full(n_test, 0.6), influencer,
                          num_classes=5)
    sweep.test_label = sweep.train_label[influencer]
    return sweep


def test_null_matches_real_without_influence() -> None:
    est = estimate(null_sweep(planted=False).stats(), EstimateConfig(theta_infl=0.12, null_perms=4))
    real, null = est.pairs.infl.size, np.mean(est.null_pair_counts)
    assert null > 5 and 0.5 * null <= real <= 2 * null, (real, est.null_pair_counts)


def test_planted_influence_far_above_null() -> None:
    est = estimate(null_sweep(planted=True).stats(), EstimateConfig(null_perms=2))
    real, null = est.pairs.infl.size, np.mean(est.null_pair_counts)
    assert real >= 450 and real > 5 * null + 20, (real, est.null_pair_counts)


# -------------------------------------------------------------------------------------------- loading

def rewrite(sweep_dir: Path, seed: int, record: Record) -> Path:
    return write_record(record_path(sweep_dir, seed), record)


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    return small_sweep(n_runs=8).write(tmp_path / "sweep")


@pytest.mark.parametrize(("field_name", "overrides"), [
    ("data_fingerprint", {"data_fingerprint": "other"}),
    ("ratio", {"ratio": 0.5}),
    ("experiment_hash", {"experiment_hash": "hash1"}),
    ("train_label", {}),
])
def test_foreign_record_excluded_and_reported_once(sweep_dir: Path, field_name: str, overrides: dict) -> None:
    sweep = small_sweep()
    if field_name == "ratio":
        sweep.masks[0] = subset_mask(100, sweep.masks.shape[1], 0.5)
    if field_name == "train_label":
        sweep.train_label = (sweep.train_label + 1) % sweep.num_classes
    path = rewrite(sweep_dir, 100, sweep.record(0, seed=100, **overrides))
    stats, problems = load_sweep(sweep_dir)
    assert stats.n_runs == 8 and 100 not in stats.seeds
    assert [problem.file for problem in problems] == [str(path)]
    assert field_name in problems[0].reason
    with pytest.raises(RecordError, match=field_name):
        load_sweep(sweep_dir, strict=True)


def test_largest_group_wins_ties_go_to_first_file(tmp_path: Path) -> None:
    sweep = small_sweep(n_runs=4)
    for k in sweep.seeds:  # seeds 0, 1 in hash0, 2, 3 in hash1: a tie
        rewrite(tmp_path, k, sweep.record(k, experiment_hash="hash0" if k < 2 else "hash1"))
    stats, problems = load_sweep(tmp_path)
    assert stats.meta["experiment_hash"] == "hash0" and sorted(stats.seeds) == [0, 1] and len(problems) == 2
    rewrite(tmp_path, 4, small_sweep(n_runs=5).record(4, experiment_hash="hash1"))
    stats, problems = load_sweep(tmp_path)
    assert stats.meta["experiment_hash"] == "hash1" and sorted(stats.seeds) == [2, 3, 4]
    assert len(problems) == 2


def test_identical_duplicate_kept_once(sweep_dir: Path) -> None:
    copy = sweep_dir / "copy" / "seed=3" / "record.npz"
    copy.parent.mkdir(parents=True)
    shutil.copy(record_path(sweep_dir, 3), copy)
    stats, problems = load_sweep(sweep_dir)
    assert problems == [] and stats.n_runs == 8 and stats.seeds.count(3) == 1
    assert len(stats.identical_duplicates) == 1


def test_differing_duplicate_excludes_every_copy(sweep_dir: Path) -> None:
    other = small_sweep()
    other.train_correct[3] = ~other.train_correct[3]
    copy = write_record(sweep_dir / "copy" / "seed=3" / "record.npz", other.record(3))
    stats, problems = load_sweep(sweep_dir)
    assert stats.n_runs == 7 and 3 not in stats.seeds
    assert sorted(problem.file for problem in problems) == sorted([str(copy), str(record_path(sweep_dir, 3))])
    assert all("seed 3" in problem.reason for problem in problems)


def test_mask_not_of_its_seed_reported(sweep_dir: Path) -> None:
    sweep = small_sweep()
    sweep.masks[0] = subset_mask(101, sweep.masks.shape[1], sweep.ratio)
    path = rewrite(sweep_dir, 100, sweep.record(0, seed=100))
    stats, problems = load_sweep(sweep_dir)
    assert stats.n_runs == 8 and problems == [(str(path), problems[0].reason)]
    assert "subset_mask" in problems[0].reason


def test_unreadable_record_reported_once(sweep_dir: Path) -> None:
    broken = record_path(sweep_dir, 50)
    broken.parent.mkdir()
    broken.write_bytes(b"")
    stats, problems = load_sweep(sweep_dir)
    assert stats.n_runs == 8 and [problem.file for problem in problems] == [str(broken)]


def test_no_usable_record_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(MeminfError, match=r"no record\.npz"):
        load_sweep(tmp_path)
    broken = record_path(tmp_path, 0)
    broken.parent.mkdir()
    broken.write_bytes(b"not a zip")
    with pytest.raises(MeminfError, match="no usable record"):
        load_sweep(tmp_path)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "src.estimate", *map(str, args)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["empty", "missing", "strict"])
def test_cli_errors_exit_2_and_write_nothing(tmp_path: Path, case: str) -> None:
    sweep = tmp_path / "sweep"
    if case == "empty":
        sweep.mkdir()
    if case == "strict":
        small_sweep(n_runs=4).write(sweep)
        rewrite(sweep, 100, small_sweep().record(0, seed=100, data_fingerprint="other"))
    result = run_cli(sweep, "--out", tmp_path / "out", *(["--strict"] if case == "strict" else []))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------- outputs

def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def csv_floats(rows: list[dict[str, str]], column: str) -> np.ndarray:
    return np.array([float(row[column]) if row[column] else np.nan for row in rows])


def test_outputs_written_and_consistent(sweep_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    stats, problems = load_sweep(sweep_dir)
    est = estimate(stats, EstimateConfig(theta_mem=0.1, theta_infl=0.1), dense_dir=out)
    summary = summarize(stats, est, problems)
    images = np.random.default_rng(0).random((stats.n_train, 3, 16, 16))
    order = np.argsort(-np.nan_to_num(est.mem, nan=-9))[:10]
    png = render_gallery(images[order], order, stats.train_label, stats.orig_label, est.mem, est.mem_se)
    write_outputs(out, stats, est, summary, png)
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["estimates.npz", "memorization.csv", "pairs.csv", "summary.json", "gallery.png", "influence.npy"])

    with np.load(out / "estimates.npz", allow_pickle=False) as arrays:
        np.testing.assert_array_equal(arrays["mem"], est.mem)
        assert json.loads(str(arrays["summary"][()])) == {**summary, "estimates_format": 1}
        assert arrays["flipped"].sum() == 3 and arrays["seeds"].size == 8
        np.testing.assert_array_equal(arrays["topk_idx"], est.topk_idx)
        mem, pair_train_idx = arrays["mem"], arrays["pair_train_idx"]

    header, rows = read_csv(out / "memorization.csv")
    assert header == ["index", "label", "orig_label", "flipped", "mem", "mem_se", "mem_soft", "mem_soft_se",
                      "n_in", "n_out", "acc_in", "acc_out", "train_subpop", "proxy_learn_speed", "proxy_loss",
                      "proxy_margin"]
    np.testing.assert_allclose(csv_floats(rows, "mem"), mem, rtol=1e-5, equal_nan=True)
    assert [row["flipped"] for row in rows if row["flipped"] == "1"] == ["1"] * 3
    assert any(row["mem"] == "" for row in rows)

    header, rows = read_csv(out / "pairs.csv")
    assert header == ["test_index", "train_index", "label", "infl", "infl_se", "mem", "influencers_of_test"]
    assert [int(row["train_index"]) for row in rows] == pair_train_idx.tolist() and rows
    assert np.all(np.diff(csv_floats(rows, "infl")) <= 0)

    saved = json.loads((out / "summary.json").read_text())
    assert saved == {**summary, "estimates_format": 1} and saved["runs_used"] == 8 and saved["pairs"] == len(rows)
    assert saved["examples_without_estimate"] == int(np.isnan(mem).sum()) > 0
    assert saved["frac_mem_ge_0.25"] == pytest.approx(np.mean(mem[~np.isnan(mem)] >= 0.25))
    assert saved["test_with_one_influencer"] == sum(row["influencers_of_test"] == "1" for row in rows)
    assert saved["train_in_acc_warning"] is not None
    target = saved["runs_needed"]["targets"][0]  # ratio 0.8: 1/r + 1/(1-r) = 6.25
    assert (target["se"], target["plug_in_runs"], target["paper_bound_runs"]) == (0.05, 625, 2500)

    assert matplotlib.image.imread(out / "gallery.png").shape[:2] == gallery_size(10)


def test_runs_needed_reproduces_paper_bound() -> None:
    assert runs_needed(0.7, 4000)["worst_case_se_now"]["paper_bound"] == pytest.approx(0.0345, abs=5e-4)
    assert runs_needed(0.7, 2000)["worst_case_se_now"]["paper_bound"] == pytest.approx(0.0488, abs=5e-4)
    assert runs_needed(0.7, 4000)["worst_case_se_now"]["plug_in"] == pytest.approx(0.0173, abs=5e-4)


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 224)])
def test_gallery_sizes(tmp_path: Path, channels: int, size: int) -> None:
    images = np.random.default_rng(0).random((5, channels, size, size))
    labels = np.arange(5)
    path = write_gallery(tmp_path / "gallery.png", images[::-1], np.arange(5)[::-1], labels, (labels + 1) % 5,
                         np.linspace(0, 1, 5), np.full(5, 0.05), class_names=[f"class {c}" for c in range(5)])
    assert matplotlib.image.imread(path).shape[:2] == gallery_size(5)
    with pytest.raises(MeminfError, match="channels"):
        render_gallery(np.zeros((2, 2, 8, 8)), np.arange(2), labels, labels, np.zeros(5), np.zeros(5))
    with pytest.raises(MeminfError, match="gallery images for"):
        render_gallery(np.zeros((3, 1, 8, 8)), np.arange(2), labels, labels, np.zeros(5), np.zeros(5))


def test_cli_end_to_end(sweep_dir: Path) -> None:
    broken = record_path(sweep_dir, 50)
    broken.parent.mkdir()
    broken.write_bytes(b"")
    result = run_cli(sweep_dir, "--theta-mem", "0.1", "--null-perms", "1")
    assert result.returncode == 0, result.stderr
    out = sweep_dir / "estimates"
    assert {"estimates.npz", "memorization.csv", "pairs.csv", "summary.json", "influence.npy"} <= {
        path.name for path in out.iterdir()}
    assert not list(out.glob("*.tmp.*"))
    assert result.stdout.count(f"skipped {broken}:") == 1
    assert "gallery skipped" in result.stdout and str(out) in result.stdout
    assert json.loads((out / "summary.json").read_text())["problems_excluded"] == 1


def test_cli_gallery_and_dense_cap(sweep_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    class GreyImages:
        problem = dataset = None

        def get(self, split: str, indices: np.ndarray) -> np.ndarray:
            return np.full((len(indices), 1, 8, 8), 0.5)

    monkeypatch.setattr(src.estimate, "sweep_images", lambda sweep_dir, summary: GreyImages())
    out = sweep_dir / "estimates"
    assert main([str(sweep_dir), "--gallery", "12"]) == 0
    assert matplotlib.image.imread(out / "gallery.png").shape[:2] == gallery_size(12)
    assert (out / "influence.npy").exists() and "gallery skipped" not in capsys.readouterr().out
    assert main([str(sweep_dir), "--dense-cap-mb", "0", "--gallery", "0"]) == 0
    assert not (out / "influence.npy").exists()
    assert json.loads((out / "summary.json").read_text())["influence_npy"] is False


def test_add_record_updates_like_a_full_load() -> None:
    sweep = small_sweep()
    stats = SweepStats.from_record(sweep.record(0))
    for k in sweep.seeds[1:-1]:
        stats.add_record(sweep.record(k))
    stats.add_record(sweep.record(sweep.seeds[-1]))
    np.testing.assert_array_equal(estimate(stats).mem, estimate(sweep.stats()).mem)
    with pytest.raises(RecordError, match="already in the sweep"):
        stats.add_record(sweep.record(3))
    with pytest.raises(RecordError, match="ratio"):
        stats.add_record(sweep.record(0, seed=200, ratio=0.5))


def test_estimates_do_not_depend_on_run_order() -> None:
    sweep = small_sweep(n_runs=12)
    in_order = sweep.stats()
    shuffled = SweepStats.from_record(sweep.record(7))
    for k in (3, 11, 0, 9, 1, 10, 4, 6, 2, 8, 5):
        shuffled.add_record(sweep.record(k))
    for name in ("n_in", "hard_in", "hard_all", "soft_in", "soft_all", "soft_in_sq", "soft_all_sq",
                 "epoch_hard_in", "epoch_hard_all"):
        assert getattr(shuffled, name).tobytes() == getattr(in_order, name).tobytes(), name
    assert shuffled.proxy_sums.keys() == in_order.proxy_sums.keys() == {"learn_speed", "loss", "margin"}
    for name, sums in in_order.proxy_sums.items():
        assert shuffled.proxy_sums[name].tobytes() == sums.tobytes(), name
    shuffled.sort_by_seed()
    assert shuffled.seeds == list(range(12)) and shuffled.meta["seed"] == 0
    config = EstimateConfig(theta_mem=0.1, theta_infl=0.1, null_perms=3)
    a, b = estimate(shuffled, config), estimate(in_order, config)
    assert a.null_pair_counts == b.null_pair_counts
    for name in ("mem", "mem_se", "mem_soft", "mem_soft_se", "topk_idx", "topk_infl", "mem_epoch"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert a.pairs.infl.tobytes() == b.pairs.infl.tobytes() and a.pairs.infl.size > 0


# ------------------------------------------------------------------------------------------ stats cache

OUTPUT_FILES = ("memorization.csv", "pairs.csv", "summary.json", "influence.npy")
CLI_ARGS = ("--theta-mem", "0.1", "--theta-infl", "0.1", "--null-perms", "2", "--gallery", "0")


def assert_same_npz(path_a: Path, path_b: Path) -> None:
    """Same members with the same dtype, shape and bytes."""
    with np.load(path_a, allow_pickle=False) as a, np.load(path_b, allow_pickle=False) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            x, y = a[key], b[key]
            assert (x.dtype, x.shape, x.tobytes()) == (y.dtype, y.shape, y.tobytes()), key


def assert_same_outputs(out_a: Path, out_b: Path) -> None:
    assert_same_npz(out_a / "estimates.npz", out_b / "estimates.npz")
    for name in OUTPUT_FILES:
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name


def aggregate(sweep_dir: Path, out: Path, *flags: str) -> int:
    return main([str(sweep_dir), "--out", str(out), *CLI_ARGS, *flags])


def cache_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("stats cache:")]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """(function, path) of every record the loader reads in full (read_checked) or in part (read_file_info)."""
    seen: list[tuple[str, Path]] = []

    def spy_on(name: str) -> None:
        original = getattr(subsample_scan, name)

        def spy(path: Path) -> object:
            seen.append((name, Path(path)))
            return original(path)
        for module in (subsample_scan, subsample_load, subsample_cache):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, spy)

    spy_on("read_checked")
    spy_on("read_file_info")
    return seen


def test_incremental_update_equals_full_load(tmp_path: Path, reads: list[tuple[str, Path]],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    sweep, late = small_sweep(n_runs=12), (2, 5, 9)  # seeds interleaved with the cached ones
    sweep_dir, out = tmp_path / "sweep", tmp_path / "incremental"
    for k in sweep.seeds:
        if k not in late:
            rewrite(sweep_dir, k, sweep.record(k))
    copy = sweep_dir / "zz_copy" / "seed=3" / "record.npz"  # an identical copy: cached, not read again
    copy.parent.mkdir(parents=True)
    shutil.copy(record_path(sweep_dir, 3), copy)
    assert aggregate(sweep_dir, out) == 0
    assert cache_lines(capsys) == [f"stats cache: reading all 10 record files (no {out / CACHE_NAME} yet)"]

    new = {record_path(sweep_dir, k) for k in late}
    for k in late:
        rewrite(sweep_dir, k, sweep.record(k))
    reads.clear()
    assert aggregate(sweep_dir, out) == 0
    assert cache_lines(capsys) == [f"stats cache: 9 runs from {out / CACHE_NAME}, reading 3 new record files"]
    assert {path for name, path in reads if name == "read_checked"} == new
    identity_checks = [path for name, path in reads if name == "read_file_info" and path not in new]
    assert identity_checks == [record_path(sweep_dir, 0)]

    full = tmp_path / "full"
    assert aggregate(sweep_dir, full) == 0
    assert_same_outputs(out, full)
    assert_same_npz(out / CACHE_NAME, full / CACHE_NAME)
    with np.load(out / CACHE_NAME, allow_pickle=False) as cache:
        assert json.loads(str(cache["cache"][()]))["cache_version"] == CACHE_VERSION
        assert cache["file_path"].tolist()[-1] == "zz_copy/seed=3/record.npz" and not cache["file_used"][-1]
        assert cache["seeds"].tolist() == list(range(12))

    written = (out / CACHE_NAME).stat().st_mtime_ns
    reads.clear()
    assert aggregate(sweep_dir, out) == 0
    assert [name for name, _ in reads] == ["read_file_info"]
    assert (out / CACHE_NAME).stat().st_mtime_ns == written  # nothing new: the cache is not rewritten


def damage_cache(cache: Path, case: str, tmp_path: Path) -> None:
    if case == "corrupted":
        cache.write_bytes(cache.read_bytes()[:200])
    if case == "npy_file":
        with open(cache, "wb") as handle:
            np.save(handle, np.zeros(3))
    if case == "damaged":
        np.savez(cache, cache=np.array(json.dumps({"cache_version": CACHE_VERSION})))
    if case == "old_version":
        with np.load(cache, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        header = json.loads(str(arrays["cache"][()]))
        arrays["cache"] = np.array(json.dumps({**header, "cache_version": CACHE_VERSION - 1}))
        np.savez(cache, **arrays)
    if case == "foreign":
        other = small_sweep(seed=1, n_runs=8)
        other_dir = tmp_path / "other"
        for k in other.seeds:
            rewrite(other_dir, k, other.record(k, data_fingerprint="fp1"))
        assert aggregate(other_dir, tmp_path / "other_out") == 0
        shutil.copy(tmp_path / "other_out" / CACHE_NAME, cache)


def change_records(sweep_dir: Path, case: str) -> None:
    sweep = small_sweep(n_runs=8)
    if case == "deleted":
        record_path(sweep_dir, 3).unlink()
    if case in ("modified", "differing_copy"):
        sweep.train_correct[3] = ~sweep.train_correct[3]
        path = record_path(sweep_dir, 3) if case == "modified" else sweep_dir / "copy" / "seed=3" / "record.npz"
        write_record(path, sweep.record(3))
    if case == "other_group":  # more records of another experiment than in the cached sweep
        for k in range(100, 109):
            rewrite(sweep_dir, k, small_sweep(n_runs=109).record(k, experiment_hash="hash1"))


CACHE_CASES = {
    "deleted": "is gone", "modified": "changed", "differing_copy": "no longer used",
    "other_group": "another sweep than the cached", "foreign": "written for another sweep: data_fingerprint",
    "corrupted": "is unreadable", "npy_file": "is unreadable (TypeError", "damaged": "is damaged",
    "old_version": f"cache format {CACHE_VERSION - 1}",
    "no_cache": "--no-cache",
}


@pytest.mark.parametrize("case", CACHE_CASES)
def test_cache_that_cannot_be_used_is_rebuilt(tmp_path: Path, case: str, reads: list[tuple[str, Path]],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir, out = small_sweep(n_runs=8).write(tmp_path / "sweep"), tmp_path / "out"
    assert aggregate(sweep_dir, out) == 0
    damage_cache(out / CACHE_NAME, case, tmp_path)
    change_records(sweep_dir, case)
    capsys.readouterr()
    reads.clear()
    assert aggregate(sweep_dir, out, *(["--no-cache"] if case == "no_cache" else [])) == 0
    lines = cache_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("stats cache: reading all") and CACHE_CASES[case] in lines[0]
    other_group = {record_path(sweep_dir, k) for k in range(100, 109)}
    sweep_files = other_group if case == "other_group" else set(find_records(sweep_dir))
    assert {path for name, path in reads if name == "read_checked"} == sweep_files

    full = tmp_path / "full"
    assert aggregate(sweep_dir, full) == 0
    assert_same_outputs(out, full)
    assert_same_npz(out / CACHE_NAME, full / CACHE_NAME)
    capsys.readouterr()
    assert aggregate(sweep_dir, out) == 0  # the rewritten cache is used again
    runs = json.loads((full / "summary.json").read_text())["runs_used"]
    assert cache_lines(capsys)[0].startswith(f"stats cache: {runs} runs from")


def test_problems_reported_on_every_run(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = record_path(sweep_dir, 50)
    broken.parent.mkdir()
    broken.write_bytes(b"")
    foreign = rewrite(sweep_dir, 100, small_sweep().record(0, seed=100, data_fingerprint="other"))
    for run in range(2):
        assert main([str(sweep_dir), *CLI_ARGS]) == 0
        out = capsys.readouterr().out
        assert out.count(f"skipped {broken}:") == 1 and out.count(f"skipped {foreign}:") == 1
        assert ("stats cache: 8 runs from" in out) == (run == 1)
        assert json.loads((sweep_dir / "estimates" / "summary.json").read_text())["problems_excluded"] == 2


def test_csv_text_quotes_paths_that_hold_separators() -> None:
    import csv
    import io

    paths = np.array(["train/a/1.png", 'train/b,c/"2".png', "train/d\n3.png"])
    text = csv_text({"index": np.arange(3), "path": paths, "mem": np.array([0.5, np.nan, 1.0])})
    assert list(csv.reader(io.StringIO(text))) == [
        ["index", "path", "mem"], ["0", "train/a/1.png", "0.5"], ["1", 'train/b,c/"2".png', ""],
        ["2", "train/d\n3.png", "1"]]


def test_record_in_another_seeds_directory_named_and_not_used(sweep_dir: Path, tmp_path: Path) -> None:
    """Issue 20 §4: seed 2's record copied over seed=1/ (8 files, 7 seeds): the copy is named and left out, seed 2
    is used once; an identical copy elsewhere is named too."""
    misplaced = record_path(sweep_dir, 1)
    shutil.copy(record_path(sweep_dir, 2), misplaced)
    nested = sweep_dir / "backup" / "seed=3" / "record.npz"
    nested.parent.mkdir(parents=True)
    shutil.copy(record_path(sweep_dir, 3), nested)
    stats, problems = load_sweep(sweep_dir)
    assert sorted(stats.seeds) == [0, 2, 3, 4, 5, 6, 7]
    assert problems == [(str(misplaced), "holds the record of seed 2 in the directory of seed 1; move it to seed=2/ "
                                         "or delete it")]
    assert str(record_path(sweep_dir, 3)) in stats.paths
    out = tmp_path / "est"
    result = run_cli(sweep_dir, "--out", out, "--gallery", "0")
    assert result.returncode == 0, result.stderr
    assert f"skipped {misplaced}: holds the record of seed 2 in the directory of seed 1" in result.stdout
    assert ("duplicate backup/seed=3/record.npz: an identical copy of seed 3's record seed=3/record.npz; used once"
            in result.stdout)
    assert "7 runs (1 skipped, 1 identical copy used once)" in result.stdout
    rerun = run_cli(sweep_dir, "--out", out, "--gallery", "0")  # from the stats cache
    assert "stats cache: 7 runs" in rerun.stdout and f"skipped {misplaced}" in rerun.stdout, rerun.stdout
    assert "duplicate backup/seed=3/record.npz" in rerun.stdout
