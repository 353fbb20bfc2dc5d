"""The LDS noise ceiling: repeat agreement and ceiling on planted outputs with a known answer, a perfect and a
pure-noise predictor against it, `subset.repeats` draws in real training (one subset, two initialisations), the
aggregator's subset check of such records, and `src.evaluate --holdout-sweep` end to end with its one-line
errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from src.analyses.evaluation.lds import ceiling_summary, lds_ceiling, repeated_subsets
from src.config.compose import compose_config
from src.contracts.records import RecordError, read_record, record_path
from src.data.dataset import load_dataset
from src.data.subsets import subset_mask
from src.estimators.subsample.load import load_sweep
from src.estimators.subsample.stats import SweepStats
from src.evaluate import main
from src.sweep.done import State, Wanted, record_state
from src.training.job import run_job
from src.util.stats import column_spearman
from tests.conftest import TINY

# ------------------------------------------------------------------------------------ planted outputs


def planted_outputs(n_subsets: int, repeats: int, reliability: np.ndarray,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y(s, r, j) = sqrt(rho_j) g(s) + sqrt(1 - rho_j) e(s, r, j), g and e standard normal: rho_j is the share of
    an output's variance that its subset explains (the Pearson repeat agreement). Returns (g, y)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=n_subsets)
    noise = rng.normal(size=(n_subsets, repeats, reliability.size))
    return g, np.sqrt(reliability) * g[:, None, None] + np.sqrt(1 - reliability) * noise


def gaussian_spearman(pearson: np.ndarray) -> np.ndarray:
    """Spearman's rho of a bivariate normal with correlation `pearson`: (6 / pi) asin(pearson / 2)."""
    return 6 / math.pi * np.arcsin(pearson / 2)


RELIABILITY = np.linspace(0.05, 0.9, 12)


def test_agreement_and_ceiling_match_the_planted_reliability() -> None:
    # 2,000 subsets: a Spearman's SE is at most 1 / sqrt(2000) = 0.022; 0.08 is 3.6 of those.
    g, outputs = planted_outputs(2000, 2, RELIABILITY)
    ceiling = lds_ceiling(outputs)
    expected = gaussian_spearman(RELIABILITY)
    assert np.abs(ceiling.agreement - expected).max() < 0.08
    assert abs(ceiling.agreement.mean() - expected.mean()) < 0.02
    np.testing.assert_array_equal(ceiling.ceiling, np.sqrt(np.clip(ceiling.agreement, 0, None)))
    # A perfect predictor of the subset's part (g itself) reaches the ceiling: for Gaussians the Spearman with one
    # model's output is (6/pi) asin(sqrt(rho)/2), at most 0.007 under sqrt((6/pi) asin(rho/2)).
    runs = outputs.reshape(-1, RELIABILITY.size)
    perfect = column_spearman(np.repeat(g, 2)[:, None] * np.ones(RELIABILITY.size), runs)
    assert np.abs(perfect - gaussian_spearman(np.sqrt(RELIABILITY))).max() < 0.08
    assert np.all(perfect < ceiling.ceiling + 0.08)
    assert abs(perfect.mean() - ceiling.ceiling.mean()) < 0.02
    noise = column_spearman(np.random.default_rng(1).normal(size=runs.shape), runs)
    assert abs(noise.mean()) < 0.03  # 12 examples x 4,000 runs: the null mean has sd 0.005


def test_three_repeats_average_the_pairs() -> None:
    _, outputs = planted_outputs(500, 3, RELIABILITY, seed=2)
    pairs = [column_spearman(outputs[:, a], outputs[:, b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    np.testing.assert_allclose(lds_ceiling(outputs).agreement, np.mean(pairs, axis=0), atol=1e-12)
    constant = outputs.copy()
    constant[:, 1, 0] = 0.5  # one repeat constant: the agreement of that example is undefined
    assert np.isnan(lds_ceiling(constant).agreement[0]) and np.isfinite(lds_ceiling(constant).agreement[1:]).all()


def test_no_ceiling_without_repeats_or_subsets() -> None:
    for shape in ((10, 1, 4), (2, 2, 4), (10, 4)):
        with pytest.raises(ValueError, match="need"):
            lds_ceiling(np.zeros(shape))


def test_ceiling_summary_of_a_perfect_and_a_noise_predictor() -> None:
    g, outputs = planted_outputs(400, 2, RELIABILITY, seed=3)
    runs = outputs.reshape(-1, RELIABILITY.size)
    groups = np.arange(runs.shape[0]).reshape(400, 2)
    predicted = {"perfect": np.repeat(g, 2)[:, None] * np.ones(RELIABILITY.size),
                 "noise": np.random.default_rng(4).normal(size=runs.shape)}
    summary, ceiling = ceiling_summary(predicted, runs, groups, replicates=100)
    assert (summary["held_out_subsets"], summary["repeats"], summary["runs"]) == (400, 2, 800)
    perfect, noise = summary["matrices"]["perfect"], summary["matrices"]["noise"]
    assert perfect["ceiling"]["mean"] == pytest.approx(ceiling.ceiling.mean())
    assert perfect["lds"]["mean"] == pytest.approx(column_spearman(predicted["perfect"], runs).mean())
    low, high = perfect["ratio"]["ci95_subsets"]  # about 1 +- 0.05: sampling can put a ratio above 1
    assert low < 1 < high and high - low < 0.2 and 0.9 < perfect["ratio"]["value"] < 1.1
    low, high = noise["ratio"]["ci95_subsets"]
    assert low < 0 < high and abs(noise["ratio"]["value"]) < 0.1
    assert perfect["examples"] == RELIABILITY.size and perfect["examples_left_out"] == 0


def test_repeated_subsets_group_runs_by_subset_seed() -> None:
    groups = repeated_subsets([5, 5, 7, 7, 7, 9, 9, 11])
    np.testing.assert_array_equal(groups, [[0, 1], [2, 3], [5, 6]])  # the fewest repeats (2) of each subset
    assert repeated_subsets([5, 5, 7, 7, 9]) is None  # two repeated subsets: no Spearman over subsets
    assert repeated_subsets(list(range(10))) is None


# --------------------------------------------------------------------------------- trained sweeps

FIT_SEEDS = list(range(12))
HELD_SEEDS = list(range(100, 112))  # 6 subsets (seeds 100, 102, ..., 110) twice each
OTHER_SEEDS = list(range(200, 204))


@dataclasses.dataclass(frozen=True)
class Sweeps:
    fit: Path
    held: Path  # subset.repeats=2, seeds disjoint from the fit runs'
    other: Path  # subset.repeats=2 and batch_size 32: another experiment


def train(root: Path, name: str, seeds: list[int], *overrides: str) -> Path:
    run_job(compose_config([*TINY, "trainer.max_epochs=1", f"paths.output_dir={root}",
                            f"paths.data_dir={root / 'data'}", f"name={name}", f"seeds={seeds}", *overrides]))
    return root / name


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweeps]:
    root = tmp_path_factory.mktemp("ceiling")
    yield Sweeps(train(root, "fit", FIT_SEEDS), train(root, "held", HELD_SEEDS, "subset.repeats=2"),
                 train(root, "other", OTHER_SEEDS, "subset.repeats=2", "batch_size=32"))


def test_repeats_train_one_subset_with_two_initialisations(sweeps: Sweeps) -> None:
    records = {seed: read_record(record_path(sweeps.held, seed)) for seed in HELD_SEEDS}
    n = records[100].subset_mask.size
    for first in HELD_SEEDS[::2]:
        np.testing.assert_array_equal(records[first].subset_mask, subset_mask(first, n, 0.7))  # drawn as before
        np.testing.assert_array_equal(records[first + 1].subset_mask, records[first].subset_mask)
        assert not np.array_equal(records[first + 1].test_prob, records[first].test_prob)  # its own training
    assert not np.array_equal(records[100].subset_mask, records[102].subset_mask)
    fit_hash = read_record(record_path(sweeps.fit, 0)).meta["experiment_hash"]
    assert records[100].meta["experiment_hash"] != fit_hash  # repeats=2 is another experiment


def test_the_subset_check_follows_repeats(sweeps: Sweeps) -> None:
    stats, problems = load_sweep(sweeps.held, strict=True)
    assert not problems and stats.seeds == HELD_SEEDS
    record = read_record(record_path(sweeps.held, 101))
    wrong = dataclasses.replace(record, subset_mask=subset_mask(101, record.subset_mask.size, 0.7))
    with pytest.raises(RecordError, match=r"is not the subset of seed 101 .*repeats 2"):
        SweepStats.from_record(wrong)


def test_evaluate_with_a_holdout_sweep_reports_the_ceiling(sweeps: Sweeps, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "evaluation"
    assert main([str(sweeps.fit), "--holdout-sweep", str(sweeps.held), "--parts", "lds", "--out", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("fit: 24 runs (12 fit, 12 held out); LDS[estimate]") and "6 subsets x 2 runs" in line
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["held_out_seeds"] == HELD_SEEDS and summary["holdout_sweep"] == str(sweeps.held)
    held = [read_record(record_path(sweeps.held, seed)) for seed in HELD_SEEDS]
    outputs = np.stack([record.test_prob for record in held]).reshape(6, 2, -1)
    expected = lds_ceiling(outputs)
    ceiling = summary["lds"]["ceiling"]
    assert (ceiling["held_out_subsets"], ceiling["repeats"], ceiling["runs"]) == (6, 2, 12)
    assert ceiling["ceiling_all"]["mean"] == pytest.approx(np.nanmean(expected.ceiling))
    with (out / "lds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for column, values in (("repeat_agreement", expected.agreement), ("ceiling", expected.ceiling)):
        np.testing.assert_allclose([float(row[column] or "nan") for row in rows], values, atol=1e-5,
                                   equal_nan=True)
    estimate = ceiling["matrices"]["estimate"]
    assert estimate["ratio"]["value"] == pytest.approx(estimate["lds"]["mean"] / estimate["ceiling"]["mean"])


def test_a_repeated_sweep_splits_by_whole_groups(sweeps: Sweeps, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "evaluation"
    assert main([str(sweeps.held), "--holdout-seeds", "104..111", "--parts", "lds", "--out", str(out)]) == 0
    ceiling = json.loads((out / "evaluation.json").read_text())["lds"]["ceiling"]
    assert (ceiling["held_out_subsets"], ceiling["repeats"]) == (4, 2)
    capsys.readouterr()
    assert main([str(sweeps.held), "--holdout-seeds", "105..111", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "held-out seed 105 trains the subset of seed 104, which fit seed 104 trained too" in err
    assert not (tmp_path / "bad").exists()


BAD_HOLDOUTS = {
    "another experiment": (lambda s: [str(s.fit), "--holdout-sweep", str(s.other)],
                           "is not the fit sweep's experiment apart from subset.repeats (fit → held out): "
                           "batch_size: 64 → 32"),
    "with --holdout-seeds": (lambda s: [str(s.fit), "--holdout-sweep", str(s.held), "--holdout-seeds", "10..11"],
                             "exclude each other"),
    "no such sweep": (lambda s: [str(s.fit), "--holdout-sweep", str(s.fit / "absent")], "does not exist"),
    "a held-out subset the fit runs trained": (lambda s: [str(s.held), "--holdout-sweep", str(s.held)],
                                              "held-out seed 100 trains the subset of seed 100"),
}


@pytest.mark.parametrize("case", BAD_HOLDOUTS)
def test_bad_holdout_sweep_is_one_line_exit_2(sweeps: Sweeps, tmp_path: Path, case: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    make_args, message = BAD_HOLDOUTS[case]
    out = tmp_path / "out"
    assert main([*make_args(sweeps), "--parts", "lds", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()


def test_a_record_of_other_repeats_is_not_done(sweeps: Sweeps) -> None:
    """The done-rule (src/sweep/done.py): seed 100 trained with repeats=2 is another experiment's at repeats=1."""
    path = record_path(sweeps.held, 100)
    for repeats, state in ((1, State.FOREIGN), (2, State.DONE)):
        cfg = compose_config([*TINY, "trainer.max_epochs=1", f"subset.repeats={repeats}", "seed=100"])
        fingerprint = load_dataset(cfg.dataset, str(sweeps.held.parent / "data")).fingerprint
        assert record_state(path, Wanted.of(cfg, fingerprint)).state is state
