"""Memorization over training epochs, by group: clean and flipped labels, easy and hard clean examples (the
command line is src/dynamics.py).

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

from typing import Any

import numpy as np

from src.errors import ConfigError, MeminfError
from src.util.plotting import new_figure, png_bytes
from src.util.stats import auroc, mean_ci

GROUPS = ("clean", "flipped", "easy", "hard")
DEFAULT_HARD_FRACTION = 0.1  # the size of the flipped group in mem_epochs_mnist (label_noise 0.1)
NEEDS = ("mem_epoch", "epoch_list", "proxy_learn_speed")


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


def group_ci(values: np.ndarray) -> tuple[int, float, float, float]:
    """(n, mean, low, high) over the finite values: mean +- 1.96 sd / sqrt(n); NaN bounds below 2 values."""
    ci = mean_ci(values)
    return ci.n, *(np.nan if value is None else value for value in (ci.mean, ci.low, ci.high))


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
    rows = [(name, epoch, *group_ci(mem_epoch[e][members[name]]))
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
    figure = new_figure((6, 4))
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
    return png_bytes(figure)


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
