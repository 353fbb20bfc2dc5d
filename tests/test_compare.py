"""The compare command on estimates written by the real aggregator from planted sweeps: exact agreement of
identical inputs, exact Jaccards of planted overlaps, NaN handling, the noise floor, refusals, the files."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from scipy.stats import spearmanr

from src.analyses.compare import DIFFERS, SAME, SAME_BUT_SALT, SHARES, compare, jaccard
from src.compare import main
from src.contracts.estimates import Estimates, read_estimates
from src.contracts.estimates import write_estimates as write_estimates_dir
from src.data.subsets import subset_mask, subset_seed
from src.errors import MeminfError
from src.estimate import main as estimate_main
from src.estimators.subsample.estimator import write_outputs
from src.estimators.subsample.influence import estimate
from src.estimators.subsample.memorization import EstimateConfig
from src.estimators.subsample.stats import SweepStats
from src.estimators.subsample.summary import summarize
from tests.conftest import TINY, run_cli
from tests.test_estimate import Sweep

PROJECT_ROOT = Path(__file__).resolve().parent.parent
N, N_TEST, RUNS, CLASSES = 40, 30, 40, 16
PLANTED_CLASSES = 15  # train/test example i < 15 has class i; the others share class 15


def planted_sweep(memorized: Iterable[int], influencers: Iterable[int], seeds: Iterable[int], salt: int = 0,
                  ratio: float = 0.7, n: int = N, n_test: int = N_TEST, repeats: int = 1) -> Sweep:
    """mem(i) = 1 exactly for the memorized examples (correct iff in the subset), 0 for the others (always
    correct); test example j < 15 is correct iff train example j is in the subset (infl 1), others always.
    Every memorized example has its own class, so the planted pairs are the only pairs."""
    masks = np.stack([subset_mask(subset_seed(seed, repeats), n, ratio, salt) for seed in seeds])
    train_correct = np.ones(masks.shape, dtype=bool)
    memorized = list(memorized)
    train_correct[:, memorized] = masks[:, memorized]
    test_correct = np.ones((len(masks), n_test), dtype=bool)
    for j in influencers:
        test_correct[:, j] = masks[:, j]
    return Sweep(masks=masks, train_correct=train_correct, train_prob=np.full(masks.shape, 0.5, dtype=np.float32),
                 test_correct=test_correct, train_label=np.minimum(np.arange(n), PLANTED_CLASSES),
                 test_label=np.minimum(np.arange(n_test), PLANTED_CLASSES), ratio=ratio, num_classes=CLASSES)


def write_estimates(sweep_dir: Path, memorized: Iterable[int], influencers: Iterable[int],
                    seeds: Iterable[int] = range(RUNS), salt: int = 0, ratio: float = 0.7, n: int = N,
                    n_test: int = N_TEST, repeats: int = 1, broken: Iterable[int] = (), **meta: object) -> Path:
    """Aggregate a planted sweep with src.estimate (load, estimate, summarize, write_outputs) into
    sweep_dir/estimates; meta overrides the records' metadata (model, data_fingerprint, ...); the runs numbered
    in `broken` predict nothing right."""
    seeds = list(seeds)
    sweep = planted_sweep(memorized, influencers, seeds, salt, ratio, n, n_test, repeats)
    for k in broken:
        sweep.train_correct[k], sweep.test_correct[k] = False, False
    records = [sweep.record(k, seed=seed, salt=salt, **meta) for k, seed in enumerate(seeds)]
    stats = SweepStats.from_record(records[0], capacity=len(records))
    for record in records[1:]:
        stats.add_record(record)
    stats.sort_by_seed()
    est = estimate(stats, EstimateConfig(null_perms=0))
    write_outputs(sweep_dir / "estimates", stats, est, summarize(stats, est, []))
    return sweep_dir / "estimates"


def load_mem(estimates_dir: Path) -> np.ndarray:
    with np.load(estimates_dir / "estimates.npz", allow_pickle=False) as archive:
        return archive["mem"]


def row_of(rows: list[dict], a: str, b: str) -> dict:
    return next(row for row in rows if (row["a"], row["b"]) == (a, b))


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two sweeps of 'wide' (disjoint seeds) and two of 'deep' (disjoint seeds, another salt), each memorizing its
    own set."""
    root = tmp_path_factory.mktemp("four")
    return {
        "wide": write_estimates(root / "wide", range(10), range(10), model="wide", experiment_hash="h-wide"),
        "wide2": write_estimates(root / "wide2", range(12), range(12), seeds=range(100, 100 + RUNS), model="wide",
                                 experiment_hash="h-wide"),
        "deep": write_estimates(root / "deep", range(5, 15), range(5, 12), model="deep", experiment_hash="h-deep"),
        "deep2": write_estimates(root / "deep2", range(4, 15), range(4, 12), seeds=range(200, 200 + RUNS), salt=1,
                                 model="deep", experiment_hash="h-deep"),
    }


def test_identical_inputs_agree_exactly(four: dict[str, Path]) -> None:
    assert not np.isnan(load_mem(four["wide"])).any()
    [row] = compare([four["wide"], four["wide"]], 0.25)
    assert (row["a"], row["b"], row["relation"]) == ("wide", "wide#2", f"{SHARES}{RUNS} same seeds")
    assert row["common"] == N and row["shared_subsets"] == RUNS
    assert row["pearson"] == pytest.approx(1) and row["spearman"] == pytest.approx(1)
    assert row["jaccard_mem"] == 1 and row["jaccard_pairs"] == 1
    assert (row["memorized_both"], row["pairs_both"]) == (10, 10)


def test_planted_overlap_gives_the_exact_jaccard(four: dict[str, Path]) -> None:
    [row] = compare([four["wide"], four["deep"]], 0.25, labels=["w", "d"])
    assert row["relation"] == DIFFERS + "model" and row["common"] == N
    assert (row["memorized_a"], row["memorized_b"], row["memorized_both"]) == (10, 10, 5)
    assert row["jaccard_mem"] == 5 / 15
    assert (row["pairs_a"], row["pairs_b"], row["pairs_both"]) == (10, 7, 5)
    assert row["jaccard_pairs"] == 5 / 12
    mem_w, mem_d = load_mem(four["wide"]), load_mem(four["deep"])
    assert row["pearson"] == pytest.approx(np.corrcoef(mem_w, mem_d)[0, 1])
    assert row["spearman"] == pytest.approx(spearmanr(mem_w, mem_d).statistic)
    empty = np.array([], dtype=np.int64)
    assert jaccard(empty, empty) == (0, 0, 0, None)  # no example memorized by either: undefined, not 0 or 1


def test_examples_without_an_estimate_are_left_out(tmp_path: Path) -> None:
    # ratio 0.9 over 12 runs: about a quarter of the examples are never left out (NaN), differently per salt.
    dirs = [write_estimates(tmp_path / f"s{salt}", range(15), range(15), seeds=range(12), salt=salt, ratio=0.9)
            for salt in (0, 1)]
    mem_a, mem_b = (load_mem(path) for path in dirs)
    common = ~np.isnan(mem_a) & ~np.isnan(mem_b)
    planted_common = int(common[:15].sum())
    assert np.isnan(mem_a[:15]).sum() and np.isnan(mem_b[:15]).sum() and planted_common < 15 - 1
    [row] = compare(dirs, 0.25)
    assert row["common"] == common.sum()
    assert row["pearson"] == pytest.approx(np.corrcoef(mem_a[common], mem_b[common])[0, 1])
    assert row["spearman"] == pytest.approx(spearmanr(mem_a[common], mem_b[common]).statistic)
    assert row["memorized_a"] == row["memorized_b"] == row["memorized_both"] == planted_common
    assert row["pairs_a"] == row["pairs_b"] == row["pairs_both"] == planted_common
    assert row["jaccard_mem"] == row["jaccard_pairs"] == 1


def test_same_architecture_pairs_are_the_noise_floor(four: dict[str, Path]) -> None:
    rows = compare([four[name] for name in ("wide", "wide2", "deep")], 0.25)
    floor = row_of(rows, "wide", "wide2")
    assert floor["relation"] == SAME and floor["shared_subsets"] == 0 and floor["jaccard_mem"] == 10 / 12
    assert all(floor[f"floor_{metric}"] is None for metric in ("pearson", "jaccard_mem"))
    for cross in (row_of(rows, "wide", "deep"), row_of(rows, "wide2", "deep")):
        assert cross["relation"] == DIFFERS + "model"
        assert cross["floor_jaccard_mem"] == floor["jaccard_mem"]
        assert cross["floor_spearman"] == floor["spearman"]
    rows = compare([four[name] for name in ("wide", "wide2", "deep", "deep2")], 0.25)
    deep_floor = row_of(rows, "deep", "deep2")
    assert deep_floor["relation"] == SAME_BUT_SALT and deep_floor["jaccard_pairs"] == 7 / 8
    both = row_of(rows, "wide", "deep")["floor_jaccard_pairs"]
    assert both == pytest.approx(math.sqrt(row_of(rows, "wide", "wide2")["jaccard_pairs"] * 7 / 8))


def test_cli_writes_the_three_files(four: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("src.compare", str(four["wide"].parent), str(four["wide2"]), str(four["deep"]),
                     "--labels", "w1,w2,d", "--theta-mem", "0.5", "--out", str(out), cwd=PROJECT_ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["compare.csv", "compare.json", "compare.png"]
    with open(out / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    cross = DIFFERS + "model"
    assert [(row["a"], row["b"], row["relation"]) for row in rows] == [("w1", "w2", SAME), ("w1", "d", cross),
                                                                       ("w2", "d", cross)]
    assert rows[0]["floor_spearman"] == "" and float(rows[1]["jaccard_mem"]) == pytest.approx(5 / 15)
    document = json.loads((out / "compare.json").read_text())
    assert document["theta_mem"] == 0.5 and [item["label"] for item in document["inputs"]] == ["w1", "w2", "d"]
    assert document["floors"] == [{"experiment": "h-wide/subsample", "model": "wide", "dataset": "synthetic", "rows": 1,
                                   **{key: document["pairs"][0][key] for key in ("pearson", "spearman",
                                                                                 "jaccard_mem", "jaccard_pairs")}}]
    image = matplotlib.image.imread(out / "compare.png")
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    assert SAME in result.stdout and "agreement [noise floor]" in result.stdout
    assert "w1 vs d: pearson" in result.stdout and "wrote compare.csv, compare.json, compare.png" in result.stdout


def test_compare_json_names_the_estimates_of_each_input(four: dict[str, Path], tmp_path: Path) -> None:
    """Each input's fingerprint (src.report checks an embedded comparison by it): the same for the estimates
    written again and read back, another for estimates that differ in one value."""
    est = read_estimates(four["wide"])
    write_estimates_dir(tmp_path / "again", Estimates(est.summary, est.arrays))
    changed = {**est.arrays, "mem": est.mem.copy()}
    changed["mem"][0] += 0.5
    write_estimates_dir(tmp_path / "changed", Estimates(est.summary, changed))
    assert main([str(four["wide"]), str(tmp_path / "again"), str(tmp_path / "changed"), "--labels", "w,a,c",
                 "--out", str(tmp_path / "out")]) == 0
    document = json.loads((tmp_path / "out" / "compare.json").read_text())
    fingerprints = [item["estimates_fingerprint"] for item in document["inputs"]]
    assert fingerprints[0] == fingerprints[1] == est.fingerprint != fingerprints[2]
    assert [item["runs"] for item in document["inputs"]] == [RUNS] * 3


def test_cli_notes_shared_subsets_and_missing_floor(four: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(four["wide"]), str(four["wide"]), "--out", str(tmp_path / "a")]) == 0
    assert "common seeds, which fix the models' initialisations and data order" in capsys.readouterr().out
    assert main([str(four["wide"]), str(four["deep"]), "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "no noise floor for deep, wide (no second sweep of its experiment on disjoint seeds)" in out
    assert "another subset.salt" not in out


def _config(mean: float, salt: int = 0, repeats: int = 1) -> dict:
    """The part of a record's config that the experiment identity reads (one MNIST-5k MLP recipe)."""
    return {"dataset": {"normalize": {"mean": [mean], "std": [0.3081]}}, "batch_size": 128,
            "model": {"timm_name": "meminf_mlp", "kwargs": {"hidden": [512, 256]}},
            "subset": {"ratio": 0.7, "salt": salt, "repeats": repeats},
            "optim": {"_target_": "torch.optim.SGD", "lr": 0.1},
            "trainer": {"max_epochs": 10}}


def test_a_noise_floor_is_one_experiment_not_one_architecture(tmp_path: Path) -> None:
    """Two MLP sweeps of one data set that differ in input normalisation are two experiments."""
    standardised = write_estimates(tmp_path / "a", range(10), range(10), model="mlp", config=_config(0.1307))
    scaled = write_estimates(tmp_path / "b", range(10), range(10), seeds=range(100, 100 + RUNS), model="mlp",
                             config=_config(0.0))
    again = write_estimates(tmp_path / "c", range(10), range(10), seeds=range(200, 200 + RUNS), model="mlp",
                            config=_config(0.1307))
    rows = compare([standardised, scaled, again], 0.25)
    assert row_of(rows, "a", "b")["relation"] == DIFFERS + "data.normalize"
    assert row_of(rows, "a", "c")["relation"] == SAME


def test_a_noise_floor_may_differ_in_the_salt_but_not_share_seeds(tmp_path: Path) -> None:
    """Another salt on the same seeds shares the models' initialisations and data order: no floor. On disjoint
    seeds it is a floor of the experiment, as the same salt is."""
    made = {name: write_estimates(tmp_path / name, range(10), range(10), seeds=range(first, first + RUNS), salt=salt,
                                  model="mlp", config=_config(mean, salt))
            for name, first, salt, mean in (("s0", 0, 0, 0.1307), ("s1", 0, 1, 0.1307), ("s1_far", 100, 1, 0.1307),
                                            ("other", 200, 0, 0.0))}
    rows = compare(list(made.values()), 0.25)
    assert row_of(rows, "s0", "s1")["relation"] == f"{SHARES}{RUNS} same seeds"
    assert row_of(rows, "s0", "s1_far")["relation"] == SAME_BUT_SALT
    assert row_of(rows, "s1", "s1_far")["relation"] == SAME
    floors = [row_of(rows, "s0", "s1_far"), row_of(rows, "s1", "s1_far")]
    cross = row_of(rows, "s0", "other")
    assert cross["relation"] == DIFFERS + "data.normalize"
    assert cross["floor_spearman"] == pytest.approx(np.mean([row["spearman"] for row in floors]))
    assert row_of(rows, "s0", "s1")["floor_jaccard_mem"] == pytest.approx(np.mean([r["jaccard_mem"] for r in floors]))


def test_disjoint_seeds_of_common_repeat_groups_are_said_to_share_subsets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With subset.repeats=2, seeds 2k and 2k+1 train one subset: even and odd seeds are disjoint, not independent."""
    made = [write_estimates(tmp_path / name, range(10), range(10), seeds=seeds, repeats=2, model="mlp",
                            config=_config(0.1307, repeats=2))
            for name, seeds in (("even", range(0, 2 * RUNS, 2)), ("odd", range(1, 2 * RUNS, 2)),
                                ("far", range(1000, 1000 + RUNS)))]
    rows = compare(made, 0.25)
    assert row_of(rows, "even", "odd")["relation"] == SAME and row_of(rows, "even", "odd")["shared_subsets"] == RUNS
    assert row_of(rows, "even", "far")["shared_subsets"] == 0
    assert main([*map(str, made[:2]), "--out", str(tmp_path / "out")]) == 0
    assert f"even and odd train {RUNS} common subsets" in capsys.readouterr().out


@pytest.fixture(scope="module")
def salted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four 8-seed digits MLP sweeps of one experiment: salt 0 and 1, each on seeds 0..7 (lo) and 8..15 (hi)."""
    root = tmp_path_factory.mktemp("salted")
    for part, seeds in (("lo", "0..7"), ("hi", "8..15")):
        trained = run_cli("src.run", "-m", *TINY, f"paths.output_dir={root}", f"name=s${{subset.salt}}_{part}",
                          "subset.salt=0,1", f"seed={seeds}", cwd=root)
        assert trained.returncode == 0, trained.stderr[-2000:]
    sweeps = {name: root / name for name in ("s0_lo", "s1_lo", "s0_hi", "s1_hi")}
    for sweep in sweeps.values():
        assert estimate_main([str(sweep), "--null-perms", "0", "--gallery", "0"]) == 0
    return sweeps


@pytest.mark.slow
def test_trained_sweeps_give_a_floor_on_disjoint_seeds_only(salted: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rows = compare(list(salted.values()), 0.25)
    assert {(row["a"], row["b"]): row["relation"] for row in rows} == {
        ("s0_lo", "s1_lo"): f"{SHARES}8 same seeds", ("s0_hi", "s1_hi"): f"{SHARES}8 same seeds",
        ("s0_lo", "s0_hi"): SAME, ("s1_lo", "s1_hi"): SAME,
        ("s0_lo", "s1_hi"): SAME_BUT_SALT, ("s1_lo", "s0_hi"): SAME_BUT_SALT}
    capsys.readouterr()
    out = tmp_path / "out"
    assert main([*map(str, salted.values()), "--out", str(out)]) == 0
    document = json.loads((out / "compare.json").read_text())
    [floor] = document["floors"]
    assert floor["rows"] == 4 and floor["spearman"] is not None
    shares = [row for row in document["pairs"] if row["relation"].startswith(SHARES)]
    assert len(shares) == 2 and all(row["floor_spearman"] == floor["spearman"] for row in shares)
    printed = capsys.readouterr().out
    assert printed.count("gives no noise floor") == 2 and "another subset.salt" not in printed


INCOMPARABLE: dict[str, Callable[[Path], Path]] = {
    "data_fingerprint": lambda root: write_estimates(root, range(10), range(10), data_fingerprint="fp1"),
    "n_train": lambda root: write_estimates(root, range(10), range(10), n=N + 1),
    "n_test": lambda root: write_estimates(root, range(10), range(10), n_test=N_TEST + 1),
}


@pytest.mark.parametrize("field", sorted(INCOMPARABLE))
def test_incomparable_inputs_are_refused(four: dict[str, Path], tmp_path: Path, field: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    other = INCOMPARABLE[field](tmp_path / "other")
    out = tmp_path / "out"
    assert main([str(four["wide"]), str(other), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1
    assert f"not estimates of the same data: {field}" in captured.err and not out.exists()
    with pytest.raises(MeminfError, match=field):
        compare([four["wide"], other], 0.25)


@pytest.mark.parametrize(("args", "message"), [
    (["{wide}"], "at least two"),
    (["{wide}", "{deep}", "--labels", "x"], "2 distinct non-empty labels"),
    (["{wide}", "{deep}", "--labels", "x,x"], "2 distinct non-empty labels"),
    (["{wide}", "{missing}"], "no estimates.npz"),
    (["{wide}", "{deep}", "--theta-mem", "nan"], "finite"),
])
def test_bad_arguments_give_one_line(four: dict[str, Path], tmp_path: Path, args: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = [arg.format(missing=tmp_path / "missing", **four) for arg in args]
    assert main([*argv, "--out", str(out)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_damaged_estimates_give_one_line(four: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    damaged = tmp_path / "damaged" / "estimates"
    damaged.mkdir(parents=True)
    with np.load(four["wide"] / "estimates.npz", allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files if key != "seeds"}
    np.savez(damaged / "estimates.npz", **arrays)
    assert main([str(four["wide"]), str(damaged), "--out", str(tmp_path / "out")]) == 2
    assert "missing arrays seeds" in capsys.readouterr().err
    arrays["seeds"], arrays["pair_train_idx"] = arrays["pair_train_idx"], arrays["pair_train_idx"][:-1]
    np.savez(damaged / "estimates.npz", **arrays)
    assert main([str(four["wide"]), str(damaged), "--out", str(tmp_path / "out")]) == 2
    assert "pair_train_idx and pair_test_idx differ in length" in capsys.readouterr().err


def test_a_side_with_unhealthy_runs_or_under_fitting_is_flagged(four: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20 §1: the table, compare.csv/json, the notes and compare.png flag an input whose sweep has runs at
    chance (here runs 3 and 7: in-subset train accuracy 0.95, below the contract's 0.99: under-fit too)."""
    broken = write_estimates(tmp_path / "broken", range(10), range(10), broken=(3, 7), model="wide",
                             experiment_hash="h-wide")
    out = tmp_path / "out"
    assert main([str(four["wide"]), str(broken), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    warning = "2 unhealthy run(s) used (seeds 3, 7); under-fit (in-subset train acc 0.9500 < 0.99)"
    assert warning in printed and f"note: broken: {warning}: models that did not train or fit" in printed
    [row] = json.loads((out / "compare.json").read_text())["pairs"]
    assert (row["health_a"], row["health_b"]) == ("ok", warning)
    inputs = json.loads((out / "compare.json").read_text())["inputs"]
    assert [(item["unhealthy_seeds"], item["warnings"]) for item in inputs] == [([], []), ([3, 7], warning.split("; "))]
    with open(out / "compare.csv", newline="") as handle:
        assert next(csv.DictReader(handle))["health_b"] == warning
    clean = tmp_path / "clean"
    assert main([str(four["wide"]), str(four["wide2"]), "--out", str(clean)]) == 0
    flagged, unflagged = (matplotlib.image.imread(path / "compare.png") for path in (out, clean))
    assert flagged.shape[0] > unflagged.shape[0]  # the warnings below the matrices

