"""wandb runs of the aggregator and the comparison (training runs: src/tracking/loggers.py); offline
automatically without credentials (`python -m src.sync` later: src/tracking/sync.py).

- `python -m src.estimate ... --wandb`: one run, job_type aggregate, group = the experiment name: the
  summary numbers in run.summary, the mem histogram, a table of the most memorized examples and one of the
  strongest high-influence pairs (with images when the training data load here), and the estimate files
  as an artifact. Per-example arrays go only into the artifact, never into metrics.
- `python -m src.compare ... --wandb`: one run, job_type compare: the agreement numbers per pair of
  inputs in run.summary, the pair rows and the agreement matrices as tables, the outputs as an artifact.

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
    RUN_HEALTH,
    SUMMARY_FILE,
    Estimates,
    read_estimates,
    unhealthy_runs,
)
from src.data.images import Images, sweep_images
from src.errors import MeminfError

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
    return wandb.init(project=args.wandb_project, mode=wandb_mode(args.wandb_mode), dir=str(out_dir),
                      job_type=job_type, group=group, name=name, tags=tags, config=config)


def _log_files(run: Any, out_dir: Path, name: str, kind: str, files: Sequence[str]) -> None:
    import wandb

    artifact = wandb.Artifact(ARTIFACT_NAME_UNSAFE.sub("_", name), type=kind)
    for file_name in files:
        if (out_dir / file_name).is_file():
            artifact.add_file(str(out_dir / file_name), name=file_name)
    run.log_artifact(artifact)


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


def estimate_numbers(summary: Mapping[str, Any], mem: np.ndarray) -> dict[str, float | int]:
    """run.summary of an aggregator run: the summary's numbers plus the mean and median of mem."""
    estimated = mem[~np.isnan(mem)]
    numbers = flat_numbers(summary)
    if RUN_HEALTH in summary:
        numbers["run_health/unhealthy_runs"] = len(unhealthy_runs(summary))
    if estimated.size:
        numbers.update({"mem_mean": float(estimated.mean()), "mem_median": float(np.median(estimated))})
    return numbers


def unhealthy_table(unhealthy: Sequence[Mapping[str, Any]]) -> Any:
    """One row per unhealthy run (src/estimators/subsample/health.py): seed, accuracies, why."""
    import wandb

    columns = ["seed", "test_acc", "train_in_acc", "reasons"]
    return wandb.Table(columns=columns, data=[[run.get("seed"), run.get("test_acc"), run.get("train_in_acc"),
                                               "; ".join(run.get("reasons", []))] for run in unhealthy])


def log_estimates(args: argparse.Namespace, out_dir: Path, sweep_dir: Path) -> None:
    """With --wandb: one aggregate run for the estimates written to `out_dir` (the sweep's records find the
    images)."""
    if not args.wandb:
        return
    import wandb

    est = read_estimates(out_dir)
    summary, arrays = est.summary, est.arrays
    images = sweep_images(sweep_dir, summary)
    name = str(summary["experiment_name"])
    tags = [f"dataset={summary['dataset']}", f"model={summary['model']}", f"ratio={summary['ratio']}",
            f"estimator={summary['estimator']}"]
    run = _start_run(args, out_dir, "aggregate", name, f"{name}/estimates", tags,
                     {"thresholds": summary["thresholds"], "experiment_hash": summary["experiment_hash"]})
    try:
        run.summary.update(estimate_numbers(summary, arrays["mem"]))
        mem = arrays["mem"][~np.isnan(arrays["mem"])]
        tables = {"most_memorized": memorized_table(est, images, TOP_EXAMPLES)}
        if est.has("pair_train_idx", "pair_test_idx", "pair_infl", "pair_infl_se"):
            tables["top_pairs"] = pairs_table(est, images, TOP_PAIRS)
        unhealthy = unhealthy_runs(summary)
        if unhealthy:
            run.summary["run_health/unhealthy_seeds"] = [run_["seed"] for run_ in unhealthy]
            tables["unhealthy_runs"] = unhealthy_table(unhealthy)
        run.log({**({"mem_histogram": wandb.Histogram(mem)} if mem.size else {}), **tables})
        _log_files(run, out_dir, f"{name}-estimates", "estimates", ESTIMATE_FILES)
    finally:
        run.finish()
    print(f"wandb: logged run {run.id} ({run.settings.mode}) under {out_dir / 'wandb'}")


def compare_numbers(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """run.summary of a comparison run: `<a> vs <b>/<metric>` for every defined number of every pair."""
    return {f"{row['a']} vs {row['b']}/{metric}": row[metric]
            for row in rows for metric in ("common", *COMPARE_METRICS, *(f"floor_{m}" for m in COMPARE_METRICS))
            if row[metric] is not None}


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


def log_compare(args: argparse.Namespace, out_dir: Path) -> None:
    """With --wandb: one compare run for the comparison written to `out_dir` (its compare.json)."""
    if not args.wandb:
        return
    import wandb

    document = json.loads((out_dir / "compare.json").read_text())
    inputs, rows = document["inputs"], document["pairs"]
    labels = [item["label"] for item in inputs]
    tags = sorted({f"{key}={item[key]}" for item in inputs for key in ("dataset", "model", "ratio")})
    group = "compare:" + ",".join(sorted({str(item["dataset"]) for item in inputs}))
    run = _start_run(args, out_dir, "compare", group, f"compare {' '.join(labels)}", tags,
                     {"theta_mem": document["theta_mem"], "inputs": inputs})
    try:
        run.summary.update(compare_numbers(rows))
        pair_columns = list(rows[0])
        tables = {"pairs": wandb.Table(columns=pair_columns, data=[[row[c] for c in pair_columns] for row in rows])}
        tables.update({f"matrix_{metric}": agreement_matrix_table(labels, rows, metric) for metric in COMPARE_METRICS})
        run.log(tables)
        _log_files(run, out_dir, "compare-" + "-".join(labels), "compare", COMPARE_FILES)
    finally:
        run.finish()
    print(f"wandb: logged run {run.id} ({run.settings.mode}) under {out_dir / 'wandb'}")
