"""Built-in evaluation of memorization and influence scores on a sweep: planted label noise, the linear
datamodeling score (LDS) and membership inference (LiRA). The definitions: src/evaluate.py (the command line)."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from src.analyses.evaluation.lds import FIT_MATRIX, check_dense_cap, evaluate_lds, fit_estimate, read_influence
from src.analyses.evaluation.mia import (
    ATTACKS,
    FPR_TARGETS,
    attack_metrics,
    lira_scores,
    render_roc,
    roc_csv,
    use_per_example_variance,
    vulnerability,
)
from src.analyses.evaluation.noise import SWEEP_SOURCE, evaluate_noise
from src.analyses.evaluation.split import SplitSweep, holdout_seeds, load_split, load_split_sweeps, other_sweep
from src.analyses.removal_table import REMOVAL_CSV, read_removal_csv
from src.analyses.removal_table import summarize as summarize_removal
from src.contracts.io import write_files
from src.errors import ConfigError
from src.estimators.subsample.estimator import write_outputs
from src.estimators.subsample.load import load_sweep
from src.estimators.subsample.memorization import SubsampleEstimates
from src.estimators.subsample.stats import SweepStats
from src.estimators.subsample.summary import summarize
from src.util.stats import finite_or_none, spearman
from src.util.tables import csv_text, fmt

PARTS = ("noise", "lds", "mia")
FIT_ESTIMATES_DIR = "estimates_without_holdout"
OUTPUT_FILES = ("evaluation.json", "noise_auroc.csv", "lds.csv", "lds.png", "mia_roc.csv", "mia_roc.png",
                "mia_examples.csv")


@dataclass
class Evaluation:
    """Everything computed, ready to be written."""

    summary: dict[str, Any]
    payloads: dict[str, bytes] = field(default_factory=dict)
    fit: tuple[SweepStats, SubsampleEstimates] | None = None  # the fit runs' estimates, written beside

    def add(self, part: str, summary: dict[str, Any], payloads: Mapping[str, bytes]) -> None:
        self.summary[part] = summary
        self.payloads.update(payloads)


def removal_summary(removal_path: Path) -> dict[str, Any]:
    """The removal experiment's summary (src.removal): per selection, level and control, accuracy over seeds
    and the paired difference removed - control."""
    csv_path = removal_path / REMOVAL_CSV if removal_path.is_dir() else removal_path
    return {"csv": str(csv_path), "rows": summarize_removal(read_removal_csv(csv_path))}


def check_matrix_names(infl_files: Sequence[Path]) -> None:
    """--infl files are named by their stem (lds_<stem> in lds.csv): distinct, and not the fit estimate's."""
    stems = [FIT_MATRIX, *(path.stem for path in infl_files)]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ConfigError(f"--infl files are named by their stem and {repeated[0]!r} is taken twice (or is the "
                          f"fit estimate's name); rename or link one")


def load_holdout_sweep(args: argparse.Namespace, fit: SweepStats) -> SweepStats | None:
    """The --holdout-sweep's runs, refused unless they are the fit sweep's experiment apart from subset.repeats."""
    if args.holdout_sweep is None:
        return None
    if args.holdout_seeds is not None:
        raise ConfigError("--holdout-seeds and --holdout-sweep exclude each other: with --holdout-sweep every run "
                          "of the sweep is a fit run and every run of the held-out sweep a held-out run")
    held, _ = load_sweep(args.holdout_sweep, strict=True)
    other_sweep(args.holdout_sweep)(held.identity, fit.identity)
    return held


def evaluate(args: argparse.Namespace, out_dir: Path) -> Evaluation:
    parts = parse_parts(args.parts)
    check_matrix_names(args.infl)
    stats, _ = load_sweep(args.sweep_dir, strict=True)
    held_sweep = load_holdout_sweep(args, stats)
    evaluation = Evaluation({
        "sweep": str(args.sweep_dir), "runs": stats.n_runs + (0 if held_sweep is None else held_sweep.n_runs),
        "parts": list(parts),
        **{key: stats.meta.get(key) for key in ("dataset", "model", "experiment_name", "experiment_hash", "ratio")},
        "n_train": stats.n_train, "n_test": stats.n_test,
        **({} if held_sweep is None else {"holdout_sweep": str(args.holdout_sweep)}),
    })
    if "noise" in parts:
        evaluation.add("noise", *evaluate_noise(stats, args.estimates))
    if args.removal is not None:
        evaluation.summary["removal"] = removal_summary(args.removal)
    if "lds" not in parts and "mia" not in parts:
        return evaluation
    held = holdout_seeds(stats.seeds, args.holdout_seeds) if held_sweep is None else None
    other_matrices = {}
    if "lds" in parts:
        check_dense_cap(stats.n_train, stats.n_test, args.dense_cap_mb)
        other_matrices = {path.stem: read_influence(path, stats.n_train, stats.n_test, args.dense_cap_mb)
                          for path in args.infl}
    split = load_split(stats, held) if held_sweep is None else load_split_sweeps(stats, held_sweep, args.holdout_sweep)
    evaluation.summary.update(held_out_seeds=split.held_out.seeds, fit_runs=split.fit.n_runs)
    out_existed = out_dir.exists()
    est = None
    try:
        est, fit_infl = fit_estimate(split, args.dense_cap_mb if "lds" in parts else 0.0,
                                     out_dir / FIT_ESTIMATES_DIR)
        evaluation.fit = (split.fit, est)
        if fit_infl is not None:
            evaluation.add("lds", *evaluate_lds(split, stats, {FIT_MATRIX: fit_infl, **other_matrices}))
        if "mia" in parts:
            evaluation.add("mia", *evaluate_mia(split, est.mem, args.lira_variance))
    except BaseException:
        if est is not None:
            est.discard_dense()
        if not out_existed:
            with contextlib.suppress(OSError):  # not empty: something else was written there
                out_dir.rmdir()
        raise
    return evaluation


def write_evaluation(out_dir: Path, evaluation: Evaluation) -> list[Path]:
    payloads = {"evaluation.json": (json.dumps(evaluation.summary, indent=2, allow_nan=False) + "\n").encode(),
                **evaluation.payloads}
    written = []
    if evaluation.fit is not None:
        stats, est = evaluation.fit
        try:
            written += write_outputs(out_dir / FIT_ESTIMATES_DIR, stats, est, summarize(stats, est, []))
        finally:
            est.discard_dense()
    return written + write_files(out_dir, payloads, OUTPUT_FILES)


def one_line(summary: Mapping[str, Any]) -> str:
    show = partial(fmt, spec=".3f")
    parts = [f"{summary['experiment_name']}: {summary['runs']} runs"]
    if "fit_runs" in summary:
        parts[0] += f" ({summary['fit_runs']} fit, {len(summary['held_out_seeds'])} held out)"
    noise = summary.get("noise", {})
    for row in noise.get("scores", []):
        if row["score"] == "mem":
            source = "" if row["source"] == SWEEP_SOURCE else f" of {row['source']}"
            parts.append(f"noise AUROC(mem{source}) {show(row['auroc'])}")
    for name, lds in summary.get("lds", {}).get("matrices", {}).items():
        parts.append(f"LDS[{name}] {show(lds['mean'])} {interval(lds['ci95'])}")
    ceiling = summary.get("lds", {}).get("ceiling")
    if ceiling:
        parts.append(ceiling_line(ceiling))
    if "mia" in summary:
        mia = summary["mia"]["attacks"]
        tpr = mia["online"]["tpr_at_fpr"].get(str(FPR_TARGETS[0]))
        parts.append(f"LiRA AUC {show(mia['online']['auc'])} TPR@1%FPR {show(tpr)} (baseline AUC "
                     f"{show(mia['baseline']['auc'])}), Spearman(vulnerability, mem) "
                     f"{show(summary['mia']['vulnerability_mem_spearman'])}")
    return "; ".join(parts)


def interval(ci: Sequence[float] | None) -> str:
    low, high = ci or (None, None)
    return f"[{fmt(low, '.3f')}, {fmt(high, '.3f')}]"


def ceiling_line(ceiling: Mapping[str, Any]) -> str:
    """`ceiling 0.412 [...] (repeat agreement ..., 50 subsets x 2 runs); LDS[estimate]/ceiling 0.148 [...]`: the
    agreement and ceiling on the examples of the first matrix, intervals over the held-out subsets."""
    matrices = ceiling["matrices"]
    first = next(iter(matrices.values()))
    text = (f"ceiling {fmt(first['ceiling']['mean'], '.3f')} {interval(first['ceiling']['ci95_subsets'])} (repeat "
            f"agreement {fmt(first['agreement']['mean'], '.3f')} {interval(first['agreement']['ci95_subsets'])}, "
            f"{ceiling['held_out_subsets']} subsets x {ceiling['repeats']} runs)")
    ratios = [f"LDS[{name}]/ceiling {fmt(row['ratio']['value'], '.3f')} {interval(row['ratio']['ci95_subsets'])}"
              for name, row in matrices.items()]
    return "; ".join([text, *ratios])


def parse_parts(spec: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in spec.split(",") if part.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ConfigError(f"--parts {spec!r}: choose among {','.join(PARTS)}")
    return tuple(part for part in PARTS if part in parts)


def evaluate_mia(split: SplitSweep, fit_mem: np.ndarray,
                 variance_mode: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The `mia` section of evaluation.json and its files."""
    masks = np.stack(split.held_out.masks)
    per_example = use_per_example_variance(variance_mode, split.fit.n_runs)
    scores = lira_scores(split.phi, np.stack(split.held_out.train_prob), per_example)
    metrics: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in ATTACKS:
        metrics[name], fpr, tpr = attack_metrics(scores[name], masks)
        curves[name] = (fpr, tpr)
    vuln, held_in = vulnerability(scores["online"], masks)
    rho, n_rho = spearman(vuln, fit_mem), int((np.isfinite(vuln) & np.isfinite(fit_mem)).sum())
    variances = {side: split.phi.gaussian(side, per_example) for side in ("in", "out")}
    summary = {
        "shadow_runs": split.fit.n_runs, "target_runs": len(split.held_out.seeds),
        "variance": "per-example" if per_example else "global",
        **({} if per_example else {f"var_{side}": finite_or_none(var) for side, (_, var) in variances.items()}),
        "attacks": metrics, "vulnerability_mem_spearman": rho, "vulnerability_examples": n_rho,
    }
    n = split.fit.n_train
    payloads = {"mia_roc.csv": roc_csv(curves).encode(), "mia_roc.png": render_roc(curves, metrics)}
    payloads["mia_examples.csv"] = csv_text({
        "index": np.arange(n), "mem": fit_mem, "held_out_in": held_in, "vulnerability": vuln,
        **{f"{stat}_{side}": np.broadcast_to(values, (n,))
           for side, pair in variances.items() for stat, values in zip(("mu", "var"), pair, strict=True)},
    }).encode()
    return summary, payloads
