"""Memorization over training epochs, by group: clean and flipped labels, easy and hard clean examples.

    python -m src.dynamics <estimates dir or sweep dir> [--out DIR] [--hard-fraction 0.1]

Input: the estimates of a sweep trained with `record.epochs` (e.g. experiment=mem_epochs_mnist, which flips
10% of the training labels): `mem_epoch` (E, n), `epoch_list`, `flipped` and `proxy_learn_speed` of
estimates.npz (python -m src.estimate). Groups of training examples (those with an estimate: in and out of
some subset):
- clean / flipped: whether dataset.label_noise flipped the label (mem is measured against the flipped one);
- easy / hard: clean examples split by learn speed (the mean over in-subset runs of the fraction of training
  steps that predicted the example's label): hard = the `--hard-fraction` of clean examples learned slowest
  (ties to the lower index), easy = the other clean examples.
Per group and epoch: the mean of mem_epoch over the group's examples and its 95% interval, mean +- 1.96 SE
with SE = sd / sqrt(n) over examples (ddof 1; it includes each estimate's own noise); NaN below 2 examples.
Also the AUROC of mem for telling flipped from clean examples, per epoch and for the final mem (ties 1/2).

Outputs (in --out, default <estimates dir>/dynamics/), each written atomically: dynamics.csv (group, epoch,
n, mean_mem, ci_low, ci_high; an empty field for NaN), dynamics.json (definitions, group sizes, AUROCs) and
dynamics.png (mean mem per epoch with its interval, one line per group).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from src.compare import estimates_dir
from src.errors import ConfigError, MeminfError, cli_exit_code
from src.estimate import csv_text
from src.evaluate import auroc
from src.records import write_atomic

Z_95 = 1.959964  # two-sided 95% normal quantile
GROUPS = ("clean", "flipped", "easy", "hard")
DEFAULT_HARD_FRACTION = 0.1  # the size of the flipped group in mem_epochs_mnist (label_noise 0.1)
ESTIMATES_NAME = "estimates.npz"


def read_estimates(directory: Path, keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`keys` of estimates.npz in an estimates dir (or a sweep dir holding estimates/) and its summary."""
    path = estimates_dir(directory) / ESTIMATES_NAME
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in (*keys, "summary") if key not in archive.files]
            if missing:
                raise MeminfError(f"{path} lacks {', '.join(missing)}; rerun python -m src.estimate on the sweep "
                                  "(records of this meminf version)")
            arrays = {key: archive[key] for key in keys}
            summary = json.loads(str(archive["summary"][()]))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise MeminfError(f"{path} is unreadable ({err}); rerun python -m src.estimate") from err
    if not isinstance(summary, dict):
        raise MeminfError(f"{path}: the summary is not a JSON object; rerun python -m src.estimate")
    return arrays, summary


def hard_examples(learn_speed: np.ndarray, candidates: np.ndarray, fraction: float) -> np.ndarray:
    """bool (n,): the `fraction` of `candidates` with the lowest learn speed (ties to the lower index)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--hard-fraction {fraction} must lie in (0, 1)")
    idx = np.flatnonzero(candidates)
    count = round(fraction * idx.size)
    hard = np.zeros(learn_speed.size, dtype=bool)
    hard[idx[np.argsort(learn_speed[idx], kind="stable")[:count]]] = True
    return hard


def groups(flipped: np.ndarray, learn_speed: np.ndarray, has_estimate: np.ndarray,
           hard_fraction: float) -> dict[str, np.ndarray]:
    """bool (n,) per group in GROUPS; only examples with an estimate (and, for easy/hard, a learn speed)."""
    clean = has_estimate & ~flipped
    hard = hard_examples(learn_speed, clean & np.isfinite(learn_speed), hard_fraction)
    return {"clean": clean, "flipped": has_estimate & flipped, "easy": clean & np.isfinite(learn_speed) & ~hard,
            "hard": hard}


def mean_ci(values: np.ndarray) -> tuple[int, float, float, float]:
    """(n, mean, low, high) over the finite values: mean +- Z_95 * sd / sqrt(n); NaN bounds below 2 values."""
    values = values[np.isfinite(values)]
    n = values.size
    if n == 0:
        return 0, np.nan, np.nan, np.nan
    mean = float(values.mean())
    if n < 2:
        return n, mean, np.nan, np.nan
    half = Z_95 * float(values.std(ddof=1)) / np.sqrt(n)
    return n, mean, mean - half, mean + half


def flipped_auroc(scores: np.ndarray, flipped: np.ndarray) -> float | None:
    """AUROC of the scores, flipped (positive) vs clean examples; None when it is undefined."""
    value = auroc(scores, flipped).auroc
    return value if np.isfinite(value) else None


def dynamics(arrays: dict[str, np.ndarray], hard_fraction: float) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The CSV columns (one row per group and epoch) and the JSON report."""
    mem_epoch, epochs, mem = arrays["mem_epoch"], arrays["epoch_list"].tolist(), arrays["mem"]
    if not epochs:
        raise MeminfError("these estimates have no per-epoch results: train the sweep with record.epochs=[...] "
                          "(e.g. experiment=mem_epochs_mnist), then rerun python -m src.estimate")
    members = groups(arrays["flipped"].astype(bool), arrays["proxy_learn_speed"], np.isfinite(mem), hard_fraction)
    rows = [(name, epoch, *mean_ci(mem_epoch[e][members[name]]))
            for name in GROUPS for e, epoch in enumerate(epochs)]
    columns = {key: np.array([row[i] for row in rows]) for i, key in
               enumerate(("group", "epoch", "n", "mean_mem", "ci_low", "ci_high"))}
    report = {
        "epoch_list": epochs, "hard_fraction": hard_fraction,
        "group_sizes": {name: int(members[name].sum()) for name in GROUPS},
        "auroc_flipped_vs_clean": {str(epoch): flipped_auroc(mem_epoch[e], members["flipped"])
                                   for e, epoch in enumerate(epochs)},
        "auroc_flipped_vs_clean_final_mem": flipped_auroc(mem, members["flipped"]),
        "definitions": {
            "clean, flipped": "examples with an estimate whose label was kept / flipped (dataset.label_noise)",
            "easy, hard": f"clean examples; hard: the {hard_fraction:g} of them with the lowest mean learn speed "
                          "(proxy_learn_speed), ties to the lower index; easy: the others",
            "ci": "mean +- 1.96 sd/sqrt(n) over the group's examples",
            "auroc": "of mem for flipped (positive) vs clean examples; ties count 1/2",
        },
    }
    return columns, report


def render_png(columns: dict[str, np.ndarray]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name in GROUPS:
        rows = columns["group"] == name
        epochs = columns["epoch"][rows].astype(float)
        axes.plot(epochs, columns["mean_mem"][rows].astype(float), marker="o", label=name)
        axes.fill_between(epochs, columns["ci_low"][rows].astype(float), columns["ci_high"][rows].astype(float),
                          alpha=0.2)
    axes.set_xlabel("epoch")
    axes.set_ylabel("mean mem (95% CI)")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def format_report(columns: dict[str, np.ndarray], report: dict[str, Any]) -> str:
    lines = [f"groups: {', '.join(f'{name} {size}' for name, size in report['group_sizes'].items())}"]
    for name in GROUPS:
        rows = columns["group"] == name
        cells = ", ".join(f"{epoch}: {mean:.3f} [{low:.3f}, {high:.3f}]" for epoch, mean, low, high in zip(
            columns["epoch"][rows], columns["mean_mem"][rows], columns["ci_low"][rows], columns["ci_high"][rows],
            strict=True))
        lines.append(f"mean mem by epoch, {name}: {cells}")
    aurocs = ", ".join(f"{epoch}: {'n/a' if value is None else f'{value:.3f}'}"
                       for epoch, value in report["auroc_flipped_vs_clean"].items())
    lines.append(f"AUROC of mem, flipped vs clean, by epoch: {aurocs}")
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.dynamics", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="estimates directory, or a sweep directory holding estimates/")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <estimates dir>/dynamics)")
    parser.add_argument("--hard-fraction", type=float, default=DEFAULT_HARD_FRACTION,
                        help="fraction of clean examples, learned slowest, that form the hard group")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    arrays, _ = read_estimates(args.input, ("mem", "mem_epoch", "epoch_list", "flipped", "proxy_learn_speed"))
    columns, report = dynamics(arrays, args.hard_fraction)
    out = args.out if args.out is not None else estimates_dir(args.input) / "dynamics"
    payloads = {"dynamics.csv": csv_text(columns).encode(), "dynamics.png": render_png(columns),
                "dynamics.json": (json.dumps(report, indent=2, allow_nan=False) + "\n").encode()}
    for name, data in payloads.items():
        write_atomic(out / name, lambda handle, data=data: handle.write(data))
    print(format_report(columns, report))
    print(f"wrote {', '.join(payloads)} to {out}")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return cli_exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
