"""Split-half reliability (src/estimators/subsample/reliability.py): each half is the estimate of a sweep of its
runs, the counts behind it survive the stats cache, and the projection and the SE calibration hold on planted
truth. Convergence (python -m src.convergence): its rows are the agreement of the first K runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.contracts.records import record_path, write_record
from src.estimators.subsample.influence import estimate
from src.estimators.subsample.load import load_sweep
from src.estimators.subsample.memorization import EstimateConfig, memorization
from src.estimators.subsample.projection import runs_for, spearman_brown
from src.estimators.subsample.reliability import (
    HALVINGS,
    PROJECTION_REACH,
    format_reliability,
    half_estimates,
    split_half,
)
from src.estimators.subsample.stats import RELIABILITY_GROUPS, SweepStats
from src.util.stats import pearson
from tests.test_estimate import Sweep, null_sweep, planted_sweep


def stats_of(sweep: Sweep, seeds: list[int]) -> SweepStats:
    stats = SweepStats.from_record(sweep.record(seeds[0]), capacity=len(seeds))
    for seed in seeds[1:]:
        stats.add_record(sweep.record(seed))
    return stats


@pytest.mark.parametrize("groups", HALVINGS)
def test_each_half_is_the_estimate_of_a_sweep_of_its_runs(groups: frozenset[int]) -> None:
    sweep = null_sweep(planted=True)
    config = EstimateConfig(null_perms=0)
    halves = half_estimates(sweep.stats(), config, groups)
    in_a = [seed for seed in sweep.seeds if seed % RELIABILITY_GROUPS in groups]
    for half, seeds in zip(halves, (in_a, [seed for seed in sweep.seeds if seed not in in_a]), strict=True):
        alone = stats_of(sweep, seeds)
        naive = memorization(alone)
        est = estimate(alone, config)
        assert half.runs == len(seeds)
        np.testing.assert_array_equal(half.mem, naive["mem"])
        np.testing.assert_array_equal(half.mem_se, naive["mem_se"])
        assert len(est.pairs.infl) > 0
        np.testing.assert_array_equal(np.sort(half.pair_keys), np.sort(est.pairs.train_idx * sweep.test_label.size
                                                                       + est.pairs.test_idx))


def test_group_counts_do_not_depend_on_order_and_stay_incremental_through_the_cache(tmp_path: Path) -> None:
    sweep = null_sweep(planted=False)
    forward = sweep.stats()
    backward = stats_of(sweep, list(reversed(sweep.seeds)))
    np.testing.assert_array_equal(forward.group_sums, backward.group_sums)
    np.testing.assert_array_equal(forward.group_sums.sum(axis=0)[0], forward.n_in)
    np.testing.assert_array_equal(forward.group_sums.sum(axis=0)[2], forward.hard_all)
    cache = tmp_path / "stats.npz"
    for seed in sweep.seeds[:100]:
        write_record(record_path(tmp_path, seed), sweep.record(seed))
    load_sweep(tmp_path, cache_path=cache)
    for seed in sweep.seeds[100:]:
        write_record(record_path(tmp_path, seed), sweep.record(seed))
    lines: list[str] = []
    added, _ = load_sweep(tmp_path, cache_path=cache, notify=lines.append)
    assert "300" in lines[0]  # only the new records were read
    assert added.group_sums.dtype == np.uint32
    np.testing.assert_array_equal(added.group_sums, forward.group_sums)


def test_spearman_brown_and_runs_for_invert_each_other() -> None:
    for r in (0.2, 0.5, 0.9):
        runs = runs_for(r, half_runs=50, target=0.95)
        assert spearman_brown(r, runs / 50) == pytest.approx(0.95)
    assert runs_for(0.0, 50, 0.9) is None
    assert spearman_brown(0.5, 1) == pytest.approx(0.5)


def planted(n_runs: int, seed: int = 3) -> Sweep:
    """Examples whose correctness is a coin of known bias either side: p_in in [0.35, 0.9], mem in [0, 0.3]."""
    rng = np.random.default_rng(seed)
    n = 3000
    p_in = rng.uniform(0.35, 0.9, n)
    return planted_sweep(n, n_runs, 20, rng, p_in, p_in - rng.uniform(0, 0.3, n))


def test_projection_predicts_the_pearson_of_an_independent_sweep() -> None:
    """The Pearson that the split-half of runs 0..63 projects for two 64-run sweeps against the measured Pearson
    of runs 0..63 with runs 64..127 (independent subsets, same planted truth)."""
    sweep = planted(128)
    first, second = stats_of(sweep, list(range(64))), stats_of(sweep, list(range(64, 128)))
    projected = split_half(first, EstimateConfig(null_perms=0))["projection"]["pearson"]["with_independent_sweep"]
    measured = pearson(memorization(first)["mem"], memorization(second)["mem"])
    print(f"projected {projected:.4f}, measured {measured:.4f}")
    assert 0.3 < measured < 0.9  # far from 0 and 1: the projection is tested where it matters
    assert projected == pytest.approx(measured, abs=0.03)


def test_se_calibration_near_nominal_on_planted_truth() -> None:
    reliability = split_half(planted(400).stats(), EstimateConfig(null_perms=0))
    print({key: reliability[key] for key in ("se_calibration", "se_calibration_non_trivial")})
    assert 0.93 <= reliability["se_calibration"] <= 0.97
    assert len(reliability["halvings"]) == len(HALVINGS)
    assert all(halving["runs"] == [200, 200] for halving in reliability["halvings"])


def test_too_few_runs_for_halves_gives_no_projection() -> None:
    reliability = split_half(planted(3).stats(), EstimateConfig(null_perms=0))
    assert reliability["halvings"] == [] and reliability["projection"] is None


def test_a_sweep_too_small_for_halves_says_why_it_has_no_reliability() -> None:
    line = format_reliability(split_half(planted(2).stats(), EstimateConfig(null_perms=0)))
    assert line.startswith("split-half reliability: none (2 runs:") and "at least 4 runs" in line


def test_projections_print_reasons_not_absurd_or_missing_numbers() -> None:
    """A "runs for 0.9" beyond PROJECTION_REACH times the sweep is said to be beyond it; a projection without a
    fit says why, never `about n/a runs`."""
    reliability = split_half(planted(16).stats(), EstimateConfig(null_perms=0))
    projection = reliability["projection"]
    projection["jaccard_memorized"].update(with_independent_sweep=0.436, runs_for_target=3718474)
    projection["spearman_non_trivial"].update(with_independent_sweep=None, runs_for_target=None)
    line = format_reliability(reliability)
    print(line)
    assert "3718474" not in line and "n/a runs" not in line
    assert f"Jaccard memorized 0.436 (0.9 beyond {PROJECTION_REACH * 16} runs" in line
    assert "Spearman not projected (its agreements at K/8, K/4, K/2 do not grow within (0, 1))" in line
    projection["pearson"]["runs_for_target"] = PROJECTION_REACH * 16
    assert f"(about {PROJECTION_REACH * 16} runs for 0.9)" in format_reliability(reliability)


def test_reliability_reaches_the_printed_summary_the_report_and_wandb(tmp_path: Path) -> None:
    from src.contracts.estimates import read_estimates
    from src.estimate import main
    from src.reporting.sections import summary_section
    from src.tracking.wandb import estimate_numbers

    sweep_dir = planted(16).write(tmp_path / "sweep")
    main([str(sweep_dir), "--gallery", "0"])
    est = read_estimates(sweep_dir / "estimates")
    assert est.summary["reliability"]["pearson"] is not None
    numbers = estimate_numbers(est.summary, est.arrays["mem"], [])
    assert "reliability/pearson" in numbers and "projected/pearson/runs_for_target" in numbers

    class Collect:
        def __init__(self) -> None:
            self.parts: list[str] = []

        def __getattr__(self, name: str):
            return lambda *args, **kwargs: self.parts.append(" ".join(str(arg) for arg in args))

    page = Collect()
    summary_section(page, est)  # type: ignore[arg-type]
    assert any('id="reliability"' in part and "split-half reliability" in part for part in page.parts)


def test_logit_fit_recovers_a_spearman_brown_curve_and_refuses_flat_data() -> None:
    from src.estimators.subsample.projection import fitted_agreement, fitted_runs_for, logit_fit

    curve = {k: spearman_brown(0.4, k / 10) for k in (10.0, 20.0, 40.0)}
    fit = logit_fit(curve)
    assert fit is not None and fit[0] == pytest.approx(1.0)
    assert fitted_agreement(fit, 160) == pytest.approx(spearman_brown(0.4, 16))
    assert spearman_brown(0.4, fitted_runs_for(fit, 0.9) / 10) == pytest.approx(0.9)
    assert logit_fit({10.0: 0.13, 20.0: 0.12, 40.0: 0.13}) is None  # chance-level pairs: not growing
    assert logit_fit({10.0: 0.5, 20.0: None, 40.0: 0.7}) is None


# ------------------------------------------------------------------------------------------- convergence

def test_nested_ks_double_from_16_and_end_at_the_sweep() -> None:
    from src.analyses.convergence import nested_ks

    assert nested_ks(100) == [16, 32, 64, 100] and nested_ks(64) == [16, 32, 64] and nested_ks(10) == [10]


def write_seeds(sweep: Sweep, directory: Path, seeds: range) -> Path:
    for seed in seeds:
        write_record(record_path(directory, seed), sweep.record(seed))
    return directory


def test_convergence_rows_are_the_agreement_of_the_first_k_runs(tmp_path: Path) -> None:
    from src.analyses.convergence import part_of
    from src.convergence import main
    from src.estimators.subsample.reliability import agreement

    sweep = planted(80)
    first, second = write_seeds(sweep, tmp_path / "a", range(40)), write_seeds(sweep, tmp_path / "b", range(40, 80))
    assert main([str(first), "--against", str(second)]) == 0
    lines = (first / "convergence" / "convergence.csv").read_text().splitlines()
    assert lines[0] == "k,reference,reference_runs,spearman_non_trivial,jaccard_memorized,jaccard_pairs,pearson"
    assert [line.split(",")[:3] for line in lines[1:]] == [["16", "full", "40"], ["16", "against", "40"],
                                                           ["32", "full", "40"], ["32", "against", "40"],
                                                           ["40", "full", "40"], ["40", "against", "40"]]
    assert (first / "convergence" / "convergence.png").read_bytes().startswith(b"\x89PNG")
    config = EstimateConfig(null_perms=0)
    naive = agreement(part_of(stats_of(sweep, list(range(16))), config), part_of(stats_of(sweep, list(range(40))),
                                                                                  config), config.theta_mem)
    row = lines[1].split(",")
    assert float(row[6]) == pytest.approx(naive["pearson"], abs=1e-6)
    assert float(row[3]) == pytest.approx(naive["spearman_non_trivial"], abs=1e-6)
    assert [float(value) for value in lines[5].split(",")[3:]] == [1.0] * 4  # all 40 runs against themselves


def test_convergence_refuses_a_sweep_that_is_not_independent(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from src.convergence import main

    sweep = planted(20)
    first = write_seeds(sweep, tmp_path / "a", range(20))
    copy = write_seeds(sweep, tmp_path / "b", range(10))
    assert main([str(first), "--against", str(copy)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "shares 10 seeds" in error[0] and "not independent" in error[0]
    assert not (first / "convergence").exists()
