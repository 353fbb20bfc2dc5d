"""Marginal utility of memorized examples: remove them, retrain on the rest, compare with random removals.

    python -m src.removal <estimates dir> [--theta 0.1 0.25 0.5] [--top-q 0.01 0.05] [--pairs] [--draws 3]
        [--seeds 0..3] [--sweep DIR] [--out DIR] [key=value ...]

Reads `estimates.npz` of a sweep (written by `python -m src.estimate`) and one record of that sweep (the
estimates directory's parent, or --sweep) whose experiment hash equals the summary's: its resolved config is
the training recipe. That recipe is rerun with `subset.ratio=1.0` on all training examples minus a removal
set; `key=value` arguments override it (e.g. `trainer.max_epochs=2`, `pack=8`), but the data must keep the
estimates' fingerprint.

Selections (examples without a mem estimate, NaN, are never selected):
- `theta`: every example with mem >= theta, for each --theta;
- `top_q`: the floor(q * n_estimated + 0.5) examples of largest mem (ties by mem_soft, then index), per --top-q;
- `pairs` (--pairs): the training side of the aggregator's high-influence pairs;
- `none`: nothing removed, the full-data baseline (one model per seed).
Controls per selection, each removing as many examples as the selection:
- `removed`: the selection itself (draw 0);
- `random`: the first n estimated examples of a permutation seeded by (draw, 0);
- `class_matched`: per trained class c, the first n_c estimated examples of class c in a permutation seeded by
  (draw, 1), where n_c is the selection's count in class c.
Both controls are drawn from the examples with an estimate (the population the selection comes from), and a
draw's sets are nested across levels (a larger removal extends a smaller one of the same draw).

Every (condition, seed) is one model: seed s initialises and orders the data of every condition alike, so two
conditions differ only in what was removed. Models whose kept sets have one size are packed
(`src.experiment.resolve_pack`, the recipe's `pack`): the packed data module stacks equal-size index sets.

Influenced test examples of a selection: the test side of the high-influence pairs whose training side is in
the selection. Every control of that selection is scored on the same test examples, so `removed - random`
there is the accuracy the removal costs them beyond what removing as many random examples costs.

Outputs (in --out, default `<estimates dir>/../removal`), each written atomically after all training:
- removal.csv: one row per retrained model (COLUMNS); `level` is empty for pairs and none, `influenced_acc`
  empty where a selection influences no test example;
- removal_summary.csv: per (selection, level, control) the mean over seeds of test and influenced accuracy
  (controls averaged over their draws within a seed first), with the half-width of a 95% Student-t interval
  over seeds, and for the controls the paired per-seed difference `removed - control` with its t interval;
- removal.png: accuracy against theta and q for the three controls (error bars: the t half-widths), the
  pair removal, and the full-data baseline as a dashed line.

API: `read_removal_csv(path)` returns the rows; `summarize(rows)` the summary rows as dicts.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.errors import ConfigError, DataError, MeminfError, cli_exit_code
from src.estimate import most_memorized
from src.records import RecordError, find_records, read_meta, write_atomic

ESTIMATES_NAME = "estimates.npz"
ESTIMATE_ARRAYS = ("mem", "mem_soft", "train_label", "test_label", "pair_train_idx", "pair_test_idx", "summary")
COLUMNS = ("selection", "level", "control", "draw", "seed", "n_removed", "test_acc", "influenced_acc", "n_influenced")
SELECTIONS = ("none", "theta", "top_q", "pairs")
CONTROLS = ("removed", "random", "class_matched")
RANDOM_STREAM, CLASS_MATCHED_STREAM = 0, 1  # second entropy word of a draw's SeedSequence
CI_LEVEL = 0.95
RETRAIN_NAME = "retrain"  # Lightning's root directory under --out (nothing is written there with logger=none)
SEED_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


# --------------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class SweepEstimates:
    """What removal needs from one estimates.npz."""

    directory: Path
    summary: dict[str, Any]
    mem: np.ndarray  # float (n_train,), NaN without an estimate
    mem_soft: np.ndarray
    train_label: np.ndarray  # the trained labels (flipped where flipped)
    test_label: np.ndarray
    pair_train_idx: np.ndarray
    pair_test_idx: np.ndarray

    @property
    def estimated(self) -> np.ndarray:
        return ~np.isnan(self.mem)


def load_estimates(path: Path) -> SweepEstimates:
    """Read `path`/estimates.npz (or `path` itself when it is the file)."""
    npz = path if path.is_file() else path / ESTIMATES_NAME
    if not npz.is_file():
        raise MeminfError(f"no {ESTIMATES_NAME} in {path}; run python -m src.estimate <sweep dir> first")
    try:
        with np.load(npz, allow_pickle=False) as archive:
            missing = [key for key in ESTIMATE_ARRAYS if key not in archive.files]
            if missing:
                raise MeminfError(f"{npz}: missing arrays {', '.join(missing)}; rerun python -m src.estimate")
            arrays = {key: archive[key] for key in ESTIMATE_ARRAYS}
        summary = json.loads(str(arrays.pop("summary")[()]))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise MeminfError(f"{npz}: unreadable ({err}); rerun python -m src.estimate") from err
    if not isinstance(summary, dict) or "experiment_hash" not in summary or "data_fingerprint" not in summary:
        raise MeminfError(f"{npz}: the summary lacks experiment_hash or data_fingerprint; rerun python -m src.estimate")
    n_train, n_test = len(arrays["train_label"]), len(arrays["test_label"])
    if arrays["mem"].shape != (n_train,) or arrays["mem_soft"].shape != (n_train,):
        raise MeminfError(f"{npz}: mem has shape {arrays['mem'].shape}, expected ({n_train},)")
    pairs = arrays["pair_train_idx"], arrays["pair_test_idx"]
    if pairs[0].shape != pairs[1].shape or (pairs[0].size and (pairs[0].max() >= n_train or pairs[1].max() >= n_test)):
        raise MeminfError(f"{npz}: pair_train_idx / pair_test_idx are inconsistent with the data sizes")
    return SweepEstimates(npz.parent, summary, arrays["mem"].astype(np.float64), arrays["mem_soft"].astype(np.float64),
                          arrays["train_label"].astype(np.int64), arrays["test_label"].astype(np.int64),
                          pairs[0].astype(np.int64), pairs[1].astype(np.int64))


def sweep_config(estimates_dir: Path, summary: dict[str, Any], sweep: Path | None = None) -> dict[str, Any]:
    """The resolved config of a record of the estimated sweep (the summary's experiment hash), found under
    `sweep` (default: the estimates directory's parent)."""
    sweep = sweep if sweep is not None else estimates_dir.parent
    wanted = summary["experiment_hash"]
    for path in find_records(sweep):
        try:
            meta = read_meta(path)
        except RecordError:
            continue
        if meta.get("experiment_hash") == wanted and isinstance(meta.get("config"), dict):
            return meta["config"]
    raise MeminfError(f"no readable record of experiment {wanted} under {sweep}; pass the sweep directory "
                      "with --sweep DIR")


def retrain_config(config: dict[str, Any], overrides: Sequence[str], out_dir: Path) -> DictConfig:
    """The sweep's recipe on all the data (ratio 1.0), with `overrides`, training under `out_dir`.

    The record's groups that define the trained model (src.experiment.MODEL_GROUPS) replace today's; its other
    settings are merged into today's composed defaults, so keys added since the sweep keep their defaults.
    """
    from src.experiment import MODEL_GROUPS
    from src.run import compose_config

    cfg = compose_config([])
    for key, value in config.items():
        if key in MODEL_GROUPS or not isinstance(value, dict):
            cfg[key] = value
        elif key in cfg:
            cfg[key] = OmegaConf.merge(cfg[key], value)
    cfg.logger = {"kind": "none"}
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"cannot apply overrides {list(overrides)}: {err}; write them as key=value") from err
    cfg.subset.ratio = 1.0
    cfg.paths.output_dir = str(out_dir)
    cfg.name = RETRAIN_NAME
    cfg.seeds = None
    return cfg


# ----------------------------------------------------------------------------------------- selections

@dataclass(frozen=True)
class Selection:
    kind: str  # one of SELECTIONS
    level: float | None  # theta or q; None for pairs and none
    removed: np.ndarray  # sorted int64 training indices


def theta_selection(mem: np.ndarray, theta: float) -> Selection:
    return Selection("theta", theta, np.flatnonzero(np.nan_to_num(mem, nan=-np.inf) >= theta))


def top_q_selection(mem: np.ndarray, mem_soft: np.ndarray, q: float) -> Selection:
    count = math.floor(q * int(np.sum(~np.isnan(mem))) + 0.5)
    return Selection("top_q", q, np.sort(most_memorized(mem, mem_soft, count)))


def pair_selection(mem: np.ndarray, pair_train_idx: np.ndarray) -> Selection:
    chosen = np.unique(pair_train_idx)
    return Selection("pairs", None, chosen[~np.isnan(mem[chosen])])


def draw_permutation(n: int, draw: int, stream: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([draw, stream])).permutation(n)


def random_control(count: int, estimated: np.ndarray, draw: int) -> np.ndarray:
    """`count` estimated examples: the first ones of draw `draw`'s permutation."""
    order = draw_permutation(len(estimated), draw, RANDOM_STREAM)
    return np.sort(order[estimated[order]][:count])


def class_matched_control(removed: np.ndarray, labels: np.ndarray, estimated: np.ndarray, draw: int) -> np.ndarray:
    """Per class, as many estimated examples as `removed` holds of that class, first in draw `draw`'s order."""
    order = draw_permutation(len(labels), draw, CLASS_MATCHED_STREAM)
    order = order[estimated[order]]
    classes, counts = np.unique(labels[removed], return_counts=True)
    chosen = [order[labels[order] == label][:count] for label, count in zip(classes, counts, strict=True)]
    return np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *chosen]))


def influenced_tests(removed: np.ndarray, pair_train_idx: np.ndarray, pair_test_idx: np.ndarray) -> np.ndarray:
    """Test side (unique, sorted) of the pairs whose training side is in `removed`."""
    return np.unique(pair_test_idx[np.isin(pair_train_idx, removed)])


@dataclass(frozen=True)
class Condition:
    """One removal set; `influenced` is its selection's influenced test set."""

    selection: str
    level: float | None
    control: str
    draw: int
    removed: np.ndarray
    influenced: np.ndarray


def conditions(selections: Iterable[Selection], est: SweepEstimates, draws: int) -> list[Condition]:
    """The baseline, then per selection: itself and `draws` random and class-matched controls."""
    nothing = np.zeros(0, dtype=np.int64)
    found = [Condition("none", None, "removed", 0, nothing, nothing)]
    for sel in selections:
        influenced = influenced_tests(sel.removed, est.pair_train_idx, est.pair_test_idx)
        found.append(Condition(sel.kind, sel.level, "removed", 0, sel.removed, influenced))
        for draw in range(draws):
            found.append(Condition(sel.kind, sel.level, "random", draw,
                                   random_control(len(sel.removed), est.estimated, draw), influenced))
            found.append(Condition(sel.kind, sel.level, "class_matched", draw,
                                   class_matched_control(sel.removed, est.train_label, est.estimated, draw),
                                   influenced))
    return found


# ------------------------------------------------------------------------------------------ retraining

@dataclass(frozen=True)
class RemovalRow:
    """One retrained model; the fields are the columns of removal.csv, in order."""

    selection: str
    level: float | None
    control: str
    draw: int
    seed: int
    n_removed: int
    test_acc: float
    influenced_acc: float | None
    n_influenced: int


def plan_jobs(items: Sequence[tuple[Condition, int]], n_train: int, pack_request: Any,
              model_cfg: Any) -> list[list[tuple[Condition, int]]]:
    """(condition, seed) items grouped by kept-set size, each group cut into packs."""
    from src.experiment import resolve_pack

    by_size: dict[int, list[tuple[Condition, int]]] = defaultdict(list)
    for item in items:
        by_size[n_train - len(item[0].removed)].append(item)
    jobs = []
    for size in sorted(by_size):
        if size < 1:
            raise ConfigError("a removal leaves no training example; use a larger --theta or a smaller --top-q")
        group = by_size[size]
        pack, _ = resolve_pack(pack_request, model_cfg, len(group))
        jobs += [group[start:start + pack] for start in range(0, len(group), pack)]
    return jobs


def kept_masks(job: Sequence[tuple[Condition, int]], n_train: int) -> np.ndarray:
    masks = np.ones((len(job), n_train), dtype=bool)
    for mask, (condition, _) in zip(masks, job, strict=True):
        mask[condition.removed] = False
    return masks


def score(condition: Condition, seed: int, test_pred: np.ndarray, test_label: np.ndarray) -> RemovalRow:
    correct = test_pred == test_label
    influenced = condition.influenced
    return RemovalRow(condition.selection, condition.level, condition.control, condition.draw, seed,
                      len(condition.removed), float(correct.mean()),
                      float(correct[influenced].mean()) if influenced.size else None, int(influenced.size))


def retrain(cfg: DictConfig, dataset: Any, jobs: Sequence[Sequence[tuple[Condition, int]]]) -> list[RemovalRow]:
    """Train every job (one packed fit each) and score its members on the test set."""
    from src.training import fit

    rows = []
    n_train = len(dataset.y_train)
    for number, job in enumerate(jobs, 1):
        seeds = [seed for _, seed in job]
        module = fit(cfg, dataset, seeds, kept_masks(job, n_train))
        test_pred = module.evaluate("test", int(cfg.dataset.eval_batch_size)).pred
        alive = module.alive.cpu().numpy()
        for k, (condition, seed) in enumerate(job):
            if alive[k]:
                rows.append(score(condition, seed, test_pred[k], dataset.y_test))
            else:
                print(f"diverged, left out: {condition.selection} {condition.level} {condition.control} "
                      f"draw {condition.draw} seed {seed}")
        print(f"job {number}/{len(jobs)}: {len(job)} models on {n_train - len(job[0][0].removed)} examples",
              flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ CSV

def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)  # repr: read_removal_csv gets the same float


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(value) for value in row] for row in rows)
    return buffer.getvalue()


def _optional(text: str, kind: type) -> Any:
    return None if text == "" else kind(text)


def read_removal_csv(path: str | Path) -> list[RemovalRow]:
    """The rows of a removal.csv; a file with other columns or values is a DataError."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, ()))
        if header != COLUMNS:
            raise DataError(f"{path}: columns {list(header)} are not {list(COLUMNS)}; rerun python -m src.removal")
        try:
            rows = [RemovalRow(line[0], _optional(line[1], float), line[2], int(line[3]), int(line[4]), int(line[5]),
                               float(line[6]), _optional(line[7], float), int(line[8])) for line in reader]
        except (ValueError, IndexError) as err:
            raise DataError(f"{path}: malformed row ({err}); rerun python -m src.removal") from err
    bad = [row for row in rows if row.selection not in SELECTIONS or row.control not in CONTROLS]
    if bad:
        raise DataError(f"{path}: unknown selection or control in {bad[0]}")
    return rows


# -------------------------------------------------------------------------------------------- summary

def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and half-width of the two-sided CI_LEVEL Student-t interval (None with fewer than 2 values)."""
    from scipy.stats import t

    if not values:
        return None, None
    array = np.asarray(values, dtype=np.float64)
    if array.size < 2:
        return float(array.mean()), None
    half = t.ppf(0.5 + CI_LEVEL / 2, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size)
    return float(array.mean()), float(half)


def _per_seed(rows: Sequence[RemovalRow], field: str) -> dict[int, float]:
    """Per seed, the mean over draws of `field` (rows where it is defined)."""
    values: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        value = getattr(row, field)
        if value is not None:
            values[row.seed].append(value)
    return {seed: float(np.mean(v)) for seed, v in values.items()}


SUMMARY_COLUMNS = ("selection", "level", "control", "n_removed", "n_influenced", "seeds", "draws",
                   "test_acc", "test_acc_ci95", "influenced_acc", "influenced_acc_ci95",
                   "removed_minus_control_test_acc", "removed_minus_control_test_acc_ci95",
                   "removed_minus_control_influenced_acc", "removed_minus_control_influenced_acc_ci95")


def condition_order(selection: str, level: float | None, control: str) -> tuple[int, float, int]:
    """Sort key: baseline, theta, top_q, pairs; levels ascending; removed, random, class_matched."""
    return SELECTIONS.index(selection), -1.0 if level is None else level, CONTROLS.index(control)


def summarize(rows: Sequence[RemovalRow]) -> list[dict[str, Any]]:
    """Per (selection, level, control): mean and 95% t half-width over seeds, and the paired difference
    removed - control over the seeds both have (None where undefined); keys are SUMMARY_COLUMNS."""
    groups: dict[tuple[str, float | None, str], list[RemovalRow]] = defaultdict(list)
    for row in rows:
        groups[(row.selection, row.level, row.control)].append(row)
    summary = []
    for key in sorted(groups, key=lambda k: condition_order(*k)):
        selection, level, control = key
        group = groups[key]
        entry: dict[str, Any] = {
            "selection": selection, "level": level, "control": control,
            "n_removed": group[0].n_removed, "n_influenced": group[0].n_influenced,
            "seeds": len({row.seed for row in group}), "draws": len({row.draw for row in group}),
        }
        for field in ("test_acc", "influenced_acc"):
            entry[field], entry[f"{field}_ci95"] = mean_ci(list(_per_seed(group, field).values()))
            removed = groups.get((selection, level, "removed"), [])
            if control == "removed" or not removed:
                entry[f"removed_minus_control_{field}"] = entry[f"removed_minus_control_{field}_ci95"] = None
                continue
            mine, theirs = _per_seed(group, field), _per_seed(removed, field)
            differences = [theirs[seed] - mine[seed] for seed in sorted(set(mine) & set(theirs))]
            entry[f"removed_minus_control_{field}"], entry[f"removed_minus_control_{field}_ci95"] = \
                mean_ci(differences)
        summary.append({column: entry[column] for column in SUMMARY_COLUMNS})
    return summary


# ------------------------------------------------------------------------------------------------ plot

def render_png(summary: Sequence[dict[str, Any]]) -> bytes:
    """Test and influenced accuracy per selection kind; error bars are the 95% t half-widths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = [kind for kind in SELECTIONS[1:] if any(entry["selection"] == kind for entry in summary)]
    baseline = next((entry for entry in summary if entry["selection"] == "none"), None)
    figure = Figure(figsize=(4.2 * max(1, len(kinds)), 6.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, max(1, len(kinds)), squeeze=False)
    for column, kind in enumerate(kinds):
        for row, field in enumerate(("test_acc", "influenced_acc")):
            ax = axes[row, column]
            for offset, control in enumerate(CONTROLS):
                entries = [e for e in summary if e["selection"] == kind and e["control"] == control
                           and e[field] is not None]
                x = [offset if e["level"] is None else e["level"] for e in entries]
                ax.errorbar(x, [e[field] for e in entries], yerr=[e[f"{field}_ci95"] or 0.0 for e in entries],
                            marker="o", capsize=3, label=control)
            if baseline is not None and field == "test_acc":
                ax.axhline(baseline["test_acc"], color="gray", linestyle="--", label="nothing removed")
            if kind == "pairs":
                ax.set_xticks(range(len(CONTROLS)), CONTROLS, fontsize=8)
            else:
                ax.set_xlabel("theta (mem >=)" if kind == "theta" else "q (top fraction by mem)")
            ax.set_ylabel("test accuracy" if field == "test_acc" else "influenced test accuracy")
            ax.set_title(f"remove: {kind}", fontsize=9)
            ax.legend(fontsize=7)
    figure.suptitle("Retrained on the rest: removed vs random vs class-matched (95% t CI over seeds)", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_outputs(out_dir: Path, rows: Sequence[RemovalRow], summary: Sequence[dict[str, Any]]) -> list[Path]:
    payloads = {
        "removal.csv": csv_text(COLUMNS, (astuple(row) for row in rows)).encode(),
        "removal_summary.csv": csv_text(SUMMARY_COLUMNS, ([e[c] for c in SUMMARY_COLUMNS] for e in summary)).encode(),
        "removal.png": render_png(summary),
    }
    return [write_atomic(out_dir / name, lambda handle, data=data: handle.write(data))
            for name, data in payloads.items()]


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    def fmt(value: float | None, spec: str = ".4f") -> str:
        return "n/a" if value is None else format(value, spec)

    lines = ["selection level control n_removed | test acc (+-95% t) | influenced acc (n) | removed - control: "
             "test, influenced"]
    for e in summary:
        lines.append(f"{e['selection']} {fmt(e['level'], 'g')} {e['control']} {e['n_removed']} | "
                     f"{fmt(e['test_acc'])} +- {fmt(e['test_acc_ci95'])} | {fmt(e['influenced_acc'])} +- "
                     f"{fmt(e['influenced_acc_ci95'])} ({e['n_influenced']}) | "
                     f"{fmt(e['removed_minus_control_test_acc'])} +- {fmt(e['removed_minus_control_test_acc_ci95'])}, "
                     f"{fmt(e['removed_minus_control_influenced_acc'])} +- "
                     f"{fmt(e['removed_minus_control_influenced_acc_ci95'])}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI

def parse_seeds(tokens: Sequence[str]) -> list[int]:
    """`0 1 5` or `0..3` (inclusive), mixed; each seed once."""
    seeds = []
    for token in tokens:
        match = SEED_RANGE.match(token)
        if match:
            seeds += range(int(match[1]), int(match[2]) + 1)
        elif token.isdigit():
            seeds.append(int(token))
        else:
            raise ConfigError(f"--seeds {token!r}: give non-negative integers or ranges a..b, e.g. --seeds 0..3")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {' '.join(tokens)} must name at least one seed, each once")
    return seeds


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options, and the `key=value` overrides of the training recipe (any argument holding '=' that is no option)."""
    overrides = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    parser = argparse.ArgumentParser(prog="python -m src.removal", description=__doc__.splitlines()[0])
    parser.add_argument("estimates", type=Path, help="directory holding estimates.npz")
    parser.add_argument("--theta", type=float, nargs="+", default=[], help="remove mem >= theta, per value")
    parser.add_argument("--top-q", type=float, nargs="+", default=[], help="remove the top fraction q by mem")
    parser.add_argument("--pairs", action="store_true", help="remove the training side of the high-influence pairs")
    parser.add_argument("--draws", type=int, default=3, help="random and class-matched draws per selection")
    parser.add_argument("--seeds", nargs="+", default=["0..2"], help="training seeds, e.g. 0 1 2 or 0..3")
    parser.add_argument("--sweep", type=Path, default=None, help="sweep directory (default: the estimates' parent)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <estimates>/../removal)")
    args = parser.parse_args([arg for arg in argv if arg not in overrides])
    return args, overrides


def selections(est: SweepEstimates, thetas: Sequence[float], top_qs: Sequence[float], pairs: bool) -> list[Selection]:
    if not (thetas or top_qs or pairs):
        raise ConfigError("choose what to remove: --theta 0.25, --top-q 0.05 and/or --pairs")
    if any(not 0 < q <= 1 for q in top_qs):
        raise ConfigError(f"--top-q {list(top_qs)}: each fraction must lie in (0, 1]")
    chosen = [theta_selection(est.mem, theta) for theta in thetas]
    chosen += [top_q_selection(est.mem, est.mem_soft, q) for q in top_qs]
    if pairs:
        chosen.append(pair_selection(est.mem, est.pair_train_idx))
    for sel in chosen:
        if not sel.removed.size:
            print(f"{sel.kind} {sel.level if sel.level is not None else ''}: selects no example, left out")
    return [sel for sel in chosen if sel.removed.size]


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    from src.data import load_dataset
    from src.experiment import validate_config

    if args.draws < 1:
        raise ConfigError(f"--draws {args.draws} must be at least 1")
    seeds = parse_seeds(args.seeds)
    est = load_estimates(args.estimates)
    out_dir = args.out if args.out is not None else est.directory.parent / "removal"
    cfg = retrain_config(sweep_config(est.directory, est.summary, args.sweep), overrides, out_dir)
    validate_config(cfg)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    if dataset.fingerprint != est.summary["data_fingerprint"] or not np.array_equal(dataset.y_train, est.train_label):
        raise DataError(f"the data loaded here (fingerprint {dataset.fingerprint}) are not the estimated data "
                        f"({est.summary['data_fingerprint']}); drop dataset overrides or fix paths.data_dir")
    chosen = selections(est, args.theta, args.top_q, args.pairs)
    items = [(condition, seed) for condition in conditions(chosen, est, args.draws) for seed in seeds]
    jobs = plan_jobs(items, len(dataset.y_train), cfg.get("pack", "auto"), cfg.model)
    print(f"{len(items)} models ({len(items) // len(seeds)} conditions x {len(seeds)} seeds) in {len(jobs)} jobs")
    rows = sorted(retrain(cfg, dataset, jobs), key=lambda row: (*condition_order(row.selection, row.level, row.control),
                                                                 row.draw, row.seed))
    summary = summarize(rows)
    written = write_outputs(out_dir, rows, summary)
    print(format_summary(summary))
    print(f"wrote {', '.join(path.name for path in written)} to {out_dir}")


def main(argv: list[str] | None = None) -> int:
    args, overrides = _parse_args(sys.argv[1:] if argv is None else argv)
    return cli_exit_code(lambda: run(args, overrides))


if __name__ == "__main__":
    sys.exit(main())
