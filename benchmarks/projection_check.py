"""Does the split-half projection predict the agreement of independent sweeps? A check on real records.

From the first --first runs (by seed) of the given sweeps, the split-half reliability (src/estimators/subsample/
reliability.py) projects the agreement of two independent sweeps of K runs each. The records are then cut into
disjoint blocks of K runs (in seed order) and every pair of blocks measured: the prediction should fall within
their spread. Metrics as in the summary: Pearson of mem (Spearman-Brown), Spearman on non-trivial examples and
Jaccard of the memorized sets (the logit fit).

    .venv/bin/python benchmarks/projection_check.py outputs/fz_agreement/fz_A outputs/fz_agreement/fz_B \\
        [--first 100] [--k 200 400]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import table

from src.analyses.convergence import part_of
from src.contracts.records import find_records, read_record
from src.estimators.subsample.memorization import EstimateConfig
from src.estimators.subsample.projection import fitted_agreement, logit_fit, spearman_brown
from src.estimators.subsample.reliability import EMPIRICAL_METRICS, agreement, split_half
from src.estimators.subsample.stats import SweepStats


def block_stats(paths: list[Path]) -> SweepStats:
    stats = SweepStats.from_record(read_record(paths[0]), capacity=len(paths))
    for path in paths[1:]:
        stats.add_record(read_record(path))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--first", type=int, default=100)
    parser.add_argument("--k", type=int, nargs="+", default=[200, 400])
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    paths = sorted((path for sweep in args.sweeps for path in find_records(sweep)),
                   key=lambda path: int(path.parent.name.split("=")[1]))
    config = EstimateConfig(null_perms=0)
    reliability = split_half(block_stats(paths[:args.first]), config)
    r = reliability["pearson"]
    half_runs = float(np.mean([sum(h["runs"]) / 2 for h in reliability["halvings"]]))
    fits = {metric: logit_fit(dict((runs, value) for runs, value in reliability["projection"][metric]["measured"]))
            for metric in EMPIRICAL_METRICS}
    rows = []
    for k in args.k:
        blocks = [part_of(block_stats(paths[start:start + k]), config) for start in range(0, len(paths) - k + 1, k)]
        measured = [agreement(a, b, config.theta_mem) for a, b in itertools.combinations(blocks, 2)]
        predicted = {"pearson": spearman_brown(r, k / half_runs),
                     **{metric: fitted_agreement(fit, k) if fit else None for metric, fit in fits.items()}}
        for metric, value in predicted.items():
            values = [m[metric] for m in measured]
            low, high = min(values), max(values)
            rows.append((k, metric, f"{value:.4f}" if value is not None else "n/a", f"{np.mean(values):.4f}",
                         f"{low:.4f} .. {high:.4f}", len(values)))
    print(f"projected from the first {args.first} runs ({len(paths)} records)")
    print(table(["K", "metric", "projected", "measured mean", "measured range", "block pairs"], rows))


if __name__ == "__main__":
    main()
