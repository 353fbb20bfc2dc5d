"""C-scores (Jiang, Zhang, Talwar, Mozer 2021) of the training examples from sweeps at several subset ratios.

(the command line is src/cscore.py)

Each sweep holds subset-training records of the same data (equal data_fingerprint; one sweep per ratio; the
estimator refuses mixed ratios within one sweep, hence this entry). For training example i and a sweep at
ratio r, the held-out accuracy is acc_out_r(i) = the mean, over that sweep's runs with i NOT in the subset,
of the 0/1 correctness of i's trained label (NaN when no run left i out). The C-score is the mean of
acc_out_r(i) over the ratios given, NaN unless every ratio has a value (so that all C-scores average the
same ratios). With --mem (an estimates dir, or a sweep dir holding estimates/, of the same data) the
Spearman correlation of C-score with mem (over examples where both are defined) goes into the summary and
cscore.png plots one against the other.

Outputs (in --out, default <the first sweep dir>/cscore), each written atomically: cscore.csv (index, label, cscore,
acc_out_r<ratio> and n_out_r<ratio> per ratio, mem with --mem; an empty field for NaN), cscore_summary.json
and, with --mem, cscore.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.estimates import read_estimates
from src.errors import MeminfError
from src.estimators.subsample.stats import SweepStats
from src.util.plotting import new_figure, png_bytes
from src.util.stats import spearman
from src.util.tables import csv_text

OUTPUT_FILES = ("cscore.csv", "cscore_summary.json", "cscore.png")


def held_out_accuracy(stats: SweepStats) -> tuple[np.ndarray, np.ndarray]:
    """(acc_out (n,), n_out (n,)): mean train correctness over the runs that left each example out."""
    n_out = stats.n_runs - stats.n_in
    acc = np.full(stats.n_train, np.nan)
    np.divide(stats.hard_all - stats.hard_in, n_out, out=acc, where=n_out > 0)
    return acc, n_out.astype(np.int64)


def check_same_data(sweeps: list[tuple[Path, SweepStats]]) -> None:
    """One line naming the first sweep over other data (fingerprint or trained labels), or a repeated ratio."""
    first_dir, first = sweeps[0]
    ratios: dict[float, Path] = {}
    for directory, stats in sweeps:
        fingerprint = stats.meta["data_fingerprint"]
        if fingerprint != first.meta["data_fingerprint"] or not np.array_equal(stats.train_label, first.train_label):
            raise MeminfError(f"{directory} holds other data than {first_dir} (data_fingerprint {fingerprint} vs "
                              f"{first.meta['data_fingerprint']}); a C-score needs sweeps of the same data")
        ratio = float(stats.meta["ratio"])
        if ratio in ratios:
            raise MeminfError(f"{directory} and {ratios[ratio]} both have subset ratio {ratio}; "
                              "pass one sweep per ratio")
        ratios[ratio] = directory


def cscores(sweeps: list[tuple[Path, SweepStats]]) -> tuple[np.ndarray, dict[float, tuple[np.ndarray, np.ndarray]]]:
    """The C-score (n,) and, per ratio (ascending), (acc_out, n_out)."""
    check_same_data(sweeps)
    per_ratio = {float(stats.meta["ratio"]): held_out_accuracy(stats)
                 for _, stats in sorted(sweeps, key=lambda item: float(item[1].meta["ratio"]))}
    return np.mean([acc for acc, _ in per_ratio.values()], axis=0), per_ratio


def read_mem(directory: Path, fingerprint: str, n_train: int) -> np.ndarray:
    est = read_estimates(directory)
    if est.summary["data_fingerprint"] != fingerprint or est.n_train != n_train:
        raise MeminfError(f"--mem {directory} holds estimates of other data (data_fingerprint "
                          f"{est.summary['data_fingerprint']}, not {fingerprint}); pass the same data's estimates")
    return est.mem.astype(np.float64)


def render_png(cscore: np.ndarray, mem: np.ndarray, rho: float | None) -> bytes:
    figure = new_figure((5, 4))
    axes = figure.add_subplot()
    axes.scatter(cscore, mem, s=4, alpha=0.4)
    axes.set_xlabel("C-score (mean held-out accuracy over ratios)")
    axes.set_ylabel("mem")
    axes.set_title(f"Spearman {'n/a' if rho is None else f'{rho:.3f}'}")
    figure.tight_layout()
    return png_bytes(figure)


def cscore_outputs(sweeps: list[tuple[Path, SweepStats]],
                   mem_dir: Path | None) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files (cscore.csv, cscore_summary.json, cscore.png with a mem estimate) and the summary."""
    cscore, per_ratio = cscores(sweeps)
    first = sweeps[0][1]
    columns: dict[str, np.ndarray] = {"index": np.arange(first.n_train), "label": first.train_label,
                                      "cscore": cscore}
    for ratio, (acc, n_out) in per_ratio.items():
        columns[f"acc_out_r{ratio:g}"], columns[f"n_out_r{ratio:g}"] = acc, n_out
    summary: dict[str, Any] = {
        "sweeps": [{"dir": str(directory), "ratio": float(stats.meta["ratio"]), "runs": stats.n_runs}
                   for directory, stats in sweeps],
        "data_fingerprint": first.meta["data_fingerprint"], "n_train": first.n_train,
        "ratios": [float(ratio) for ratio in per_ratio],
        "examples_with_cscore": int(np.isfinite(cscore).sum()),
        "mean_cscore": float(np.nanmean(cscore)) if np.isfinite(cscore).any() else None,
        "definition": "mean over the ratios of the held-out accuracy (runs with the example out of the subset); "
                      "NaN unless every ratio left the example out at least once",
    }
    payloads = {}
    if mem_dir is not None:
        mem = read_mem(mem_dir, first.meta["data_fingerprint"], first.n_train)
        columns["mem"] = mem
        summary["mem_estimates"] = str(mem_dir)
        summary["spearman_cscore_mem"] = spearman(cscore, mem)
        summary["spearman_acc_out_mem_by_ratio"] = {f"{ratio:g}": spearman(acc, mem)
                                                    for ratio, (acc, _) in per_ratio.items()}
        payloads["cscore.png"] = render_png(cscore, mem, summary["spearman_cscore_mem"])
    payloads["cscore.csv"] = csv_text(columns).encode()
    payloads["cscore_summary.json"] = (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode()
    return payloads, summary
