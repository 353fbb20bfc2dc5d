"""Issue 22 §1, §2, §5: the aggregate runs of an mlp and a cnn_small sweep of the digits and their compare run,
offline, read back from wandb's log (tests/wandb_offline.py): config, summary keys, table columns, lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import src.estimate as estimate_cli
from src import compare as compare_cli
from src.tracking.wandb import ESTIMATE_FILES, aggregate_config, estimate_numbers, use_estimates
from src.training.job import run_job
from tests.test_tracking import _tiny_cfg
from tests.wandb_offline import OfflineRun, offline_runs, record_key

SEEDS = "[0,1,2,3]"
# The aggregate run's summary keys on these sweeps (src/tracking/wandb.py's docstring names them all).
AGGREGATE_NUMBERS = {
    "test_acc", "train_acc_in_subset", "train_acc_out_of_subset", "examples_with_estimate", "memorized",
    "mem_fraction", "mem_mean", "mem_median", "pairs", "pairs_by_chance", "run_health/runs_checked",
    "run_health/unhealthy_runs", "run_health/excluded_runs",
    *(f"reliability/{metric}" for metric in ("spearman_non_trivial", "jaccard_memorized", "jaccard_pairs", "pearson",
                                             "se_calibration", "se_calibration_non_trivial"))}
AGGREGATE_MEDIA = {"runs", "most_memorized", "top_pairs", "mem_histogram", "gallery"}
WANDB_OWN = {"_wandb", "_runtime", "_timestamp", "_step"}
TRAINING_GROUPS = {"dataset", "model", "optim", "schedule", "trainer", "subset"}
FIRST_PAIR_NUMBERS = {"common", "pearson", "spearman", "jaccard_mem", "jaccard_pairs"}
METRICS = ("pearson", "spearman", "jaccard_mem", "jaccard_pairs")


def config_of(run: OfflineRun) -> dict[str, Any]:
    return {record_key(item): json.loads(item.value_json) for item in run.run.config.update
            if record_key(item) != "_wandb"}


def leaves(values: dict[str, Any], prefix: str = "") -> set[str]:
    """Every leaf of a nested config as `a/b/c` (wandb's separator of summary keys)."""
    found: set[str] = set()
    for key, value in values.items():
        found |= leaves(value, f"{prefix}{key}/") if isinstance(value, dict) else {f"{prefix}{key}"}
    return found


@pytest.fixture(scope="module")
def estimated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sweeps of 4 seeds (1 epoch, one packed job) of mlp and cnn_small, and of mlp again on disjoint seeds (its
    noise floor): name -> the sweep directory, estimated without wandb."""
    output = tmp_path_factory.mktemp("models")
    sweeps = {"mlp": ("model=mlp", SEEDS), "cnn_small": ("model=cnn_small", SEEDS), "mlp_b": ("model=mlp", "[4,5,6,7]")}
    for name, (model, seeds) in sweeps.items():
        run_job(_tiny_cfg(output, f"name={name}", model, f"seeds={seeds}"))
        assert estimate_cli.main([str(output / name), "--null-perms", "1"]) == 0
    return {name: output / name for name in sweeps}


def check_config(run: OfflineRun, model: str) -> None:
    config = config_of(run)
    assert TRAINING_GROUPS | {"estimate", "experiment_hash", "experiment_identity", "name"} <= set(config)
    assert config["model"]["name"] == model and config["dataset"]["name"] == "digits"
    assert config["trainer"]["max_epochs"] == 1 and config["subset"]["ratio"] == 0.7
    assert config["estimate"]["K"] == 4 and config["estimate"]["estimator"] == "subsample"
    assert config["estimate"]["thresholds"]["theta_mem"] == 0.25
    assert "seed" not in config and "seeds" not in config  # the run's, not the experiment's
    assert config["experiment_identity"]["model.timm_name"] == config["model"]["timm_name"]


def check_summary(run: OfflineRun) -> None:
    """Measured numbers under the documented names, the media; no hyperparameter among the numbers."""
    numbers = set(run.summary) - AGGREGATE_MEDIA - WANDB_OWN
    projected = {key for key in numbers if key.startswith("projected/")}
    assert numbers - projected == AGGREGATE_NUMBERS
    assert run.history_keys >= AGGREGATE_MEDIA
    assert not numbers & leaves(config_of(run))
    assert not any(key.startswith(("experiment", "estimate/", "thresholds/", "trainer/", "model/")) for key in numbers)
    assert run.summary["gallery"]["_type"] == "image-file" and run.summary["mem_histogram"]["_type"] == "histogram"


def check_runs_table(run: OfflineRun) -> None:
    table = run.table("runs")
    assert table["columns"] == ["seed", "test_acc", "train_acc_in_subset", "train_acc_out_of_subset", "healthy"]
    assert [row[0] for row in table["data"]] == [0, 1, 2, 3] and all(row[4] is True for row in table["data"])
    assert all(0 <= value <= 1 for row in table["data"] for value in row[1:4])  # out-of-subset from the records
    assert run.summary["test_acc"] == pytest.approx(sum(row[1] for row in table["data"]) / 4)


class OnlineRun:
    """What use_estimates sees of an online run: its mode and the artifacts it is asked to use."""

    offline = False

    def __init__(self) -> None:
        self.used: list[Any] = []

    def use_artifact(self, artifact: Any) -> None:
        self.used.append(artifact)


def check_online_lineage(runs: dict[str, OfflineRun], directories: dict[str, Path]) -> None:
    """Online (no server here: a stand-in run), a compare run uses artifacts of the names, types and files the
    aggregate runs logged, so wandb resolves them to the logged versions by their digest."""
    run = OnlineRun()
    use_estimates(run, {"inputs": [{"label": name, "dir": str(path), "experiment_name": name}
                                   for name, path in directories.items()]}, artifact=None)
    for artifact, name in zip(run.used, directories, strict=True):
        [logged] = [item for item in runs[name].artifacts if item.type == "estimates"]
        assert (artifact.name, artifact.type, artifact.digest) == (logged.name, "estimates", logged.digest)
        assert sorted(artifact.manifest.entries) == sorted(ESTIMATE_FILES)


def test_aggregate_runs_of_two_models(no_network: list[Any], estimated: dict[str, Path], tmp_path: Path) -> None:
    runs, directories = {}, {}
    for model in ("mlp", "cnn_small"):
        directories[model] = tmp_path / model
        assert estimate_cli.main([str(estimated[model]), "--out", str(directories[model]), "--null-perms", "1",
                                  "--wandb"]) == 0
        [runs[model]] = offline_runs(directories[model])
        check_config(runs[model], model)
        check_summary(runs[model])
        check_runs_table(runs[model])
    check_online_lineage(runs, directories)


def test_compare_run_rows_fixed_keys_and_lineage(no_network: list[Any], estimated: dict[str, Path],
                                                 tmp_path: Path) -> None:
    inputs = [str(estimated[name] / "estimates") for name in ("mlp", "cnn_small", "mlp_b")]
    assert compare_cli.main([*inputs, "--out", str(tmp_path / "cmp"), "--wandb"]) == 0
    [run] = offline_runs(tmp_path / "cmp")
    config = config_of(run)
    assert config["first_pair"] == {"a": {"label": "mlp", "model": "mlp", "dataset": "digits", "K": 4},
                                    "b": {"label": "cnn_small", "model": "cnn_small", "dataset": "digits", "K": 4}}
    assert [item["estimates_artifact"] for item in config["inputs"]] == ["mlp-estimates", "cnn_small-estimates",
                                                                         "mlp_b-estimates"]
    table = run.table("pairs")
    floors = [f"floor_{side}{metric}" for side in ("", "a_", "b_") for metric in METRICS]
    assert table["columns"] == ["a", "b", "relation", "model_a", "dataset_a", "K_a", "model_b", "dataset_b", "K_b",
                                "common", *METRICS, *floors]
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [(row["a"], row["b"]) for row in rows] == [("mlp", "cnn_small"), ("mlp", "mlp_b"), ("cnn_small", "mlp_b")]
    first = rows[0]
    assert first["floor_a_pearson"] == rows[1]["pearson"] and first["floor_b_pearson"] is None  # mlp's floor only
    numbers = set(run.summary) - WANDB_OWN - {"pairs"} - {f"matrix_{metric}" for metric in METRICS}
    assert numbers == {"pairs_compared", *(f"first_pair/{key}" for key in FIRST_PAIR_NUMBERS),
                       *(f"first_pair/floor_{metric}" for metric in METRICS),
                       *(f"first_pair/floor_a_{metric}" for metric in METRICS)}
    assert run.summary["first_pair/pearson"] == first["pearson"] and run.summary["pairs_compared"] == 3
    references = {entry.path: entry.ref for artifact in run.artifacts if artifact.type == "compare"
                  for entry in artifact.manifest.contents if entry.ref}
    assert references == {f"inputs/{name}/estimates.npz": f"file://{(estimated[name] / 'estimates').resolve()}"
                          "/estimates.npz" for name in ("mlp", "cnn_small", "mlp_b")}



# A turn-over dropout summary's keys that the aggregate run reads (src/estimators/turnover/summary.py): one run,
# no records, no split-half reliability, no run-health check.
TURNOVER_SUMMARY = {"estimator": "turnover", "experiment_name": "turnover_digits", "dataset": "digits",
                    "model": "mlp", "ratio": 1.0, "runs_used": 1, "experiment_hash": "0123456789abcdef",
                    "experiment": {"model.timm_name": "meminf_mlp"}, "mean_test_acc": 0.9, "mean_train_in_acc": 1.0,
                    "examples_with_estimate": 4, "memorized": 1, "pairs": 2, "expected_false_pairs": None,
                    "thresholds": {"theta_mem": 0.25, "theta_infl": 0.15, "top_k": 5, "null_perms": 0, "seed": 0}}


def test_estimates_from_no_records_still_carry_dataset_and_model() -> None:
    """Turn-over dropout's estimates come from no records: the summary gives the config its dataset, model and
    ratio in a training job's shape, and the summary the numbers it has."""
    config = aggregate_config(TURNOVER_SUMMARY, stored=None)
    assert config["dataset"] == {"name": "digits"} and config["model"] == {"name": "mlp"}
    assert config["subset"] == {"ratio": 1.0} and config["estimate"]["K"] == 1
    numbers = estimate_numbers(TURNOVER_SUMMARY, np.array([0.5, 0.0, 0.0, np.nan, 0.0]), [None])
    assert set(numbers) == {"test_acc", "train_acc_in_subset", "examples_with_estimate", "memorized", "mem_fraction",
                            "mem_mean", "mem_median", "pairs"}
    assert numbers["mem_fraction"] == 0.25


def test_runs_left_out_as_unhealthy_are_counted() -> None:
    health = {"runs_checked": 8, "excluded": True, "unhealthy": [{"seed": 3, "reasons": ["test acc at chance"]}]}
    numbers = estimate_numbers({**TURNOVER_SUMMARY, "run_health": health}, np.zeros(4), [0.8, None])
    assert numbers["run_health/excluded_runs"] == numbers["run_health/unhealthy_runs"] == 1
    assert numbers["run_health/runs_checked"] == 8 and numbers["train_acc_out_of_subset"] == 0.8
