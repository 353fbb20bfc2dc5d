"""Agreement between the estimates of several sweeps of one data set (cross-architecture consistency).

    python -m src.compare <estimates A> <estimates B> ... [--labels a,b,...] [--theta-mem 0.25] [--out DIR]

Each argument is a directory written by `python -m src.estimate` (holding estimates.npz) or a sweep
directory holding estimates/. All inputs must estimate the same data: equal data fingerprint (it covers
the flipped labels), n_train, n_test and num_classes; otherwise one `error:` line, exit 2, nothing written.
Labels default to the sweep directory names.

For every pair of inputs (a, b), one row:
- common: training examples with a mem estimate in both; an example without one (NaN) in either input is
  left out of every number below.
- pearson, spearman: correlation of mem over the common examples (Spearman: Pearson of average ranks).
  Undefined (empty in CSV, null in JSON, None in the API) with fewer than 2 common examples or a constant side.
- jaccard_mem: |A and B| / |A or B| of the memorized sets, mem >= --theta-mem among the common examples
  (memorized_a, memorized_b, memorized_both are the set sizes).
- jaccard_pairs: the same for the high-influence (train, test) pairs as each aggregator wrote them (its own
  thresholds: infl >= theta_infl, mem >= its theta_mem, same class), pairs of common train examples only.
  The Jaccard of two empty sets is undefined.
- shared_subsets: seeds both sweeps ran with the same ratio and salt, i.e. identical training subsets.
- relation: `same architecture (noise floor)` when model and dataset agree (two sweeps of one architecture
  with disjoint seeds or another subset.salt): their agreement is what estimation noise alone allows, the
  floor against which cross-architecture numbers are read. Otherwise `cross-architecture`.
- floor_<number> (cross-architecture rows): the geometric mean of the noise floors of a's and b's
  architectures (each the mean over that architecture's same-architecture rows), the one available when
  only one architecture was swept twice, undefined when neither was. For correlations this is the
  attenuation bound: two noisy estimates of one quantity correlate at most sqrt(r_aa r_bb).
- per input, from its summary: model, dataset, runs, mean test accuracy, mean in-subset train accuracy.

Outputs (in --out, default ./compare/), each written atomically after everything is computed: compare.csv
(one row per pair), compare.json (inputs, pairs, floors by architecture, notes) and compare.png (matrices
of spearman, jaccard_mem and jaccard_pairs; boxed cells are same-architecture pairs).

API: `compare(estimates_dirs, theta_mem)` returns the rows as dicts.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from src.errors import ConfigError, MeminfError, cli_exit_code
from src.records import write_atomic
from src.tracking import add_wandb_arguments, log_compare

ESTIMATES_NAME = "estimates.npz"
ARRAYS = ("mem", "pair_train_idx", "pair_test_idx", "seeds", "summary")
SUMMARY_KEYS = ("model", "dataset", "data_fingerprint", "n_train", "n_test", "num_classes", "ratio", "salt",
                "runs_used", "mean_test_acc", "mean_train_in_acc", "thresholds")
COMPARABLE = ("data_fingerprint", "n_train", "n_test", "num_classes")
SAME = "same architecture (noise floor)"
CROSS = "cross-architecture"
METRICS = ("pearson", "spearman", "jaccard_mem", "jaccard_pairs")
MATRICES = (("spearman", "Spearman of mem"), ("jaccard_mem", "Jaccard of memorized sets"),
            ("jaccard_pairs", "Jaccard of high-influence pairs"))
DEFINITIONS = {
    "common": "training examples with a mem estimate in both inputs; all numbers use only these",
    "pearson, spearman": "correlation of mem over the common examples; null when undefined",
    "jaccard_mem": "|A and B| / |A or B| of {mem >= theta_mem}; null when both sets are empty",
    "jaccard_pairs": "the same for the (train, test) high-influence pairs each aggregator wrote",
    "floor_<number>": "geometric mean of the same-architecture agreement of the two architectures",
}


@dataclass(frozen=True)
class Input:
    """The estimates of one sweep, as `src.estimate.write_outputs` wrote them."""

    label: str
    path: Path  # the directory holding estimates.npz
    summary: dict[str, Any]
    mem: np.ndarray  # float (n_train,), NaN without an estimate
    pair_keys: np.ndarray  # int64, sorted: train_idx * n_test + test_idx of each high-influence pair
    seeds: np.ndarray

    @property
    def architecture(self) -> tuple[str, str]:
        return str(self.summary["model"]), str(self.summary["dataset"])


# --------------------------------------------------------------------------------------------- loading

def estimates_dir(path: Path) -> Path:
    """The directory holding estimates.npz: `path` itself or `path`/estimates."""
    for candidate in (path, path / "estimates"):
        if (candidate / ESTIMATES_NAME).is_file():
            return candidate
    raise MeminfError(f"no {ESTIMATES_NAME} in {path} or {path / 'estimates'}; "
                      "run python -m src.estimate <sweep dir> first")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ARRAYS if key not in archive.files]
            if missing:
                raise MeminfError(f"{path}: missing arrays {', '.join(missing)}; rerun python -m src.estimate")
            return {key: archive[key] for key in ARRAYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise MeminfError(f"{path}: unreadable ({err}); rerun python -m src.estimate") from err


def _read_summary(array: np.ndarray, path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(str(array[()])) if array.ndim == 0 else None
    except ValueError as err:
        raise MeminfError(f"{path}: unreadable summary ({err})") from err
    if not isinstance(summary, dict):
        raise MeminfError(f"{path}: the summary is not a JSON object")
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise MeminfError(f"{path}: the summary lacks {', '.join(missing)}; rerun python -m src.estimate")
    accuracies = [summary[key] for key in ("mean_test_acc", "mean_train_in_acc")]
    if (not isinstance(summary["runs_used"], int) or not isinstance(summary["thresholds"], dict)
            or not all(value is None or isinstance(value, (int, float)) for value in accuracies)):
        raise MeminfError(f"{path}: the summary has a malformed runs_used, accuracy or thresholds value")
    return summary


def _int_vector(arrays: dict[str, np.ndarray], key: str, upper: int, path: Path) -> np.ndarray:
    values = arrays[key]
    integers = values.ndim == 1 and values.dtype.kind in "iu"
    if not integers or (values.size and not 0 <= values.min() <= values.max() < upper):
        raise MeminfError(f"{path}: '{key}' must be 1-d integers in [0, {upper})")
    return values.astype(np.int64)


def load_input(path: Path, label: str) -> Input:
    """Read and check one estimates directory (or a sweep directory holding estimates/)."""
    directory = estimates_dir(path)
    npz = directory / ESTIMATES_NAME
    arrays = _read_arrays(npz)
    summary = _read_summary(arrays["summary"], npz)
    n_train, n_test = summary["n_train"], summary["n_test"]
    if not (isinstance(n_train, int) and isinstance(n_test, int) and n_train > 0 and n_test > 0):
        raise MeminfError(f"{npz}: n_train {n_train!r} and n_test {n_test!r} must be positive integers")
    mem = arrays["mem"]
    if mem.dtype.kind != "f" or mem.shape != (n_train,):
        raise MeminfError(f"{npz}: 'mem' has dtype {mem.dtype} shape {mem.shape}, expected floats ({n_train},)")
    train_idx = _int_vector(arrays, "pair_train_idx", n_train, npz)
    test_idx = _int_vector(arrays, "pair_test_idx", n_test, npz)
    if train_idx.shape != test_idx.shape:
        raise MeminfError(f"{npz}: pair_train_idx and pair_test_idx differ in length")
    seeds = _int_vector(arrays, "seeds", np.iinfo(np.int64).max, npz)
    return Input(label, directory, summary, mem.astype(np.float64), np.unique(train_idx * n_test + test_idx), seeds)


def default_labels(paths: Sequence[Path]) -> list[str]:
    """Sweep directory names (the parent of an `estimates` directory), with #2, #3 on repeats."""
    resolved = [path.resolve() for path in paths]
    names = [path.parent.name if path.name == "estimates" else path.name for path in resolved]
    return [name if names[:k].count(name) == 0 else f"{name}#{names[:k].count(name) + 1}"
            for k, name in enumerate(names)]


def load_inputs(paths: Sequence[Path], labels: Sequence[str] | None = None) -> list[Input]:
    """Read every input and check that they are comparable."""
    if len(paths) < 2:
        raise ConfigError("give at least two estimates directories to compare")
    directories = [estimates_dir(Path(path)) for path in paths]
    labels = list(labels) if labels is not None else default_labels(directories)
    if len(labels) != len(paths) or len(set(labels)) != len(labels) or not all(labels):
        raise ConfigError(f"--labels needs {len(paths)} distinct non-empty labels, got {','.join(labels)!r}")
    inputs = [load_input(path, label) for path, label in zip(directories, labels, strict=True)]
    check_comparable(inputs)
    return inputs


def check_comparable(inputs: Sequence[Input]) -> None:
    first = inputs[0]
    for other in inputs[1:]:
        diffs = [f"{key} {other.summary[key]!r} vs {first.summary[key]!r}" for key in COMPARABLE
                 if other.summary[key] != first.summary[key]]
        if diffs:
            raise MeminfError(f"{other.label} ({other.path}) and {first.label} ({first.path}) are not estimates "
                              f"of the same data: {'; '.join(diffs)}; compare sweeps of one data set (same "
                              "dataset config, label noise and noise_seed)")


# ------------------------------------------------------------------------------------------- agreement

def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None with fewer than 2 values or a constant side."""
    if x.size < 2:
        return None
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denominator if denominator > 0 else None


def jaccard(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, float | None]:
    """Sizes of two sets of unique keys, of their intersection, and their Jaccard (None if both empty)."""
    both = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - both
    return a.size, b.size, both, both / union if union else None


def _memorized(item: Input, common: np.ndarray, theta_mem: float) -> np.ndarray:
    return np.flatnonzero(common & (np.nan_to_num(item.mem, nan=-np.inf) >= theta_mem))


def _common_pairs(item: Input, common: np.ndarray) -> np.ndarray:
    return item.pair_keys[common[item.pair_keys // int(item.summary["n_test"])]]


def shared_subsets(a: Input, b: Input) -> int:
    same_draw = all(a.summary[key] == b.summary[key] for key in ("ratio", "salt"))
    return int(np.intersect1d(a.seeds, b.seeds).size) if same_draw else 0


def _side(item: Input, side: str) -> dict[str, Any]:
    summary = item.summary
    return {f"model_{side}": summary["model"], f"dataset_{side}": summary["dataset"],
            f"runs_{side}": summary["runs_used"], f"test_acc_{side}": summary["mean_test_acc"],
            f"train_in_acc_{side}": summary["mean_train_in_acc"], f"dir_{side}": str(item.path)}


def compare_pair(a: Input, b: Input, theta_mem: float) -> dict[str, Any]:
    """The row of one pair of inputs (floors left undefined; `add_floors` fills them)."""
    common = ~np.isnan(a.mem) & ~np.isnan(b.mem)
    x, y = a.mem[common], b.mem[common]
    mem_sets = jaccard(_memorized(a, common, theta_mem), _memorized(b, common, theta_mem))
    pair_sets = jaccard(_common_pairs(a, common), _common_pairs(b, common))
    return {
        "a": a.label, "b": b.label, "relation": SAME if a.architecture == b.architecture else CROSS,
        "common": int(common.sum()), "pearson": pearson(x, y),
        "spearman": pearson(rankdata(x), rankdata(y)), "jaccard_mem": mem_sets[3], "jaccard_pairs": pair_sets[3],
        **{f"floor_{metric}": None for metric in METRICS},
        **dict(zip(("memorized_a", "memorized_b", "memorized_both"), mem_sets[:3], strict=True)),
        **dict(zip(("pairs_a", "pairs_b", "pairs_both"), pair_sets[:3], strict=True)),
        "shared_subsets": shared_subsets(a, b), **_side(a, "a"), **_side(b, "b"),
    }


def _mean(values: list[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return sum(defined) / len(defined) if defined else None


def architecture_floors(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """For each architecture swept more than once: its same-architecture rows and their mean agreement."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["relation"] == SAME:
            groups.setdefault((str(row["model_a"]), str(row["dataset_a"])), []).append(row)
    return {arch: {"rows": len(same), **{metric: _mean([row[metric] for row in same]) for metric in METRICS}}
            for arch, same in groups.items()}


def combine_floors(floors: Sequence[float | None]) -> float | None:
    """Geometric mean of the defined floors; None when none is defined or one is negative."""
    defined = [floor for floor in floors if floor is not None]
    if not defined or min(defined) < 0:
        return None
    return math.prod(defined) ** (1 / len(defined))


def add_floors(rows: Sequence[dict[str, Any]]) -> None:
    floors = architecture_floors(rows)
    for row in rows:
        if row["relation"] == CROSS:
            sides = [floors.get((str(row[f"model_{s}"]), str(row[f"dataset_{s}"])), {}) for s in "ab"]
            for metric in METRICS:
                row[f"floor_{metric}"] = combine_floors([side.get(metric) for side in sides])


def compare_inputs(inputs: Sequence[Input], theta_mem: float) -> list[dict[str, Any]]:
    if not math.isfinite(theta_mem):
        raise ConfigError(f"--theta-mem {theta_mem} must be a finite number")
    rows = [compare_pair(a, b, theta_mem) for a, b in combinations(inputs, 2)]
    add_floors(rows)
    return rows


def compare(estimates_dirs: list[Path], theta_mem: float = 0.25,
            labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row (dict) per pair of inputs; see the module docstring for the keys."""
    return compare_inputs(load_inputs(estimates_dirs, labels), theta_mem)


def notes(inputs: Sequence[Input], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Caveats for reading the numbers."""
    found = []
    if len({item.summary["ratio"] for item in inputs}) > 1:
        found.append("the inputs used different subset ratios: mem is defined for a subset size, so they "
                     "estimate different quantities")
    thresholds = {json.dumps([item.summary["thresholds"].get(key) for key in ("theta_mem", "theta_infl")])
                  for item in inputs}
    if len(thresholds) > 1:
        found.append("the aggregators used different pair thresholds: jaccard_pairs also reflects that")
    for row in rows:
        if row["relation"] == SAME and row["shared_subsets"]:
            found.append(f"{row['a']} and {row['b']} share {row['shared_subsets']} subsets (same seeds, ratio and "
                         "salt): their agreement is not independent and overstates the noise floor; use disjoint "
                         "seeds or another subset.salt")
    floors = architecture_floors(rows)
    once = sorted({item.architecture[0] for item in inputs if item.architecture not in floors})
    if once and any(row["relation"] == CROSS for row in rows):
        found.append(f"no noise floor for {', '.join(once)} (swept once): their cross-architecture rows use the "
                     "other architecture's floor, or none; add a sweep with disjoint seeds or another subset.salt")
    return found


# --------------------------------------------------------------------------------------------- outputs

def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(rows[0])
    writer.writerows([_cell(value) for value in row.values()] for row in rows)
    return buffer.getvalue()


def _input_json(item: Input, theta_mem: float) -> dict[str, Any]:
    summary = item.summary
    return {"label": item.label, "dir": str(item.path),
            **{key: summary.get(key) for key in ("experiment_name", "model", "dataset", "ratio", "salt")},
            "runs": summary["runs_used"], "mean_test_acc": summary["mean_test_acc"],
            "mean_train_in_acc": summary["mean_train_in_acc"],
            "examples_with_estimate": int(np.sum(~np.isnan(item.mem))),
            "memorized": int(np.sum(np.nan_to_num(item.mem, nan=-np.inf) >= theta_mem)),
            "pairs": int(item.pair_keys.size), "aggregator_thresholds": summary["thresholds"]}


def json_text(inputs: Sequence[Input], rows: Sequence[dict[str, Any]], theta_mem: float) -> str:
    floors = [{"model": model, "dataset": dataset, **floor}
              for (model, dataset), floor in architecture_floors(rows).items()]
    document = {"theta_mem": theta_mem, "inputs": [_input_json(item, theta_mem) for item in inputs],
                "pairs": list(rows), "floors": floors, "notes": notes(inputs, rows), "definitions": DEFINITIONS}
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def _matrix(labels: Sequence[str], rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    index = {label: k for k, label in enumerate(labels)}
    matrix = np.full((len(labels), len(labels)), np.nan)
    for row in rows:
        i, j = index[row["a"]], index[row["b"]]
        matrix[i, j] = matrix[j, i] = np.nan if row[key] is None else row[key]
    return matrix


def render_png(labels: Sequence[str], rows: Sequence[dict[str, Any]], theta_mem: float) -> bytes:
    """PNG bytes: one matrix per entry of MATRICES, labels on both axes, numbers in the cells (Agg canvas)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    side = 2.0 + 0.55 * len(labels)
    figure = Figure(figsize=(3 * side, side + 0.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    cmap = colormaps["viridis"].with_extremes(bad="lightgray")
    index = {label: k for k, label in enumerate(labels)}
    for ax, (key, title) in zip(figure.subplots(1, len(MATRICES)), MATRICES, strict=True):
        matrix = _matrix(labels, rows, key)
        ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title if key != "jaccard_mem" else f"{title} (mem >= {theta_mem:g})", fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for (i, j), value in np.ndenumerate(matrix):
            if i != j:
                ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if np.isnan(value) or value > 0.5 else "white")
        for row in rows:
            if row["relation"] == SAME:
                i, j = index[row["a"]], index[row["b"]]
                for y, x in ((i, j), (j, i)):
                    ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    figure.suptitle("Agreement of the estimates (boxed: same architecture, the noise floor)", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_compare(out_dir: Path, inputs: Sequence[Input], rows: Sequence[dict[str, Any]],
                  theta_mem: float) -> list[Path]:
    """Serialize the three outputs in memory, then write each atomically; returns the written paths."""
    payloads = {"compare.csv": csv_text(rows).encode(), "compare.json": json_text(inputs, rows, theta_mem).encode(),
                "compare.png": render_png([item.label for item in inputs], rows, theta_mem)}
    return [write_atomic(out_dir / name, lambda handle, data=data: handle.write(data))
            for name, data in payloads.items()]


# ------------------------------------------------------------------------------------------ the report

def _fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(line[k]) for line in [header, *body]) for k in range(len(header))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in [header, *body]]


def format_report(inputs: Sequence[Input], rows: Sequence[dict[str, Any]], theta_mem: float) -> str:
    lines = ["inputs:", *_table(
        ["label", "model", "dataset", "runs", "test acc", "in-subset train acc", "dir"],
        [[item.label, *map(str, item.architecture), str(item.summary["runs_used"]),
          _fmt(item.summary["mean_test_acc"], ".4f"), _fmt(item.summary["mean_train_in_acc"], ".4f"), str(item.path)]
         for item in inputs])]
    lines += [f"agreement (over examples estimated in both; memorized: mem >= {theta_mem:g}; pairs as each "
              "aggregator wrote them):", *_table(
                  ["pair", "relation", "common", "pearson", "spearman", "J(mem)", "J(pairs)"],
                  [[f"{row['a']} vs {row['b']}", row["relation"], str(row["common"]),
                    *(_fmt(row[metric]) for metric in METRICS)] for row in rows])]
    cross = [row for row in rows if row["relation"] == CROSS]
    if cross:
        lines.append("cross-architecture agreement [noise floor]:")
        lines += [f"  {row['a']} vs {row['b']}: " + ", ".join(
            f"{name} {_fmt(row[metric])} [{_fmt(row[f'floor_{metric}'])}]"
            for name, metric in zip(("pearson", "spearman", "J(mem)", "J(pairs)"), METRICS, strict=True))
            for row in cross]
    lines += [f"note: {note}" for note in notes(inputs, rows)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.compare", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", type=Path, nargs="+",
                        help="estimates directories (or sweep directories holding estimates/)")
    parser.add_argument("--labels", default=None, help="comma-separated labels, one per input")
    parser.add_argument("--theta-mem", type=float, default=0.25, help="memorized: mem >= this")
    parser.add_argument("--out", type=Path, default=Path("compare"), help="output directory (default ./compare)")
    add_wandb_arguments(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    labels = args.labels.split(",") if args.labels is not None else None
    inputs = load_inputs(args.inputs, labels)
    rows = compare_inputs(inputs, args.theta_mem)
    written = write_compare(args.out, inputs, rows, args.theta_mem)
    print(format_report(inputs, rows, args.theta_mem))
    print(f"wrote {', '.join(path.name for path in written)} to {args.out}")
    log_compare(args, args.out)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return cli_exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
