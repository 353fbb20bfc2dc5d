"""src.evaluate: AUROC and LDS against naive loops, LDS on a planted linear datamodel, held-out runs kept
out of the estimate, LiRA on a planted in/out shift, TPR at a fixed FPR by hand, the CLI end to end and its
one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_curve

from src.analyses import removal_table
from src.analyses.evaluation.evaluate import FIT_ESTIMATES_DIR, fit_estimate
from src.analyses.evaluation.lds import linear_datamodel_scores
from src.analyses.evaluation.mia import attack_metrics, lira_scores, tpr_at_fpr
from src.analyses.evaluation.split import holdout_seeds, load_split, split_runs
from src.contracts.records import Record, record_path, write_record
from src.data.subsets import subset_mask
from src.estimate import main as estimate_main
from src.estimators.subsample.influence import estimate
from src.estimators.subsample.load import load_sweep
from src.estimators.subsample.memorization import EstimateConfig
from src.estimators.subsample.stats import SweepStats
from src.evaluate import main
from src.util.stats import auroc
from src.util.tables import csv_rows
from tests.test_estimate import Sweep, small_sweep


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def records(sweep: Sweep, test_prob: np.ndarray | None = None) -> list[tuple[str, Record]]:
    """(path, record) of every run; test_prob (K, n_test) replaces the constant 0.5 of Sweep.record."""
    return [(f"<run {k}>", sweep.record(k) if test_prob is None
             else dataclasses.replace(sweep.record(k), test_prob=test_prob[k].astype(np.float32)))
            for k in sweep.seeds]


def write_sweep(sweep: Sweep, sweep_dir: Path, test_prob: np.ndarray | None = None,
                seeds: range | None = None) -> Path:
    for _, record in records(sweep, test_prob):
        if seeds is None or record.seed in seeds:
            write_record(record_path(sweep_dir, record.seed), record)
    return sweep_dir


def subset_masks(n_runs: int, n: int, ratio: float) -> np.ndarray:
    return np.stack([subset_mask(k, n, ratio) for k in range(n_runs)])


def random_sweep(seed: int, masks: np.ndarray, ratio: float, test_correct_p: np.ndarray,
                 train_prob: np.ndarray) -> Sweep:
    """Runs with the subsets of seeds 0..K-1 (masks), test correctness probabilities (K, n_test) and train
    probabilities (K, n)."""
    rng = np.random.default_rng(seed)
    return Sweep(masks=masks, train_correct=train_prob > 0.5, train_prob=train_prob.astype(np.float32),
                 test_correct=rng.random(test_correct_p.shape) < test_correct_p,
                 train_label=rng.integers(0, 3, masks.shape[1]),
                 test_label=rng.integers(0, 3, test_correct_p.shape[1]), ratio=ratio, num_classes=3)


# ------------------------------------------------------------------------------------------ statistics

def test_auroc_equals_naive_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 300).astype(float)  # many ties
    positive = rng.random(300) < 0.3
    scores[[3, 10, 50]] = np.nan
    result = auroc(scores, positive)
    keep = ~np.isnan(scores)
    pos, neg = scores[keep & positive], scores[keep & ~positive]
    naive = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (pos.size * neg.size)
    assert result.auroc == pytest.approx(naive, abs=1e-12)
    assert (result.n_pos, result.n_neg) == (pos.size, neg.size)
    assert result.nan_pos + result.nan_neg == 3
    assert result.nan_pos == int(positive[[3, 10, 50]].sum())
    assert np.isnan(auroc(np.ones(4), np.zeros(4, dtype=bool)).auroc)  # no positive: undefined


def test_lds_equals_naive_loop() -> None:
    rng = np.random.default_rng(1)
    n, n_test, runs = 15, 9, 7
    infl = rng.normal(size=(n, n_test)).astype(np.float32)
    infl[2] = np.nan  # an example without an estimate counts as 0
    masks = rng.random((runs, n)) < 0.6
    actual = rng.random((runs, n_test)).astype(np.float32)
    actual[:, 4] = 0.5  # constant: undefined
    actual[:3, 5] = actual[3, 5]  # ties
    lds = linear_datamodel_scores(infl, masks, actual)
    for j in range(n_test):
        predicted = [sum(float(infl[i, j]) for i in range(n) if masks[k, i] and not np.isnan(infl[i, j]))
                     for k in range(runs)]
        expected = spearmanr(predicted, actual[:, j]).statistic if j != 4 else np.nan
        np.testing.assert_allclose(lds[j], expected, atol=1e-6, equal_nan=True)
    assert np.isnan(linear_datamodel_scores(np.zeros((n, n_test), np.float32), masks, actual)).all()


def test_tpr_at_fpr_by_hand() -> None:
    # 500 non-members scored 1..500; 1% FPR allows 5 of them (scores 496..500 at threshold 496).
    negatives = np.arange(1, 501, dtype=float)
    positives = np.array([1000, 600, 499.5, 497.5, 496.5, 495, 0])  # 495 ties a non-member
    scores = np.concatenate([positives, negatives])
    members = np.arange(scores.size) < positives.size
    fpr, tpr, _ = roc_curve(members, scores, drop_intermediate=False)
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(5 / 7)  # at 495 the tie brings a 6th negative in
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(2 / 7)
    metrics, _, _ = attack_metrics(scores, members)
    assert metrics["tpr_at_fpr"] == {"0.01": pytest.approx(5 / 7)}  # 0.1% of 500 is under 5 false positives


# ------------------------------------------------------------------------------------------------ LDS

def dense_influence(stats: SweepStats, dense_dir: Path) -> np.ndarray:
    """The influence matrix src.estimate computes for these runs."""
    est = estimate(stats, EstimateConfig(null_perms=0), dense_dir=dense_dir)
    matrix = np.load(est.dense.tmp, allow_pickle=False)
    est.discard_dense()
    return matrix


def planted_datamodel(tmp_path: Path, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """LDS of the estimate, and with the held-out outputs shuffled across runs, on runs where
    p(y_j) = 0.5 + sum_i w(i, j) (in_k(i) - 1/2) + N(0, 0.01^2), w ~ U(-0.1, 0.1), and the test correctness
    is Bernoulli(p). 8 training examples, 3,960 fit runs, 40 held out: the infl SE is 0.016 per entry, a
    prediction's noise (sd 0.022) a quarter of its signal (sd 0.082). With the planted w the LDS is 0.98;
    with an estimate from 1,960 fit runs 0.89, from 3,960 0.95 (measured)."""
    rng = np.random.default_rng(seed)
    n, n_test, runs, held = 8, 40, 4000, 40
    weights = rng.uniform(-0.1, 0.1, (n, n_test))
    masks = subset_masks(runs, n, 0.5)
    prob = 0.5 + (masks - 0.5) @ weights
    actual = np.clip(prob + rng.normal(0, 0.01, prob.shape), 0, 1)
    sweep = random_sweep(seed, masks, 0.5, prob, rng.random((runs, n)))
    split = split_runs(records(sweep, actual), range(runs - held, runs))
    held_masks, held_actual = np.stack(split.held_out.masks), np.stack(split.held_out.test_prob)
    infl = dense_influence(split.fit, tmp_path)
    return (linear_datamodel_scores(infl, held_masks, held_actual),
            linear_datamodel_scores(infl, held_masks, held_actual[rng.permutation(held)]))


def test_planted_datamodel_lds_high_shuffled_low(tmp_path: Path) -> None:
    lds, shuffled = planted_datamodel(tmp_path)
    assert np.nanmean(lds) > 0.9
    assert abs(np.nanmean(shuffled)) < 0.2  # 40 test examples x 40 runs: the null mean has sd about 0.03


def test_holdout_runs_are_left_out_of_the_estimate(tmp_path: Path) -> None:
    sweep = small_sweep()
    test_prob = np.random.default_rng(3).random((len(sweep.masks), len(sweep.test_label)))
    stats, _ = load_sweep(write_sweep(sweep, tmp_path / "all", test_prob))
    held = holdout_seeds(stats.seeds, None)
    assert held == [10, 11]  # the last 10% of 12 seeds, at least 2
    split = load_split(stats, held)
    assert split.fit.seeds == list(range(10)) and split.held_out.seeds == [10, 11]
    assert np.array_equal(split.phi.n_in + split.phi.n_out, np.full(60, 10.0))
    np.testing.assert_array_equal(np.stack(split.held_out.test_prob), test_prob[10:].astype(np.float32))
    only_fit, _ = load_sweep(write_sweep(sweep, tmp_path / "fit", test_prob, seeds=range(10)))
    est_split, infl_split = fit_estimate(split, 1.0, tmp_path / "split")
    est_split.discard_dense()
    est_fit = estimate(only_fit)
    for name in ("mem", "mem_soft", "n_in", "n_out"):
        np.testing.assert_array_equal(getattr(est_split, name), getattr(est_fit, name))
    np.testing.assert_array_equal(infl_split, dense_influence(only_fit, tmp_path / "fit_dense"))


# ------------------------------------------------------------------------------------------------- MIA

def lira_auc(shift: float, seed: int = 4) -> dict[str, dict]:
    """Attack metrics on runs where phi = mu_i + shift * in + N(0, 1), mu_i ~ N(1, 1.5^2): 2,000 examples,
    30 shadow runs (global variance), 10 targets: 14,000 member and 6,000 non-member points."""
    rng = np.random.default_rng(seed)
    n, runs, held = 2000, 40, 10
    masks = subset_masks(runs, n, 0.7)
    phi = rng.normal(1, 1.5, n) + shift * masks + rng.normal(0, 1, masks.shape)
    sweep = random_sweep(seed, masks, 0.7, np.full((runs, 5), 0.5), sigmoid(phi))
    split = split_runs(records(sweep), range(runs - held, runs))
    scores = lira_scores(split.phi, np.stack(split.held_out.train_prob), per_example=False)
    return {name: attack_metrics(values, np.stack(split.held_out.masks))[0] for name, values in scores.items()}


def test_lira_detects_an_in_out_shift_and_nothing_without_one() -> None:
    shifted = lira_auc(2.0)
    # Known Gaussians would give Phi(2 / sqrt(2)) = 0.92; the per-example means come from about 21 in and 9
    # out runs. The raw confidence ignores mu_i: Phi(2 / sqrt(2 + 2 * 1.5^2)) = 0.78.
    assert shifted["online"]["auc"] > 0.85 and shifted["offline"]["auc"] > 0.8
    assert 0.74 < shifted["baseline"]["auc"] < 0.82
    assert shifted["online"]["tpr_at_fpr"]["0.01"] > 0.1  # 6,000 non-members: both targets reported
    assert set(shifted["online"]["tpr_at_fpr"]) == {"0.01", "0.001"}
    # Null: the AUC SE of 14,000 vs 6,000 independent points is 0.0045; an example's 10 target runs share its
    # fitted Gaussians, which inflates that at most sqrt(10)-fold to 0.014; 0.05 is 3.5 of those.
    for name, metrics in lira_auc(0.0).items():
        assert abs(metrics["auc"] - 0.5) < 0.05, name


# ------------------------------------------------------------------------------------------------- CLI

@pytest.fixture
def noisy_sweep(tmp_path: Path) -> tuple[Path, Sweep, np.ndarray]:
    """small_sweep (12 runs, 3 flipped labels, some examples never out) with random test probabilities."""
    sweep = small_sweep()
    test_prob = np.random.default_rng(5).random((len(sweep.masks), len(sweep.test_label))).astype(np.float32)
    return write_sweep(sweep, tmp_path / "sweep", test_prob), sweep, test_prob


def removal_csv(path: Path) -> Path:
    rows = [removal_table.RemovalRow(selection, level, control, 0, seed, 5, acc, None, 0)
            for seed, (selection, level, control, acc) in enumerate(
                [("none", None, "removed", 0.9), ("theta", 0.25, "removed", 0.8), ("theta", 0.25, "random", 0.85)]
                * 2)]
    path.write_text(csv_rows(removal_table.COLUMNS, [dataclasses.astuple(row) for row in rows], exact=True))
    return path


def test_cli_end_to_end(noisy_sweep: tuple[Path, Sweep, np.ndarray], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir, sweep, test_prob = noisy_sweep
    assert estimate_main([str(sweep_dir), "--gallery", "0"]) == 0
    capsys.readouterr()
    out = tmp_path / "evaluation"
    other_infl = sweep_dir / "estimates" / "influence.npy"
    assert main([str(sweep_dir), "--out", str(out), "--estimates", str(sweep_dir / "estimates"),
                 "--infl", str(other_infl), "--removal", str(removal_csv(tmp_path / "removal.csv"))]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("planted: 12 runs (10 fit, 2 held out); noise")
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["held_out_seeds"] == [10, 11] and summary["fit_runs"] == 10

    stats, _ = load_sweep(sweep_dir)
    flipped = np.isin(np.arange(60), sweep.flipped_idx)
    mem_auroc = auroc(estimate(stats).mem, flipped)
    rows = {(row["source"], row["score"]): row for row in summary["noise"]["scores"]}
    for source in ("sweep", str(sweep_dir / "estimates")):
        assert rows[(source, "mem")]["auroc"] == pytest.approx(mem_auroc.auroc)
        assert rows[(source, "mem")]["nan_clean"] == mem_auroc.nan_neg > 0  # examples never left out
    assert ("sweep", "mem_se") not in rows and (str(sweep_dir / "estimates"), "acc_in") in rows
    acc_in = rows[(str(sweep_dir / "estimates"), "acc_in")]  # low in-subset accuracy flags: negated
    raw_acc_in = np.load(sweep_dir / "estimates" / "estimates.npz")["acc_in"]
    assert acc_in["flags"] == "low" and acc_in["auroc"] == pytest.approx(auroc(-raw_acc_in, flipped).auroc)
    assert rows[("sweep", "mem")]["flags"] == "high"

    split = load_split(stats, [10, 11])
    held_masks = np.stack(split.held_out.masks)
    fit_infl = np.load(out / FIT_ESTIMATES_DIR / "influence.npy")
    np.testing.assert_array_equal(fit_infl, dense_influence(split.fit, tmp_path / "dense"))
    with (out / "lds.csv").open() as handle:
        lds_rows = list(csv.DictReader(handle))
    assert [int(row["test_index"]) for row in lds_rows] == list(range(25))
    for name, infl in (("estimate", fit_infl), ("influence", np.load(other_infl))):
        expected = linear_datamodel_scores(infl, held_masks, test_prob[10:])
        values = np.array([float(row[f"lds_{name}"] or "nan") for row in lds_rows])
        np.testing.assert_allclose(values, expected, atol=1e-5, equal_nan=True)
    assert summary["lds"]["matrices"]["estimate"]["mean"] == pytest.approx(np.nanmean(
        linear_datamodel_scores(fit_infl, held_masks, test_prob[10:])))

    scores = lira_scores(split.phi, np.stack(split.held_out.train_prob), per_example=False)
    assert summary["mia"]["variance"] == "global"
    assert summary["mia"]["attacks"]["online"]["auc"] == pytest.approx(auroc(scores["online"], held_masks).auroc)
    assert summary["removal"]["rows"] == json.loads(json.dumps(
        removal_table.summarize(removal_table.read_removal_csv(tmp_path / "removal.csv"))))
    assert {path.name for path in out.iterdir()} == {
        "evaluation.json", "noise_auroc.csv", "lds.csv", "lds.png", "mia_roc.csv", "mia_roc.png",
        "mia_examples.csv", FIT_ESTIMATES_DIR}


def rewrite_hash(sweep_dir: Path, sweep: Sweep, test_prob: np.ndarray) -> None:
    """Seed 3 becomes a record of another experiment."""
    _, record = records(sweep, test_prob)[3]
    record.meta["experiment_hash"] = "other"
    write_record(record_path(sweep_dir, 3), record)


BAD_INPUTS = {
    "no records": (lambda sweep_dir, *_: [str(sweep_dir / "empty")], "no record.npz under"),
    "holdout leaves one fit run": (lambda sweep_dir, *_: [str(sweep_dir), "--holdout-seeds", "1..11"],
                                   "1 fit runs of 12"),
    "holdout of one run": (lambda sweep_dir, *_: [str(sweep_dir), "--holdout-seeds", "5"], "1 held-out"),
    "absent holdout seed": (lambda sweep_dir, *_: [str(sweep_dir), "--holdout-seeds", "10..12"], "seed 12"),
    "bad seed list": (lambda sweep_dir, *_: [str(sweep_dir), "--holdout-seeds", "a..b"], "not a seed list"),
    "unknown part": (lambda sweep_dir, *_: [str(sweep_dir), "--parts", "lds,auc"], "choose among"),
    "dense cap": (lambda sweep_dir, *_: [str(sweep_dir), "--dense-cap-mb", "0.001"], "exceeds --dense-cap-mb"),
    "infl shape": (lambda sweep_dir, tmp_path, *_: [str(sweep_dir), "--infl", str(np_file(tmp_path, (60, 3)))],
                   "shape (60, 3)"),
    "same matrix name twice": (lambda sweep_dir, tmp_path, *_: [str(sweep_dir), *2 * ["--infl", str(tmp_path)]],
                               "taken twice"),
    "mixed sweeps": (lambda sweep_dir, tmp_path, sweep, test_prob: [str(sweep_dir)]
                     if rewrite_hash(sweep_dir, sweep, test_prob) is None else [], "does not belong to this sweep"),
}


def np_file(tmp_path: Path, shape: tuple[int, int]) -> Path:
    path = tmp_path / "infl.npy"
    np.save(path, np.zeros(shape, dtype=np.float32))
    return path


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(noisy_sweep: tuple[Path, Sweep, np.ndarray], tmp_path: Path, case: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir, sweep, test_prob = noisy_sweep
    (sweep_dir / "empty").mkdir()
    make_args, message = BAD_INPUTS[case]
    out = tmp_path / "out"
    assert main([*make_args(sweep_dir, tmp_path, sweep, test_prob), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()
