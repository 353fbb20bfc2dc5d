"""wandb runs of the aggregator and the comparison (training runs: src/tracking/loggers.py); offline
automatically without credentials (`python -m src.sync` later: src/tracking/sync.py).

`python -m src.estimate ... --wandb`: one run, job_type aggregate, group = the experiment name.
- config: the experiment's resolved config as its records store it, the shape of a training job's config
  (`dataset`, `model`, `optim`, `schedule`, `trainer`, `subset`, ...; without the per-run `seed` and `seeds`),
  so that `model.name` and `dataset.name` group aggregate and training runs alike (turn-over dropout, whose
  estimates come from no records: `name`, `dataset.name`, `model.name`, `subset.ratio` from the summary); plus
  `estimate` (`estimator`, `K`: the runs used, `thresholds`), `experiment_hash` and `experiment_identity`.
- summary (measured numbers only; a key is absent where its number is undefined): `test_acc`,
  `train_acc_in_subset`, `train_acc_out_of_subset` (means over the runs), `examples_with_estimate`, `memorized`
  (mem >= theta_mem), `mem_fraction` (memorized / examples with an estimate), `mem_mean`, `mem_median`,
  `pairs`, `pairs_by_chance` (the permutation null's mean), `reliability/<metric>` (split-half agreement:
  RELIABILITY_NUMBERS), `projected/<metric>/...` (its projection to this K: `with_independent_sweep`,
  `runs_for_target`, ...), `run_health/runs_checked`, `run_health/unhealthy_runs`, `run_health/excluded_runs`,
  `run_health/unhealthy_seeds` (a list, when any).
- media: `runs` (a table, one row per run used: RUN_COLUMNS, so the members' results reach wandb without
  training runs), `most_memorized` and `top_pairs` (tables, with images when the training data load here),
  `unhealthy_runs` (a table, when any), `mem_histogram`, `gallery` (gallery.png, when written).
- artifact `<experiment>-estimates` (type estimates): ESTIMATE_FILES. Per-example arrays go only there.

`python -m src.compare ... --wandb`: one run, job_type compare.
- config: `theta_mem`, `inputs` (compare.json's, each with its `estimates_artifact` name), `first_pair`
  (`a` and `b`: `label`, `model`, `dataset`, `K` of the first two inputs).
- summary: `first_pair/<number>` for PAIR_NUMBERS of the first pair, the same keys in every compare run;
  `pairs_compared`.
- tables: `pairs` (one row per pair, PAIR_COLUMNS: each side's floor null where its experiment has none) and
  `matrix_<metric>` (inputs x inputs).
- artifact `compare-<labels>` (type compare): COMPARE_FILES. Lineage (`use_estimates`): online the run uses
  each input's estimates artifact; offline (wandb refuses use_artifact) the compare artifact holds file://
  references `inputs/<label>/estimates.npz` to them instead.

wandb is imported only when a run is started, so nothing else pays for importing it.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import netrc
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.estimates import (
    ESTIMATES_FILE,
    GALLERY_FILE,
    RUN_HEALTH,
    SUMMARY_FILE,
    Estimates,
    read_estimates,
    unhealthy_runs,
)
from src.contracts.records import experiment_metas
from src.data.images import Images, sweep_images
from src.errors import MeminfError
from src.estimators.subsample.reliability import METRICS as RELIABILITY_NUMBERS

WANDB_HOST = "api.wandb.ai"
WANDB_MODES = ("auto", "online", "offline", "disabled")
DEFAULT_PROJECT = "meminf"
# Rows of the aggregator's tables: as many examples as the default gallery.png shows (src.estimate --gallery),
# and the strongest pairs; a Table row with two images is ~2 small media files, so both stay small.
TOP_EXAMPLES = 64
TOP_PAIRS = 32
# wandb artifact names allow letters, digits, '-', '_' and '.'.
ARTIFACT_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
ESTIMATE_FILES = (ESTIMATES_FILE, "memorization.csv", "pairs.csv", SUMMARY_FILE)
COMPARE_FILES = ("compare.csv", "compare.json", "compare.png")
COMPARE_METRICS = ("pearson", "spearman", "jaccard_mem", "jaccard_pairs")
PER_RUN_KEYS = ("seed", "seeds")  # keys of a record's config that name its run, not the experiment
RUN_COLUMNS = ("seed", "test_acc", "train_acc_in_subset", "train_acc_out_of_subset", "healthy")
FIRST_PAIR = "first_pair"
# The measured numbers of a pair row (the compare run's summary keeps the first pair's); PAIR_COLUMNS puts each
# side's label, model, dataset and K (runs used) and the pair's relation before them.
PAIR_NUMBERS = ("common", *COMPARE_METRICS, *(f"floor_{metric}" for metric in COMPARE_METRICS),
                *(f"floor_{side}_{metric}" for side in "ab" for metric in COMPARE_METRICS))
PAIR_COLUMNS = ("a", "b", "relation", "model_a", "dataset_a", "K_a", "model_b", "dataset_b", "K_b", *PAIR_NUMBERS)


# ---------------------------------------------------------------------------------------------- modes

def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str) -> str:
    """`auto`: WANDB_MODE if set, online with credentials, offline without."""
    if requested not in WANDB_MODES:
        raise MeminfError(f"wandb mode {requested!r} is unknown; use one of {', '.join(WANDB_MODES)}")
    if requested != "auto":
        return requested
    return os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")


# ------------------------------------------------------------------------------- aggregator, comparison

def add_wandb_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wandb", action="store_true", help="log the results to a wandb run (offline "
                        "without credentials; upload later with python -m src.sync)")
    parser.add_argument("--wandb-project", default=DEFAULT_PROJECT, help=f"wandb project (default {DEFAULT_PROJECT})")
    parser.add_argument("--wandb-mode", choices=WANDB_MODES, default="auto",
                        help="auto: WANDB_MODE if set, online with credentials, offline without")


# wandb's own folders besides a run's directory: by default under ~/.cache, ~/.config and ~/.local/share (which
# fill a cluster's home quota). Cache (wandb-core's logs), config and artifact downloads go to a folder of this
# process, removed when it exits: nothing there is needed later. The data folder holds artifact staging, which an
# offline run needs until `wandb sync` uploads from it: it goes into the run's own folder (stage_artifacts_in_run).
PROCESS_FOLDERS = {"WANDB_CACHE_DIR": "cache", "WANDB_CONFIG_DIR": "config", "WANDB_ARTIFACT_DIR": "artifacts"}
DATA_DIR = "WANDB_DATA_DIR"


@functools.cache
def _process_folder() -> Path:
    """A temporary folder for this process. Removed at exit after wandb's own exit hook (registered later, by the
    first run, so run earlier) has shut down wandb-core, which writes its log there."""
    folder = tempfile.TemporaryDirectory(prefix="meminf-wandb-", ignore_cleanup_errors=True)
    atexit.register(folder.cleanup)
    return Path(folder.name)


def keep_wandb_files_in(directory: Path) -> None:
    """wandb's cache, config and artifact folders in a temporary folder of this process, and its data folder in
    `directory`/wandb until a run stages its artifacts in its own folder; each where WANDB_* does not say already."""
    for variable, name in PROCESS_FOLDERS.items():
        if variable not in os.environ:
            folder = _process_folder() / name
            folder.mkdir(parents=True, exist_ok=True)
            os.environ[variable] = str(folder)
    os.environ.setdefault(DATA_DIR, str(directory / "wandb" / "data"))


def stage_artifacts_in_run(run: Any) -> None:
    """Right after wandb.init: the run's artifact files (its tables, the estimate or compare files) are staged in
    the run's own folder, `<wandb dir>/offline-run-*/artifacts/staging/`. wandb copies each file there when it is
    added (read-only) and an offline run's log names those copies by absolute path, so `wandb sync` uploads from
    them: kept inside the run, they leave no stray files beside it in the sweep."""
    if not run.disabled:  # a disabled run has no folder
        os.environ[DATA_DIR] = run.settings.sync_dir


def _start_run(args: argparse.Namespace, out_dir: Path, job_type: str, group: str, name: str,
               tags: list[str], config: dict[str, Any]) -> Any:
    import wandb

    keep_wandb_files_in(out_dir)
    run = wandb.init(project=args.wandb_project, mode=wandb_mode(args.wandb_mode), dir=str(out_dir),
                     job_type=job_type, group=group, name=name, tags=tags, config=config)
    stage_artifacts_in_run(run)
    return run


def flat_numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float | int]:
    """The numbers of a nested summary as `a/b` keys; strings, lists and nulls are left out."""
    flat: dict[str, float | int] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flat_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def _wandb_image(image: np.ndarray, caption: str) -> Any:
    """A (C, H, W) image in [0, 1] as a wandb.Image (grey for one channel)."""
    import wandb

    pixels = np.clip(np.round(image.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
    return wandb.Image(pixels[..., 0] if pixels.shape[2] == 1 else pixels, caption=caption)


def _images(images: Images, split: str, indices: np.ndarray) -> np.ndarray | None:
    """The split's images at `indices`, or None (printed why) when they cannot be shown."""
    pictures = images.get(split, indices)
    if pictures is None:
        print(f"wandb: {split} images left out ({images.problem})")
    return pictures


def memorized_table(est: Estimates, images: Images, count: int) -> Any:
    """The `count` most memorized examples (the gallery's order): index, label, orig_label, mem, mem_se, image."""
    import wandb

    arrays = est.arrays
    order = est.most_memorized(count)
    pictures = _images(images, "train", order)
    se = arrays.get("mem_se", np.full(est.n_train, np.nan))
    columns = ["index", "label", "orig_label", "mem", "mem_se"] + (["image"] if pictures is not None else [])
    rows = []
    for k, index in enumerate(order.tolist()):
        row = [index, int(arrays["train_label"][index]), int(arrays["orig_label"][index]),
               float(arrays["mem"][index]), float(se[index])]
        if pictures is not None:
            row.append(_wandb_image(pictures[k], f"{index}: mem {arrays['mem'][index]:.2f}"))
        rows.append(row)
    return wandb.Table(columns=columns, data=rows)


def pairs_table(est: Estimates, images: Images, count: int) -> Any:
    """The `count` strongest high-influence pairs (the estimates keep them by infl, descending)."""
    import wandb

    arrays = est.arrays
    train_idx, test_idx = arrays["pair_train_idx"][:count], arrays["pair_test_idx"][:count]
    train_images, test_images = _images(images, "train", train_idx), _images(images, "test", test_idx)
    with_images = train_images is not None and test_images is not None
    columns = ["train_index", "test_index", "label", "infl", "infl_se", "mem"]
    rows = []
    for k, (i, j) in enumerate(zip(train_idx.tolist(), test_idx.tolist(), strict=True)):
        row = [i, j, int(arrays["test_label"][j]), float(arrays["pair_infl"][k]), float(arrays["pair_infl_se"][k]),
               float(arrays["mem"][i])]
        if with_images:
            row += [_wandb_image(train_images[k], f"train {i}"), _wandb_image(test_images[k], f"test {j}")]
        rows.append(row)
    return wandb.Table(columns=columns + (["train_image", "test_image"] if with_images else []), data=rows)


def estimate_numbers(summary: Mapping[str, Any], mem: np.ndarray,
                     out_of_subset: Sequence[float | None]) -> dict[str, float | int]:
    """run.summary of an aggregate run under the names of the module docstring (absent where undefined)."""
    estimated = mem[~np.isnan(mem)]
    health, reliability = summary.get(RUN_HEALTH), summary.get("reliability") or {}
    unhealthy = len(unhealthy_runs(summary))
    out = [value for value in out_of_subset if value is not None]
    numbers: dict[str, Any] = {
        "test_acc": summary["mean_test_acc"], "train_acc_in_subset": summary["mean_train_in_acc"],
        "train_acc_out_of_subset": float(np.mean(out)) if out else None,
        "examples_with_estimate": summary.get("examples_with_estimate"), "memorized": summary.get("memorized"),
        "mem_fraction": summary["memorized"] / estimated.size if estimated.size else None,
        "mem_mean": float(estimated.mean()) if estimated.size else None,
        "mem_median": float(np.median(estimated)) if estimated.size else None,
        "pairs": summary.get("pairs"), "pairs_by_chance": summary.get("expected_false_pairs"),
        **{f"reliability/{key}": value for key, value in reliability.items() if key in RELIABILITY_NUMBERS},
        **flat_numbers(reliability.get("projection") or {}, "projected/"),
    }
    if isinstance(health, Mapping):
        numbers.update({"run_health/runs_checked": health["runs_checked"], "run_health/unhealthy_runs": unhealthy,
                        "run_health/excluded_runs": unhealthy if health["excluded"] else 0})
    return {key: value for key, value in numbers.items() if isinstance(value, (int, float))
            and not isinstance(value, bool)}


def unhealthy_table(unhealthy: Sequence[Mapping[str, Any]]) -> Any:
    """One row per unhealthy run (src/estimators/subsample/health.py): seed, accuracies, why."""
    import wandb

    columns = ["seed", "test_acc", "train_in_acc", "reasons"]
    return wandb.Table(columns=columns, data=[[run.get("seed"), run.get("test_acc"), run.get("train_in_acc"),
                                               "; ".join(run.get("reasons", []))] for run in unhealthy])


def run_rows(est: Estimates, metas: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """RUN_COLUMNS for each run the estimates used: accuracies from the estimates, the out-of-subset accuracy from
    its record (null where none is found), healthy unless the run-health check named it."""
    arrays = est.arrays
    seeds = arrays["seeds"].tolist()
    out_of_subset = {int(meta["seed"]): meta.get("train_out_acc") for meta in metas}
    unhealthy = {int(run["seed"]) for run in unhealthy_runs(est.summary)}
    test_acc, train_in_acc = (arrays.get(key, np.full(len(seeds), np.nan)).tolist()
                              for key in ("test_acc", "train_in_acc"))
    return [[seed, test, train_in, out_of_subset.get(seed), seed not in unhealthy]
            for seed, test, train_in in zip(seeds, test_acc, train_in_acc, strict=True)]


def aggregate_config(summary: Mapping[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """The aggregate run's config: the experiment's resolved config as its records store it (a training job's
    shape; without the per-run keys), or where no record stores one (turn-over dropout's run) the summary's
    dataset, model and subset ratio in that shape; plus `estimate` and the experiment's identity."""
    base = ({key: value for key, value in stored.items() if key not in PER_RUN_KEYS} if stored is not None else
            {"name": summary["experiment_name"], "dataset": {"name": summary["dataset"]},
             "model": {"name": summary["model"]}, "subset": {"ratio": summary["ratio"]}})
    return {**base, "estimate": {"estimator": summary["estimator"], "K": summary["runs_used"],
                                 "thresholds": summary["thresholds"]},
            "experiment_hash": summary["experiment_hash"], "experiment_identity": summary.get("experiment")}


def estimates_artifact(directory: Path, experiment_name: str) -> Any:
    """The artifact of an estimates directory: the aggregate run logs it, a compare run uses the same (same name
    and files, so wandb finds the logged version by its digest)."""
    import wandb

    artifact = wandb.Artifact(artifact_name(f"{experiment_name}-estimates"), type="estimates")
    for file_name in ESTIMATE_FILES:
        if (directory / file_name).is_file():
            artifact.add_file(str(directory / file_name), name=file_name)
    return artifact


def artifact_name(name: str) -> str:
    return ARTIFACT_NAME_UNSAFE.sub("_", name)


def log_estimates(args: argparse.Namespace, out_dir: Path, sweep_dir: Path) -> None:
    """With --wandb: one aggregate run for the estimates written to `out_dir` (the sweep's records give the config,
    the out-of-subset accuracies and the images)."""
    if not args.wandb:
        return
    import wandb

    from src.config.compose import stored_config

    est = read_estimates(out_dir)
    summary, arrays = est.summary, est.arrays
    metas = list(experiment_metas(sweep_dir, str(summary["experiment_hash"])))
    images = sweep_images(sweep_dir, summary)
    name = str(summary["experiment_name"])
    tags = [f"dataset={summary['dataset']}", f"model={summary['model']}", f"ratio={summary['ratio']}",
            f"estimator={summary['estimator']}"]
    run = _start_run(args, out_dir, "aggregate", name, f"{name}/estimates", tags,
                     aggregate_config(summary, stored_config(metas)))
    try:
        rows = run_rows(est, metas)
        out_of_subset = RUN_COLUMNS.index("train_acc_out_of_subset")
        run.summary.update(estimate_numbers(summary, arrays["mem"], [row[out_of_subset] for row in rows]))
        mem = arrays["mem"][~np.isnan(arrays["mem"])]
        media: dict[str, Any] = {"runs": wandb.Table(columns=list(RUN_COLUMNS), data=rows),
                                 "most_memorized": memorized_table(est, images, TOP_EXAMPLES)}
        if est.has("pair_train_idx", "pair_test_idx", "pair_infl", "pair_infl_se"):
            media["top_pairs"] = pairs_table(est, images, TOP_PAIRS)
        unhealthy = unhealthy_runs(summary)
        if unhealthy:
            run.summary["run_health/unhealthy_seeds"] = [run_["seed"] for run_ in unhealthy]
            media["unhealthy_runs"] = unhealthy_table(unhealthy)
        if mem.size:
            media["mem_histogram"] = wandb.Histogram(mem)
        if (out_dir / GALLERY_FILE).is_file():
            media["gallery"] = wandb.Image(str(out_dir / GALLERY_FILE), caption="the most memorized examples")
        run.log(media)
        run.log_artifact(estimates_artifact(out_dir, name))
    finally:
        run.finish()
    print(f"wandb: logged run {run.id} ({run.settings.mode}) under {out_dir / 'wandb'}")


def side_floors(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each input's label -> the noise floor of its experiment (compare.json's `floors`; {} where none exists)."""
    floors = {floor["experiment"]: floor for floor in document["floors"]}
    return {item["label"]: floors.get(item.get("floor_group"), {}) for item in document["inputs"]}


def pair_rows(document: Mapping[str, Any]) -> list[list[Any]]:
    """PAIR_COLUMNS for every pair of compare.json (each side's floor null where its experiment has none)."""
    inputs = {item["label"]: item for item in document["inputs"]}
    floors = side_floors(document)
    rows = []
    for pair in document["pairs"]:
        sides = {side: (inputs[pair[side]], floors[pair[side]]) for side in "ab"}
        row = {"a": pair["a"], "b": pair["b"], "relation": pair["relation"], "common": pair["common"],
               **{f"{key}_{side}": item[source] for side, (item, _) in sides.items()
                  for key, source in (("model", "model"), ("dataset", "dataset"), ("K", "runs"))},
               **{metric: pair[metric] for metric in (*COMPARE_METRICS, *(f"floor_{m}" for m in COMPARE_METRICS))},
               **{f"floor_{side}_{metric}": floor.get(metric) for side, (_, floor) in sides.items()
                  for metric in COMPARE_METRICS}}
        rows.append([row[column] for column in PAIR_COLUMNS])
    return rows


def compare_numbers(rows: Sequence[Sequence[Any]]) -> dict[str, float | int]:
    """run.summary of a compare run: `first_pair/<column>` for the numbers of the first pair (the first two
    inputs), the same keys in every compare run (absent where undefined), and `pairs_compared`."""
    first = dict(zip(PAIR_COLUMNS, rows[0], strict=True))
    return {"pairs_compared": len(rows), **{f"{FIRST_PAIR}/{column}": first[column] for column in PAIR_NUMBERS
                                            if first[column] is not None}}


def agreement_matrix_table(labels: Sequence[str], rows: Sequence[Mapping[str, Any]], metric: str) -> Any:
    """One row per input: its agreement `metric` with every input (1 on the diagonal, null when undefined)."""
    import wandb

    index = {label: k for k, label in enumerate(labels)}
    matrix: list[list[float | None]] = [[1.0 if i == j else None for j in range(len(labels))]
                                        for i in range(len(labels))]
    for row in rows:
        i, j = index[row["a"]], index[row["b"]]
        matrix[i][j] = matrix[j][i] = row[metric]
    return wandb.Table(columns=["input", *labels], data=[[label, *values] for label, values in zip(labels, matrix,
                                                                                                   strict=True)])


def compare_config(document: Mapping[str, Any]) -> dict[str, Any]:
    """theta_mem, the inputs (each with the name of its estimates artifact) and the first pair's sides under fixed
    keys (`first_pair.a.model`, ...)."""
    inputs = [{**item, "estimates_artifact": artifact_name(f"{item['experiment_name']}-estimates")}
              for item in document["inputs"]]
    sides = {side: {"label": item["label"], "model": item["model"], "dataset": item["dataset"], "K": item["runs"]}
             for side, item in zip("ab", inputs, strict=False)}
    return {"theta_mem": document["theta_mem"], "inputs": inputs, FIRST_PAIR: sides}


def use_estimates(run: Any, document: Mapping[str, Any], artifact: Any) -> None:
    """Lineage: online, the run uses each input's estimates artifact (wandb finds the version the aggregate run
    logged by its digest, or creates it); offline, wandb 0.31 refuses use_artifact (TypeError), so `artifact` (the
    comparison's) holds a file:// reference (path and checksum) to each input's estimates.npz instead."""
    for item in document["inputs"]:
        directory = Path(item["dir"])
        if run.offline:
            artifact.add_reference(f"file://{(directory / ESTIMATES_FILE).resolve()}",
                                   name=f"inputs/{artifact_name(item['label'])}/{ESTIMATES_FILE}")
        else:
            run.use_artifact(estimates_artifact(directory, str(item["experiment_name"])))


def log_compare(args: argparse.Namespace, out_dir: Path) -> None:
    """With --wandb: one compare run for the comparison written to `out_dir` (its compare.json)."""
    if not args.wandb:
        return
    import wandb

    document = json.loads((out_dir / "compare.json").read_text())
    inputs, pairs = document["inputs"], document["pairs"]
    labels = [item["label"] for item in inputs]
    tags = sorted({f"{key}={item[key]}" for item in inputs for key in ("dataset", "model", "ratio")})
    group = "compare:" + ",".join(sorted({str(item["dataset"]) for item in inputs}))
    run = _start_run(args, out_dir, "compare", group, f"compare {' '.join(labels)}", tags, compare_config(document))
    try:
        rows = pair_rows(document)
        run.summary.update(compare_numbers(rows))
        tables = {"pairs": wandb.Table(columns=list(PAIR_COLUMNS), data=rows)}
        tables.update({f"matrix_{metric}": agreement_matrix_table(labels, pairs, metric) for metric in COMPARE_METRICS})
        run.log(tables)
        artifact = wandb.Artifact(artifact_name("compare-" + "-".join(labels)), type="compare")
        for file_name in COMPARE_FILES:
            artifact.add_file(str(out_dir / file_name), name=file_name)
        use_estimates(run, document, artifact)
        run.log_artifact(artifact)
    finally:
        run.finish()
    print(f"wandb: logged run {run.id} ({run.settings.mode}) under {out_dir / 'wandb'}")
