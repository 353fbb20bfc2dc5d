"""Agreement between the estimates of several sweeps of one data set (cross-architecture consistency);
the command line is src/compare.py.

Each argument is an estimates directory (src/contracts/estimates.py) or a sweep directory holding estimates/.
All inputs must estimate the same data: equal data fingerprint (it covers the flipped labels), n_train, n_test
and num_classes; otherwise one `error:` line, exit 2, nothing written.
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
- shared_subsets: training subsets both sweeps drew (same ratio and salt, and a common subset seed: the seed
  itself, or with subset.repeats R > 1 the first seed of its group of R, src/data/subsets.py). Disjoint seeds
  of common groups share subsets: a floor over them overstates the agreement (a note says so).
- relation, by one rule: a noise floor is two estimates by one estimator of the same experiment (experiment
  identity, src/contracts/identity.py) apart from `subset.salt`, on disjoint seeds. The salt changes only which
  subsets are drawn (so what mem estimates stays the same); the seed fixes each model's initialisation and
  data order (src/training), so sweeps over common seeds are not independent, whatever their salts.
  - `same experiment (noise floor)`: same salt, disjoint seeds; `same experiment but subset.salt (noise
    floor)`: another salt, disjoint seeds. Their agreement is what estimation noise alone allows, the floor
    against which other numbers are read.
  - `shares initialisations: N same seeds`: the same experiment apart from the salt over N common seeds; it
    gives no floor (it would overstate the agreement).
  - otherwise `differs: <what>`: the estimator, and the identity keys whose values differ (e.g.
    `model.kwargs.hidden`, `optimizer.lr`, `data.fingerprint`).
- floor_<number> (comparison rows): the geometric mean of the noise floors of a's and b's experiments (each
  the mean over the noise-floor rows of that experiment apart from the salt), the one available when only one
  was swept twice, undefined when neither was. For correlations this is the attenuation bound: two noisy
  estimates of one quantity correlate at most sqrt(r_aa r_bb).
- per input, from its summary: model, dataset, runs, mean test accuracy, mean in-subset train accuracy, and
  `health_<side>`: its warnings, `ok`, or `not checked` (estimates written before the run-health check): the
  unhealthy runs of its sweep (src/estimators/subsample/health.py) and whether its estimate used them, and
  under-fitting (mean in-subset train accuracy below the contract's TRAIN_IN_ACC_WARNING). A flagged input is
  also flagged in the table, compare.json (`warnings` of each input), the notes and compare.png (its label
  starred, the reasons below the matrices): models that did not train or fit lower its agreement with anything.

Outputs (in --out, default <first input's sweep dir>/compare/), each written atomically after everything is
computed: compare.csv (one row per pair), compare.json (inputs, pairs, floors by experiment, notes) and
compare.png (matrices of spearman, jaccard_mem and jaccard_pairs; boxed cells are noise-floor pairs). Each input
in compare.json names the estimates it read (dir, experiment_hash, estimator, runs, estimates_fingerprint), so
that src.report can check a comparison it embeds, and its `floor_group` (the `experiment` of its entry in
`floors`, where it has a noise floor).

API: `compare(estimates_dirs, theta_mem)` returns the rows as dicts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from src.contracts.estimates import (
    MAX_NAMED_RUNS,
    RUN_HEALTH,
    TRAIN_IN_ACC_WARNING,
    Estimates,
    Thresholds,
    check_threshold,
    read_estimates,
    unhealthy_runs,
)
from src.contracts.identity import identity_differences, identity_hash
from src.contracts.io import write_files
from src.data.subsets import DEFAULT_REPEATS
from src.errors import ConfigError, MeminfError
from src.util.plotting import new_figure, png_bytes
from src.util.stats import jaccard_index, pearson
from src.util.tables import csv_rows, fmt, text_table

COMPARABLE = ("data_fingerprint", "n_train", "n_test", "num_classes")
SAME = "same experiment (noise floor)"
SAME_BUT_SALT = "same experiment but subset.salt (noise floor)"
FLOOR_RELATIONS = (SAME, SAME_BUT_SALT)
SHARES = "shares initialisations: "  # the same experiment apart from the salt, on common seeds
SALT_KEY, REPEATS_KEY = "subset.salt", "subset.repeats"  # identity keys: a floor may differ in the salt
DIFFERS = "differs: "
SHOWN_DIFFERENCES = 3  # identity keys named in a relation (the rest as "+N more")
METRICS = ("pearson", "spearman", "jaccard_mem", "jaccard_pairs")
MATRICES = (("spearman", "Spearman of mem"), ("jaccard_mem", "Jaccard of memorized sets"),
            ("jaccard_pairs", "Jaccard of high-influence pairs"))
DEFINITIONS = {
    "common": "training examples with a mem estimate in both inputs; all numbers use only these",
    "pearson, spearman": "correlation of mem over the common examples; null when undefined",
    "jaccard_mem": "|A and B| / |A or B| of {mem >= theta_mem}; null when both sets are empty",
    "jaccard_pairs": "the same for the (train, test) high-influence pairs each aggregator wrote",
    "floor_<number>": "geometric mean of the noise-floor agreement of the two experiments",
}


@dataclass(frozen=True)
class Input:
    """The estimates of one sweep, read through the estimates contract."""

    label: str
    path: Path  # the estimates directory
    summary: dict[str, Any]
    mem: np.ndarray  # float (n_train,), NaN without an estimate
    pair_keys: np.ndarray | None  # int64, sorted: train_idx * n_test + test_idx of each pair; None: no pairs
    seeds: np.ndarray
    train_label: np.ndarray  # the trained labels
    fingerprint: str  # Estimates.fingerprint of what was read

    @property
    def architecture(self) -> tuple[str, str]:
        return str(self.summary["model"]), str(self.summary["dataset"])

    @property
    def experiment(self) -> str:
        """The experiment identity and the estimator."""
        return f"{self.summary['experiment_hash']}/{self.summary['estimator']}"

    @property
    def floor_group(self) -> str:
        """What a noise floor shares: the experiment identity apart from subset.salt, and the estimator (the
        experiment hash where the summary stores no identity)."""
        identity = self.summary.get("experiment")
        if not isinstance(identity, dict):
            return self.experiment
        apart = {key: value for key, value in identity.items() if key != SALT_KEY}
        return f"{identity_hash(apart)}/{self.summary['estimator']}"


def input_of(est: Estimates, label: str) -> Input:
    n_test = est.n_test
    pair_keys = None
    if est.has("pair_train_idx", "pair_test_idx"):
        train_idx, test_idx = est.arrays["pair_train_idx"], est.arrays["pair_test_idx"]
        pair_keys = np.unique(train_idx.astype(np.int64) * n_test + test_idx)
    return Input(label, est.path or Path("."), est.summary, est.mem.astype(np.float64), pair_keys,
                 est.arrays["seeds"].astype(np.int64), est.arrays["train_label"], est.fingerprint)


def load_input(path: Path, label: str) -> Input:
    """Read and check one estimates directory (or a sweep directory holding estimates/)."""
    return input_of(read_estimates(path), label)


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
    estimates = [read_estimates(path) for path in paths]
    directories = [est.path for est in estimates]
    labels = list(labels) if labels is not None else default_labels(directories)
    if len(labels) != len(paths) or len(set(labels)) != len(labels) or not all(labels):
        raise ConfigError(f"--labels needs {len(paths)} distinct non-empty labels, got {','.join(labels)!r}")
    inputs = [input_of(est, label) for est, label in zip(estimates, labels, strict=True)]
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

def jaccard(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, float | None]:
    """Sizes of two sets of unique keys, of their intersection, and their Jaccard (None if both empty)."""
    return a.size, b.size, np.intersect1d(a, b, assume_unique=True).size, jaccard_index(a, b)


def _memorized(item: Input, common: np.ndarray, theta_mem: float) -> np.ndarray:
    return np.flatnonzero(common & (np.nan_to_num(item.mem, nan=-np.inf) >= theta_mem))


def _common_pairs(item: Input, common: np.ndarray) -> np.ndarray:
    return item.pair_keys[common[item.pair_keys // int(item.summary["n_test"])]]


def pair_jaccard(a: Input, b: Input, common: np.ndarray) -> tuple[int | None, int | None, int | None, float | None]:
    """jaccard of the pairs of common train examples; undefined when either estimator gives no pairs."""
    if a.pair_keys is None or b.pair_keys is None:
        return None, None, None, None
    return jaccard(_common_pairs(a, common), _common_pairs(b, common))


def subset_seeds(item: Input) -> np.ndarray:
    """The seeds whose subsets the runs trained on (subset.repeats R: seed s trains that of s - s mod R)."""
    identity = item.summary.get("experiment")
    repeats = int(identity.get(REPEATS_KEY, DEFAULT_REPEATS)) if isinstance(identity, dict) else DEFAULT_REPEATS
    return np.unique(item.seeds - item.seeds % repeats)


def shared_subsets(a: Input, b: Input) -> int:
    same_draw = all(a.summary[key] == b.summary[key] for key in ("ratio", "salt"))
    return int(np.intersect1d(subset_seeds(a), subset_seeds(b)).size) if same_draw else 0


def input_warnings(item: Input) -> list[str]:
    """Why the estimates of an input may not be what its experiment gives: unhealthy runs, under-fitting."""
    found = []
    unhealthy = unhealthy_runs(item.summary)
    if unhealthy:
        use = "left out" if item.summary[RUN_HEALTH]["excluded"] else "used"
        seeds = [str(run["seed"]) for run in unhealthy]
        more = f", +{len(seeds) - MAX_NAMED_RUNS} more" if len(seeds) > MAX_NAMED_RUNS else ""
        found.append(f"{len(unhealthy)} unhealthy run(s) {use} (seed{'s' if len(seeds) > 1 else ''} "
                     f"{', '.join(seeds[:MAX_NAMED_RUNS])}{more})")
    train_in_acc = item.summary["mean_train_in_acc"]
    if train_in_acc is not None and train_in_acc < TRAIN_IN_ACC_WARNING:
        found.append(f"under-fit (in-subset train acc {train_in_acc:.4f} < {TRAIN_IN_ACC_WARNING})")
    return found


def health_text(item: Input) -> str:
    """`ok`, `not checked` (estimates without run health) or the input's warnings, for tables."""
    warnings = input_warnings(item)
    if warnings:
        return "; ".join(warnings)
    return "ok" if RUN_HEALTH in item.summary else "not checked"


def _side(item: Input, side: str) -> dict[str, Any]:
    summary = item.summary
    return {f"model_{side}": summary["model"], f"dataset_{side}": summary["dataset"],
            f"runs_{side}": summary["runs_used"], f"test_acc_{side}": summary["mean_test_acc"],
            f"train_in_acc_{side}": summary["mean_train_in_acc"], f"health_{side}": health_text(item),
            f"dir_{side}": str(item.path)}


def shared_seeds(a: Input, b: Input) -> int:
    """Seeds both sweeps trained: common initialisations and data orders, whatever the salts."""
    return int(np.intersect1d(a.seeds, b.seeds).size)


def relation(a: Input, b: Input) -> str:
    """A noise floor (FLOOR_RELATIONS) for one experiment apart from the salt on disjoint seeds, SHARES on common
    seeds; else what differs between them (module docstring)."""
    if a.floor_group == b.floor_group:
        if shared := shared_seeds(a, b):
            return f"{SHARES}{shared} same seeds"
        return SAME if a.summary["salt"] == b.summary["salt"] else SAME_BUT_SALT
    what = [] if a.summary["estimator"] == b.summary["estimator"] else ["estimator"]
    identities = a.summary.get("experiment"), b.summary.get("experiment")
    if all(isinstance(identity, dict) for identity in identities):
        what += [line.split(":", 1)[0] for line in identity_differences(*identities)]
    elif a.architecture != b.architecture:
        what.append("model")
    what = what or ["experiment"]
    more = f" (+{len(what) - SHOWN_DIFFERENCES} more)" if len(what) > SHOWN_DIFFERENCES else ""
    return DIFFERS + ", ".join(what[:SHOWN_DIFFERENCES]) + more


def compare_pair(a: Input, b: Input, theta_mem: float) -> dict[str, Any]:
    """The row of one pair of inputs (floors left undefined; `add_floors` fills them)."""
    common = ~np.isnan(a.mem) & ~np.isnan(b.mem)
    x, y = a.mem[common], b.mem[common]
    mem_sets = jaccard(_memorized(a, common, theta_mem), _memorized(b, common, theta_mem))
    pair_sets = pair_jaccard(a, b, common)
    return {
        "a": a.label, "b": b.label, "relation": relation(a, b),
        "common": int(common.sum()), "pearson": pearson(x, y),
        "spearman": pearson(rankdata(x), rankdata(y)), "jaccard_mem": mem_sets[3], "jaccard_pairs": pair_sets[3],
        **{f"floor_{metric}": None for metric in METRICS},
        **dict(zip(("memorized_a", "memorized_b", "memorized_both"), mem_sets[:3], strict=True)),
        **dict(zip(("pairs_a", "pairs_b", "pairs_both"), pair_sets[:3], strict=True)),
        "shared_subsets": shared_subsets(a, b), **_side(a, "a"), **_side(b, "b"),
        "experiment_a": a.experiment, "experiment_b": b.experiment,
    }


def _mean(values: list[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return sum(defined) / len(defined) if defined else None


def is_floor(row: dict[str, Any]) -> bool:
    return row["relation"] in FLOOR_RELATIONS


def floor_groups(inputs: Sequence[Input]) -> dict[str, str]:
    """Each input's label -> its floor group (Input.floor_group)."""
    return {item.label: item.floor_group for item in inputs}


def experiment_floors(inputs: Sequence[Input], rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each experiment (apart from the salt) with noise-floor rows: their count and mean agreement."""
    group_of = floor_groups(inputs)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if is_floor(row):
            groups.setdefault(group_of[row["a"]], []).append(row)
    return {experiment: {"rows": len(same), "model": same[0]["model_a"], "dataset": same[0]["dataset_a"],
                         **{metric: _mean([row[metric] for row in same]) for metric in METRICS}}
            for experiment, same in groups.items()}


def combine_floors(floors: Sequence[float | None]) -> float | None:
    """Geometric mean of the defined floors; None when none is defined or one is negative."""
    defined = [floor for floor in floors if floor is not None]
    if not defined or min(defined) < 0:
        return None
    return math.prod(defined) ** (1 / len(defined))


def add_floors(inputs: Sequence[Input], rows: Sequence[dict[str, Any]]) -> None:
    floors = experiment_floors(inputs, rows)
    group_of = floor_groups(inputs)
    for row in rows:
        if not is_floor(row):
            sides = [floors.get(group_of[row[side]], {}) for side in "ab"]
            for metric in METRICS:
                row[f"floor_{metric}"] = combine_floors([side.get(metric) for side in sides])


def compare_inputs(inputs: Sequence[Input], theta_mem: float) -> list[dict[str, Any]]:
    check_threshold("--theta-mem", theta_mem)
    rows = [compare_pair(a, b, theta_mem) for a, b in combinations(inputs, 2)]
    add_floors(inputs, rows)
    return rows


def compare(estimates_dirs: list[Path], theta_mem: float = Thresholds.theta_mem,
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
        if row["relation"].startswith(SHARES):
            found.append(f"{row['a']} and {row['b']} are one experiment apart from the salt over common seeds, "
                         "which fix the models' initialisations and data order: their agreement is not independent "
                         "and gives no noise floor; sweep the experiment again on disjoint seeds")
        elif is_floor(row) and row["shared_subsets"]:
            found.append(f"{row['a']} and {row['b']} train {row['shared_subsets']} common subsets (seeds of common "
                         "subset.repeats groups): their agreement is not independent and overstates the noise floor; "
                         "sweep seeds of other groups")
    found += [f"{item.label}: {'; '.join(input_warnings(item))}: models that did not train or fit lower its "
              "agreement with any input; train it with a recipe that works (an experiment config), or compare "
              "its --exclude-unhealthy estimates too" for item in inputs if input_warnings(item)]
    floors = experiment_floors(inputs, rows)
    without = sorted({item.label for item in inputs if item.floor_group not in floors})
    if without and any(not is_floor(row) for row in rows):
        found.append(f"no noise floor for {', '.join(without)} (no second sweep of its experiment on disjoint "
                     "seeds): their comparison rows use the other experiment's floor, or none; sweep the same "
                     "experiment on disjoint seeds (any subset.salt)")
    return found


# --------------------------------------------------------------------------------------------- outputs

def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    return csv_rows(list(rows[0]), [list(row.values()) for row in rows])


def _input_json(item: Input, theta_mem: float) -> dict[str, Any]:
    summary = item.summary
    return {"label": item.label, "dir": str(item.path),
            **{key: summary.get(key) for key in ("experiment_name", "estimator", "experiment_hash", "model", "dataset",
                                                 "ratio", "salt")},
            "runs": summary["runs_used"], "mean_test_acc": summary["mean_test_acc"],
            "mean_train_in_acc": summary["mean_train_in_acc"],
            "examples_with_estimate": int(np.sum(~np.isnan(item.mem))),
            "memorized": int(np.sum(np.nan_to_num(item.mem, nan=-np.inf) >= theta_mem)),
            "pairs": None if item.pair_keys is None else int(item.pair_keys.size),
            "aggregator_thresholds": summary["thresholds"], "estimates_fingerprint": item.fingerprint,
            "floor_group": item.floor_group,
            "health_checked": RUN_HEALTH in summary,
            "unhealthy_seeds": [run["seed"] for run in unhealthy_runs(summary)],
            "warnings": input_warnings(item)}


def json_text(inputs: Sequence[Input], rows: Sequence[dict[str, Any]], theta_mem: float) -> str:
    floors = [{"experiment": experiment, **floor} for experiment, floor in experiment_floors(inputs, rows).items()]
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


def render_png(labels: Sequence[str], rows: Sequence[dict[str, Any]], theta_mem: float,
               warnings: dict[str, list[str]] | None = None) -> bytes:
    """PNG bytes: one matrix per entry of MATRICES, labels on both axes, numbers in the cells (Agg canvas); the
    labels of inputs with `warnings` starred and their warnings below."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    warnings = {label: found for label, found in (warnings or {}).items() if found}
    shown = [f"{label} *" if label in warnings else label for label in labels]
    side = 2.0 + 0.55 * len(labels)
    figure = new_figure((3 * side, side + 0.8 + 0.25 * len(warnings)), layout="constrained")
    cmap = colormaps["viridis"].with_extremes(bad="lightgray")
    index = {label: k for k, label in enumerate(labels)}
    for ax, (key, title) in zip(figure.subplots(1, len(MATRICES)), MATRICES, strict=True):
        matrix = _matrix(labels, rows, key)
        ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title if key != "jaccard_mem" else f"{title} (mem >= {theta_mem:g})", fontsize=9)
        ax.set_xticks(range(len(labels)), shown, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), shown, fontsize=8)
        for (i, j), value in np.ndenumerate(matrix):
            if i != j:
                ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if np.isnan(value) or value > 0.5 else "white")
        for row in rows:
            if is_floor(row):
                i, j = index[row["a"]], index[row["b"]]
                for y, x in ((i, j), (j, i)):
                    ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    figure.suptitle("Agreement of the estimates (boxed: same experiment, the noise floor)", fontsize=10)
    if warnings:
        figure.supxlabel("\n".join(f"* {label}: {'; '.join(found)}" for label, found in warnings.items()),
                         fontsize=8, color="darkred")
    return png_bytes(figure)


def write_compare(out_dir: Path, inputs: Sequence[Input], rows: Sequence[dict[str, Any]],
                  theta_mem: float) -> list[Path]:
    """Serialize the three outputs in memory, then write each atomically; returns the written paths."""
    payloads = {"compare.csv": csv_text(rows).encode(), "compare.json": json_text(inputs, rows, theta_mem).encode(),
                "compare.png": render_png([item.label for item in inputs], rows, theta_mem,
                                          {item.label: input_warnings(item) for item in inputs})}
    return write_files(out_dir, payloads)


def format_report(inputs: Sequence[Input], rows: Sequence[dict[str, Any]], theta_mem: float) -> str:
    lines = ["inputs:", *text_table(
        ["label", "model", "dataset", "runs", "test acc", "in-subset train acc", "health", "dir"],
        [[item.label, *map(str, item.architecture), str(item.summary["runs_used"]),
          fmt(item.summary["mean_test_acc"], ".4f"), fmt(item.summary["mean_train_in_acc"], ".4f"),
          health_text(item), str(item.path)] for item in inputs])]
    lines += [f"agreement (over examples estimated in both; memorized: mem >= {theta_mem:g}; pairs as each "
              "aggregator wrote them):", *text_table(
                  ["pair", "relation", "common", "pearson", "spearman", "J(mem)", "J(pairs)"],
                  [[f"{row['a']} vs {row['b']}", row["relation"], str(row["common"]),
                    *(fmt(row[metric], ".3f") for metric in METRICS)] for row in rows])]
    cross = [row for row in rows if not is_floor(row)]
    if cross:
        lines.append("agreement [noise floor]:")
        lines += [f"  {row['a']} vs {row['b']}: " + ", ".join(
            f"{name} {fmt(row[metric], '.3f')} [{fmt(row[f'floor_{metric}'], '.3f')}]"
            for name, metric in zip(("pearson", "spearman", "J(mem)", "J(pairs)"), METRICS, strict=True))
            for row in cross]
    lines += [f"note: {note}" for note in notes(inputs, rows)]
    return "\n".join(lines)
