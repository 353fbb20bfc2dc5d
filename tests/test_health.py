"""Run health (issue 20 §1, src/estimators/subsample/health.py): the runs that did not train are named in the
printed summary and summary.json, used unless --exclude-unhealthy, whose effect is printed; the stats cache keys
on what a load left out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from src.contracts.estimates import read_estimates
from src.estimate import main
from src.estimators.subsample.cache import CACHE_NAME, EXCLUDING_CACHE_NAME
from src.estimators.subsample.health import CHANCE_SDS, MAD_TO_SD, MIN_DROP, OUTLIER_Z, binomial_sd, check_runs
from tests.test_estimate import Sweep, aggregate, assert_same_outputs, planted_sweep, rewrite

BROKEN = 5  # the seed planted at chance
N_RUNS, N_LATE = 16, 4


def healthy_sweep(n_runs: int = N_RUNS + N_LATE) -> Sweep:
    """Runs at about 95% in-subset and 85% test accuracy over 10 classes, but seed BROKEN guesses (10%)."""
    rng = np.random.default_rng(20)
    sweep = planted_sweep(200, n_runs, 100, rng, np.full(200, 0.95), np.full(200, 0.8), test_p=0.85)
    sweep.train_correct[BROKEN] = rng.random(200) < 0.1
    sweep.test_correct[BROKEN] = rng.random(100) < 0.1
    return sweep


def write_seeds(sweep: Sweep, sweep_dir: Path, seeds: range) -> Path:
    for k in seeds:
        rewrite(sweep_dir, k, sweep.record(k))
    return sweep_dir


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_a_run_at_chance_is_named_and_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = write_seeds(healthy_sweep(), tmp_path / "sweep", range(N_RUNS))
    assert aggregate(sweep_dir, tmp_path / "est") == 0
    summary = json.loads((tmp_path / "est" / "summary.json").read_text())
    health = summary["run_health"]
    assert summary["runs_used"] == N_RUNS and health["runs_checked"] == N_RUNS and not health["excluded"]
    [run] = health["unhealthy"]
    assert run["seed"] == BROKEN and [reason.split(" (")[0] for reason in run["reasons"]] == [
        f"test acc {run['test_acc']:.4f} at chance", f"in-subset train acc {run['train_in_acc']:.4f} at chance"]
    assert read_estimates(tmp_path / "est").summary["run_health"] == health  # through the contract's reader
    [line] = [line for line in printed(capsys) if "unhealthy" in line]
    assert line.startswith(f"warning: 1 of {N_RUNS} runs unhealthy (seed {BROKEN}: test acc ")
    assert line.endswith("; used in the estimate (--exclude-unhealthy leaves them out)")


def test_chance_and_outlier_limits() -> None:
    """The limits follow the module's rule: chance is the most common label's frequency plus CHANCE_SDS binomial
    SDs; a run far below the others (but above chance) is an outlier; no healthy run is flagged."""
    sweep = healthy_sweep()
    sweep.test_correct[BROKEN + 1] = np.arange(100) < 55  # 0.55: far below the others' ~0.85, far above chance
    health = check_runs(sweep.stats())
    chance = np.bincount(sweep.test_label).max() / 100
    assert health["limits"]["test_acc"]["chance"] == pytest.approx(chance + CHANCE_SDS * binomial_sd(chance, 100))
    flagged = {run["seed"]: run["reasons"] for run in health["unhealthy"]}
    assert sorted(flagged) == [BROKEN, BROKEN + 1]
    assert flagged[BROKEN + 1] == [f"test acc 0.5500 an outlier (< {health['limits']['test_acc']['outlier']:.4f}; "
                                   f"median {health['limits']['test_acc']['median']:.4f})"]


def test_a_small_drop_is_no_outlier_however_tight_the_others() -> None:
    """A run below median - OUTLIER_Z robust SDs of a tight sweep, but less than MIN_DROP of the way from the median
    to chance, is healthy: a few runs' MAD underestimates the spread of runs that trained (the golden digits sweep's
    seed 6, tests/test_golden.py)."""
    sweep = healthy_sweep()
    sweep.test_correct[BROKEN] = sweep.test_correct[0]
    sweep.train_correct[BROKEN] = sweep.train_correct[0]
    stats = sweep.stats()
    accuracies = np.asarray(stats.test_acc)
    median, chance = float(np.median(accuracies)), np.bincount(sweep.test_label).max() / 100
    scale = max(MAD_TO_SD * float(np.median(np.abs(accuracies - median))), binomial_sd(median, 100))
    low = int(np.ceil(100 * (median - MIN_DROP * (median - chance)))) + 1  # correct answers: just above the drop
    assert low / 100 < median - OUTLIER_Z * scale  # an outlier by the MAD rule alone
    sweep.test_correct[BROKEN + 1] = np.arange(100) < low
    health = check_runs(sweep.stats())
    assert health["unhealthy"] == []
    assert health["limits"]["test_acc"]["outlier"] == pytest.approx(median - MIN_DROP * (median - chance), abs=0.01)


def test_exclude_unhealthy_prints_its_effect_and_the_cache_keys_on_it(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    sweep = healthy_sweep()
    sweep_dir, used, left_out = write_seeds(sweep, tmp_path / "sweep", range(N_RUNS)), tmp_path / "all", \
        tmp_path / "healthy"
    assert aggregate(sweep_dir, used) == 0
    assert aggregate(sweep_dir, left_out, "--exclude-unhealthy") == 0
    lines = printed(capsys)
    assert any(line.startswith(f"left out 1 unhealthy run(s): runs used {N_RUNS} -> {N_RUNS - 1}, memorized ")
               for line in lines), lines
    summary = read_estimates(left_out).summary
    assert summary["runs_used"] == N_RUNS - 1 and summary["run_health"]["excluded"]
    assert BROKEN not in read_estimates(left_out).arrays["seeds"]
    assert summary["run_health"]["exclusion_effect"]["memorized"][0] == read_estimates(used).summary["memorized"]
    assert (left_out / EXCLUDING_CACHE_NAME).exists() and not (used / EXCLUDING_CACHE_NAME).exists()

    write_seeds(sweep, sweep_dir, range(N_RUNS, N_RUNS + N_LATE))  # more seeds finish: incremental updates
    for out, flags, cache_runs, cache in ((used, (), N_RUNS, CACHE_NAME),
                                          (left_out, ("--exclude-unhealthy",), N_RUNS - 1, EXCLUDING_CACHE_NAME)):
        assert aggregate(sweep_dir, out, *flags) == 0
        assert f"stats cache: {cache_runs} runs from {out / cache}, reading {N_LATE} new record files" in \
            printed(capsys)
        assert aggregate(sweep_dir, tmp_path / f"full_{out.name}", *flags, "--no-cache") == 0
        assert_same_outputs(out, tmp_path / f"full_{out.name}")
    assert read_estimates(left_out).summary["runs_used"] == N_RUNS + N_LATE - 1

    sweep.test_correct[N_RUNS] = sweep.test_correct[BROKEN]  # a late seed at chance: the excluded set changes
    sweep.train_correct[N_RUNS] = sweep.train_correct[BROKEN]
    write_seeds(sweep, sweep_dir, range(N_RUNS, N_RUNS + 1))
    assert aggregate(sweep_dir, left_out, "--exclude-unhealthy") == 0
    assert (f"stats cache: reading all {N_RUNS + N_LATE} record files (it left out seeds [{BROKEN}], this load "
            f"leaves out [{BROKEN}, {N_RUNS}])") in printed(capsys)
    assert aggregate(sweep_dir, tmp_path / "full_again", "--exclude-unhealthy", "--no-cache") == 0
    assert_same_outputs(left_out, tmp_path / "full_again")


def test_exclude_unhealthy_with_every_run_healthy_changes_nothing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    sweep = healthy_sweep()
    sweep.train_correct[BROKEN], sweep.test_correct[BROKEN] = sweep.train_correct[0], sweep.test_correct[0]
    sweep_dir = write_seeds(sweep, tmp_path / "sweep", range(N_RUNS))
    assert aggregate(sweep_dir, tmp_path / "a") == 0
    assert aggregate(sweep_dir, tmp_path / "b", "--exclude-unhealthy") == 0
    assert not any("runs unhealthy" in line or "left out" in line for line in printed(capsys))
    assert_same_outputs(tmp_path / "a", tmp_path / "b")



def test_exclude_unhealthy_is_refused_for_an_estimator_with_its_own_job(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = write_seeds(healthy_sweep(), tmp_path / "sweep", range(2))
    assert main([str(sweep_dir), "--estimator", "turnover", "--exclude-unhealthy"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --exclude-unhealthy applies to estimators that read a sweep's records, not to turnover; drop it"]
