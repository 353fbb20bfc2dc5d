"""The results of a removal experiment: one row per retrained model (removal.csv), the summary over seeds with
Student-t intervals and paired differences (removal_summary.csv), the plot (removal.png), and the estimates it
was made from (removal_source.json: `Estimates.provenance()`, so that a report embedding it can check them).
src.report and src.evaluate read removal.csv through `read_removal_csv`, src.report the source through
`read_removal_source`."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.io import write_files
from src.errors import DataError, MeminfError
from src.util.plotting import new_figure, png_bytes
from src.util.stats import mean_ci
from src.util.tables import csv_rows

COLUMNS = ("selection", "level", "control", "draw", "seed", "n_removed", "test_acc", "influenced_acc", "n_influenced")
SELECTIONS = ("none", "theta", "top_q", "pairs")
CONTROLS = ("removed", "random", "class_matched")
REMOVAL_CSV = "removal.csv"
REMOVAL_SOURCE = "removal_source.json"
SOURCE_KEYS = ("experiment_name", "experiment_hash", "estimator", "runs_used", "estimates_fingerprint")


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


def _mean_half(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and half-width of the 95% Student-t interval over seeds (None with fewer than 2 values)."""
    ci = mean_ci(values, student_t=True)
    return ci.mean, ci.half


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
            entry[field], entry[f"{field}_ci95"] = _mean_half(list(_per_seed(group, field).values()))
            removed = groups.get((selection, level, "removed"), [])
            if control == "removed" or not removed:
                entry[f"removed_minus_control_{field}"] = entry[f"removed_minus_control_{field}_ci95"] = None
                continue
            mine, theirs = _per_seed(group, field), _per_seed(removed, field)
            differences = [theirs[seed] - mine[seed] for seed in sorted(set(mine) & set(theirs))]
            entry[f"removed_minus_control_{field}"], entry[f"removed_minus_control_{field}_ci95"] = \
                _mean_half(differences)
        summary.append({column: entry[column] for column in SUMMARY_COLUMNS})
    return summary


def render_png(summary: Sequence[dict[str, Any]]) -> bytes:
    """Test and influenced accuracy per selection kind; error bars are the 95% t half-widths."""
    kinds = [kind for kind in SELECTIONS[1:] if any(entry["selection"] == kind for entry in summary)]
    baseline = next((entry for entry in summary if entry["selection"] == "none"), None)
    figure = new_figure((4.2 * max(1, len(kinds)), 6.4), layout="constrained")
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
    return png_bytes(figure)


def read_removal_source(directory: Path) -> dict[str, Any] | None:
    """The provenance of the estimates a removal experiment was made from; None for one written before
    removal_source.json existed."""
    path = directory / REMOVAL_SOURCE
    if not path.exists():
        return None
    try:
        source = json.loads(path.read_text())
        return {key: source[key] for key in SOURCE_KEYS} | {"estimates_dir": source.get("estimates_dir")}
    except OSError as err:
        raise MeminfError(f"{path}: unreadable ({err}); rerun python -m src.removal") from err
    except (ValueError, KeyError, TypeError) as err:
        raise MeminfError(f"{path}: not a {REMOVAL_SOURCE} of this meminf version ({err!r}); rerun "
                          "python -m src.removal") from err


def write_outputs(out_dir: Path, rows: Sequence[RemovalRow], summary: Sequence[dict[str, Any]],
                  source: dict[str, Any]) -> list[Path]:
    """removal.csv, removal_summary.csv, removal.png and removal_source.json (`source`: the estimates'
    provenance), each written atomically."""
    payloads = {
        REMOVAL_CSV: csv_rows(COLUMNS, (astuple(row) for row in rows), exact=True).encode(),
        "removal_summary.csv": csv_rows(SUMMARY_COLUMNS, ([e[c] for c in SUMMARY_COLUMNS] for e in summary),
                                        exact=True).encode(),
        "removal.png": render_png(summary),
        REMOVAL_SOURCE: (json.dumps(source, indent=2, allow_nan=False) + "\n").encode(),
    }
    return write_files(out_dir, payloads)


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """The printed table: each undefined cell says why (one seed, nothing influenced, the removed set itself)."""
    lines = ["selection level control n_removed | test acc (+-95% t) | influenced acc (n) | removed - control: "
             "test, influenced"]
    for e in summary:
        level = "-" if e["level"] is None else format(e["level"], "g")
        influenced = (f"{_interval(e['influenced_acc'], e['influenced_acc_ci95'])} ({e['n_influenced']})"
                      if e["n_influenced"] else "no influenced test examples")
        lines.append(f"{e['selection']} {level} {e['control']} {e['n_removed']} | "
                     f"{_interval(e['test_acc'], e['test_acc_ci95'])} | {influenced} | {_differences(e)}")
    return "\n".join(lines)


def _interval(value: float | None, half: float | None) -> str:
    if value is None:
        return "none"
    return f"{value:.4f} (one seed: no interval)" if half is None else f"{value:.4f} +- {half:.4f}"


def _differences(e: dict[str, Any]) -> str:
    """The removed - control cell of one summary entry (removed, random or class-matched)."""
    if e["selection"] == "none":
        return "none: nothing removed"
    if e["control"] == "removed":
        return "none: this row is the removed set"
    test, influenced = (e[f"removed_minus_control_{field}"] for field in ("test_acc", "influenced_acc"))
    if test is None:
        return "none: no seed in common with the removed set"
    influenced_text = "none (no influenced test examples)" if influenced is None else \
        _interval(influenced, e["removed_minus_control_influenced_acc_ci95"])
    return f"{_interval(test, e['removed_minus_control_test_acc_ci95'])}, {influenced_text}"
