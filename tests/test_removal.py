"""Removal experiments: selections and controls against naive loops, influenced accuracy on a planted case, the
summary's t intervals by hand, the CSV contract, packed retraining (masks, member = condition trained alone),
and the command line on a real tiny sweep."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from scipy.stats import t

import src.training.job
from src.analyses.removal import (
    Condition,
    class_matched_control,
    conditions,
    influenced_tests,
    kept_masks,
    pair_selection,
    plan_jobs,
    random_control,
    retrain,
    score,
    theta_selection,
    top_q_selection,
)
from src.analyses.removal_table import (
    COLUMNS,
    SUMMARY_COLUMNS,
    RemovalRow,
    format_summary,
    read_removal_csv,
    read_removal_source,
    summarize,
    write_outputs,
)
from src.contracts.estimates import Estimates, read_estimates
from src.data.dataset import load_dataset
from src.errors import ConfigError, DataError
from src.estimate import main as estimate_main
from src.removal import main
from src.training.job import fit, run_job
from src.util.cli import parse_seeds
from tests.conftest import CONF, TINY

RNG = np.random.default_rng(7)
N, N_TEST, CLASSES = 200, 50, 4
MEM = np.where(RNG.random(N) < 0.1, np.nan, np.round(RNG.random(N), 2))  # rounded: many ties
MEM_SOFT = RNG.random(N)
LABELS = RNG.integers(0, CLASSES, N)
PAIR_TRAIN, PAIR_TEST = np.array([3, 3, 10, 57, 57, 120]), np.array([1, 2, 2, 9, 30, 44])


def planted_estimates() -> Estimates:
    return Estimates({"experiment_hash": "h", "data_fingerprint": "f", "n_train": N, "n_test": N_TEST},
                     {"mem": MEM, "mem_soft": MEM_SOFT, "train_label": LABELS,
                      "test_label": RNG.integers(0, CLASSES, N_TEST), "pair_train_idx": PAIR_TRAIN,
                      "pair_test_idx": PAIR_TEST})


# ------------------------------------------------------------------------------------------- selections

@pytest.mark.parametrize("theta", [0.1, 0.25, 0.5, 0.99])
def test_theta_selection_is_every_estimated_example_at_or_above_theta(theta: float) -> None:
    naive = [i for i in range(N) if not math.isnan(MEM[i]) and MEM[i] >= theta]
    assert theta_selection(MEM, theta).removed.tolist() == naive


@pytest.mark.parametrize("q", [0.01, 0.05, 0.5, 1.0])
def test_top_q_selection_is_the_largest_mem_with_ties_by_mem_soft_then_index(q: float) -> None:
    estimated = [i for i in range(N) if not math.isnan(MEM[i])]
    ranked = sorted(estimated, key=lambda i: (-MEM[i], -MEM_SOFT[i], i))
    count = math.floor(q * len(estimated) + 0.5)
    assert top_q_selection(MEM, MEM_SOFT, q).removed.tolist() == sorted(ranked[:count])


def test_pair_selection_is_the_unique_training_side_and_never_nan() -> None:
    mem = MEM.copy()
    mem[[3, 10, 57, 120]] = 0.9
    mem[120] = np.nan
    assert pair_selection(mem, PAIR_TRAIN).removed.tolist() == [3, 10, 57]


def test_influenced_tests_are_the_test_side_of_pairs_whose_train_side_is_removed() -> None:
    removed = np.array([3, 57, 150])
    naive = sorted({j for i, j in zip(PAIR_TRAIN, PAIR_TEST, strict=True) if i in removed})
    assert influenced_tests(removed, PAIR_TRAIN, PAIR_TEST).tolist() == naive == [1, 2, 9, 30]


@pytest.mark.parametrize("draw", [0, 1, 5])
def test_class_matched_control_has_exactly_the_selections_count_per_class(draw: int) -> None:
    estimated = ~np.isnan(MEM)
    removed = theta_selection(MEM, 0.6).removed
    control = class_matched_control(removed, LABELS, estimated, draw)
    for label in range(CLASSES):
        assert np.sum(LABELS[control] == label) == np.sum(LABELS[removed] == label)
    assert estimated[control].all() and np.unique(control).size == control.size
    assert np.array_equal(control, class_matched_control(removed, LABELS, estimated, draw))  # reproducible
    assert not np.array_equal(control, class_matched_control(removed, LABELS, estimated, draw + 1))


def test_random_control_is_reproducible_estimated_of_the_right_size_and_nested() -> None:
    estimated = ~np.isnan(MEM)
    small, large = random_control(20, estimated, 2), random_control(60, estimated, 2)
    assert small.size == 20 and large.size == 60 and np.unique(large).size == 60 and estimated[large].all()
    assert np.array_equal(small, random_control(20, estimated, 2))
    assert np.isin(small, large).all()  # one draw's sets grow with the level
    assert not np.array_equal(large, random_control(60, estimated, 3))


def test_conditions_give_every_control_the_selections_size_and_influenced_set() -> None:
    est = planted_estimates()
    selection = theta_selection(MEM, 0.5)
    found = conditions([selection], est, draws=2)
    assert [(c.selection, c.control, c.draw) for c in found] == [
        ("none", "removed", 0), ("theta", "removed", 0), ("theta", "random", 0), ("theta", "class_matched", 0),
        ("theta", "random", 1), ("theta", "class_matched", 1)]
    expected = influenced_tests(selection.removed, PAIR_TRAIN, PAIR_TEST)
    for condition in found[1:]:
        assert condition.removed.size == selection.removed.size
        assert np.array_equal(condition.influenced, expected)


def test_jobs_pack_equal_kept_sizes_only_and_hold_every_item_once() -> None:
    est = planted_estimates()
    found = conditions([theta_selection(MEM, 0.5), theta_selection(MEM, 0.8)], est, draws=3)
    items = [(condition, seed) for condition in found for seed in (0, 1, 2)]
    jobs = plan_jobs(items, N, OmegaConf.create({"pack": 4, "model": {"name": "mlp", "timm_name": "meminf_mlp"},
                                                 "trainer": {"precision": "32-true"}}))
    assert sorted(id(c) * 10 + s for job in jobs for c, s in job) == sorted(id(c) * 10 + s for c, s in items)
    for job in jobs:
        assert len(job) <= 4 and len({c.removed.size for c, _ in job}) == 1


def test_kept_masks_exclude_exactly_the_removed_examples() -> None:
    job = [(Condition("theta", 0.5, "removed", 0, np.array([1, 5]), np.zeros(0, int)), 0),
           (Condition("theta", 0.5, "random", 0, np.array([0, 9]), np.zeros(0, int)), 0)]
    masks = kept_masks(job, 10)
    assert masks.tolist() == [[i not in (1, 5) for i in range(10)], [i not in (0, 9) for i in range(10)]]


# ------------------------------------------------------------------------------------------ scoring, CSV

def test_influenced_accuracy_on_a_planted_case() -> None:
    test_label = np.array([0, 1, 2, 3, 0, 1])
    pred = np.array([0, 1, 0, 0, 0, 2])  # correct: 0, 1, 4
    condition = Condition("pairs", None, "random", 1, np.array([7, 8, 9]), np.array([1, 2, 3, 4]))
    row = score(condition, 3, pred, test_label)
    assert row == RemovalRow("pairs", None, "random", 1, 3, 3, 0.5, 0.5, 4)  # 3/6 overall, {1, 4} of {1, 2, 3, 4}
    nothing = score(Condition("none", None, "removed", 0, np.zeros(0, int), np.zeros(0, int)), 0, pred, test_label)
    assert nothing.influenced_acc is None and nothing.n_influenced == 0


def planted_rows() -> list[RemovalRow]:
    rows = []
    for seed, (removed, random_draws) in enumerate([(0.80, (0.90, 0.88)), (0.84, (0.91, 0.93)), (0.79, (0.86, 0.90))]):
        rows.append(RemovalRow("theta", 0.25, "removed", 0, seed, 10, removed, removed - 0.1, 4))
        for draw, acc in enumerate(random_draws):
            rows.append(RemovalRow("theta", 0.25, "random", draw, seed, 10, acc, None if seed == 2 else acc, 4))
    rows.append(RemovalRow("none", None, "removed", 0, 0, 0, 0.95, None, 0))
    return rows


def test_summary_means_t_intervals_and_paired_differences_by_hand() -> None:
    summary = summarize(planted_rows())
    assert [(e["selection"], e["control"]) for e in summary] == [("none", "removed"), ("theta", "removed"),
                                                                 ("theta", "random")]
    half = t.ppf(0.975, 2) / math.sqrt(3)
    removed, random = summary[1], summary[2]
    assert removed["test_acc"] == pytest.approx(np.mean([0.80, 0.84, 0.79]))
    assert removed["test_acc_ci95"] == pytest.approx(half * np.std([0.80, 0.84, 0.79], ddof=1))
    per_seed_random = [0.89, 0.92, 0.88]  # draws averaged within a seed first
    assert random["test_acc"] == pytest.approx(np.mean(per_seed_random)) and random["draws"] == 2
    differences = np.array([0.80, 0.84, 0.79]) - per_seed_random
    assert random["removed_minus_control_test_acc"] == pytest.approx(differences.mean())
    assert random["removed_minus_control_test_acc_ci95"] == pytest.approx(half * differences.std(ddof=1))
    # seed 2 has no influenced accuracy for the control: the paired difference uses seeds 0 and 1 only
    influenced = np.array([0.70, 0.74]) - [0.89, 0.92]
    assert random["removed_minus_control_influenced_acc"] == pytest.approx(influenced.mean())
    assert random["removed_minus_control_influenced_acc_ci95"] == pytest.approx(
        t.ppf(0.975, 1) * influenced.std(ddof=1) / math.sqrt(2))
    assert summary[0]["test_acc_ci95"] is None and removed["removed_minus_control_test_acc"] is None


def test_the_printed_table_says_why_a_cell_is_undefined() -> None:
    rows = [*planted_rows(), RemovalRow("top_q", 0.1, "removed", 0, 0, 5, 0.9, None, 0),
            RemovalRow("top_q", 0.1, "random", 0, 0, 5, 0.92, None, 0)]
    lines = format_summary(summarize(rows)).splitlines()
    print("\n".join(lines))
    assert not any("n/a" in line for line in lines)
    baseline, theta_removed, theta_random, top_removed, top_random = lines[1:]
    assert baseline == ("none - removed 0 | 0.9500 (one seed: no interval) | no influenced test examples | none: "
                        "nothing removed")
    assert theta_removed.endswith("| none: this row is the removed set") and top_removed.endswith("removed set")
    assert theta_random.endswith("| -0.0867 +- 0.0143, -0.1850 +- 0.0635")
    assert top_random.endswith("| no influenced test examples | -0.0200 (one seed: no interval), none (no "
                               "influenced test examples)")


def test_csv_schema_and_round_trip(tmp_path: Path) -> None:
    rows = planted_rows()
    source = {"estimates_dir": "e", "experiment_name": "x", "experiment_hash": "h", "estimator": "subsample",
              "runs_used": 8, "estimates_fingerprint": "f"}
    assert read_removal_source(tmp_path) is None  # a removal written before its source was recorded
    write_outputs(tmp_path, rows, summarize(rows), source)
    assert read_removal_source(tmp_path) == source
    with (tmp_path / "removal.csv").open() as handle:
        lines = list(csv.reader(handle))
    assert tuple(lines[0]) == COLUMNS == ("selection", "level", "control", "draw", "seed", "n_removed", "test_acc",
                                          "influenced_acc", "n_influenced")
    assert lines[-1] == ["none", "", "removed", "0", "0", "0", "0.95", "", "0"]
    assert read_removal_csv(tmp_path / "removal.csv") == rows
    with (tmp_path / "removal_summary.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == SUMMARY_COLUMNS
    assert (tmp_path / "removal.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "other.csv").write_text("selection,level\ntheta,0.1\n")
    with pytest.raises(DataError, match="columns"):
        read_removal_csv(tmp_path / "other.csv")


def test_seed_lists_and_ranges() -> None:
    assert parse_seeds("0..2,7") == [0, 1, 2, 7]
    for bad in ("0..2,1", "x", "", "3..1"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_a_bad_estimates_dir_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--theta", "0.25"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no estimates.npz in") and err.count("\n") == 1
    (tmp_path / "estimates.npz").write_bytes(b"not a zip")
    assert main([str(tmp_path), "--theta", "0.25"]) == 2
    assert "unreadable" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- training

@pytest.mark.slow
def test_a_packed_removal_member_equals_its_condition_trained_alone(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("subset.ratio=1.0", "trainer.max_epochs=1", "name=removal")
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    n = len(dataset.y_train)
    rng = np.random.default_rng(0)
    masks = np.ones((3, n), dtype=bool)
    for mask in masks:
        mask[rng.choice(n, 100, replace=False)] = False
    packed = fit(cfg, dataset, [4, 4, 4], masks)  # one seed, three removals: differ only in what was removed
    alone = fit(cfg, dataset, [4], masks[2:])
    together_state, alone_state = packed.members.member_state_dict(2), alone.members.member_state_dict(0)
    for name, value in alone_state.items():
        torch.testing.assert_close(together_state[name], value, atol=2e-4, rtol=0)
    assert not torch.equal(packed.members.member_state_dict(0)["layers.1.weight"], together_state["layers.1.weight"])
    pred_packed, pred_alone = (module.evaluate("test", 512).pred for module in (packed, alone))
    assert np.mean(pred_packed[2] == pred_alone[0]) > 0.99


@pytest.mark.slow
def test_retrain_passes_each_condition_its_mask_and_seed(compose_cfg: Callable[..., DictConfig],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_cfg("subset.ratio=1.0", "trainer.max_epochs=1", "name=removal")
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    calls = []

    def spy(cfg: DictConfig, dataset: object, seeds: list[int], masks: np.ndarray) -> object:
        calls.append((list(seeds), masks.copy()))
        return fit(cfg, dataset, seeds, masks)

    monkeypatch.setattr(src.training.job, "fit", spy)
    empty = np.zeros(0, dtype=np.int64)
    job = [(Condition("theta", 0.5, "removed", 0, np.array([0, 3, 8]), np.array([1, 2])), 0),
           (Condition("theta", 0.5, "random", 0, np.array([5, 6, 7]), np.array([1, 2])), 1),
           (Condition("none", None, "removed", 0, empty, empty), 0)]
    rows = retrain(cfg, dataset, [job[:2], job[2:]])
    assert [seeds for seeds, _ in calls] == [[0, 1], [0]]
    for (condition, _), mask in zip(job, [*calls[0][1], *calls[1][1]], strict=True):
        assert np.flatnonzero(~mask).tolist() == condition.removed.tolist()
    assert [(r.selection, r.control, r.seed, r.n_removed, r.n_influenced) for r in rows] == [
        ("theta", "removed", 0, 3, 2), ("theta", "random", 1, 3, 2), ("none", "removed", 0, 0, 0)]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 4-seed digits sweep (2 epochs, one pack) and its estimates."""
    root = tmp_path_factory.mktemp("sweep")
    overrides = [*TINY, f"paths.output_dir={root}", f"paths.data_dir={root / 'data'}", "name=tiny",
                 "seeds=[0,1,2,3]"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        run_job(compose("config", overrides=overrides))
    assert estimate_main([str(root / "tiny"), "--gallery", "0", "--null-perms", "0"]) == 0
    return root / "tiny"


@pytest.mark.slow
def test_removal_command_on_a_real_sweep(tiny_sweep: Path, tmp_path: Path) -> None:
    est = read_estimates(tiny_sweep / "estimates")
    theta = float(np.nanquantile(est.mem, 0.9))
    out = tmp_path / "removal"
    assert main([str(tiny_sweep / "estimates"), "--theta", str(theta), "--draws", "1", "--seeds", "0..1",
                 "trainer.max_epochs=1", "--out", str(out)]) == 0
    rows = read_removal_csv(out / "removal.csv")
    n_selected = int(np.sum(np.nan_to_num(est.mem, nan=-1) >= theta))
    assert sorted((r.selection, r.control, r.seed, r.n_removed) for r in rows) == sorted(
        [("none", "removed", s, 0) for s in (0, 1)]
        + [("theta", control, s, n_selected) for control in ("removed", "random", "class_matched") for s in (0, 1)])
    assert all(0 < r.test_acc <= 1 for r in rows)
    with (out / "removal_summary.csv").open() as handle:
        summary = {(line["selection"], line["control"]): line for line in csv.DictReader(handle)}
    random, removed = summary[("theta", "random")], summary[("theta", "removed")]
    by_seed = {(r.control, r.seed): r.test_acc for r in rows if r.selection == "theta"}
    expected = np.mean([by_seed[("removed", s)] - by_seed[("random", s)] for s in (0, 1)])
    assert float(random["removed_minus_control_test_acc"]) == pytest.approx(expected)
    assert removed["removed_minus_control_test_acc"] == ""
    assert read_removal_source(out) == est.provenance()


@pytest.mark.slow
def test_data_of_another_fingerprint_is_refused(tiny_sweep: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(tiny_sweep / "estimates"), "--theta", "0.5", "dataset.label_noise=0.1", "--out", str(tmp_path)])
    assert code == 2 and "are not the estimated data" in capsys.readouterr().err
    assert not (tmp_path / "removal.csv").exists()
