"""Convergence of an estimate with the runs: `python -m src.convergence`.

    python -m src.convergence <sweep dir> [--against <independent sweep dir>] [--out DIR]

What it computes and writes: src/analyses/convergence.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.analyses.convergence import OUTPUT_FILES, check_independent, convergence_outputs
from src.contracts.io import write_files
from src.estimators.subsample.load import load_sweep
from src.estimators.subsample.memorization import EstimateConfig
from src.util.cli import cli_main, command_parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m src.convergence", __doc__)
    parser.add_argument("sweep_dir", type=Path, help="directory holding seed=<k>/record.npz")
    parser.add_argument("--against", type=Path, default=None, help="an independent sweep of the same data")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <sweep dir>/convergence)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    loaded = {}
    for directory in (args.sweep_dir, *(() if args.against is None else (args.against,))):
        stats, problems = load_sweep(directory)
        for problem in problems:
            print(f"skipped {problem.file}: {problem.reason}")
        loaded[directory] = stats
    stats, other = loaded[args.sweep_dir], loaded.get(args.against)
    if other is not None:
        check_independent(args.sweep_dir, stats, args.against, other)
    payloads, rows = convergence_outputs(stats, other, EstimateConfig(null_perms=0))
    for row in rows:
        shown = ", ".join(f"{key} {'n/a' if row[key] is None else f'{row[key]:.3f}'}"
                          for key in ("spearman_non_trivial", "jaccard_memorized", "jaccard_pairs", "pearson"))
        print(f"K {row['k']} vs {row['reference']} ({row['reference_runs']} runs): {shown}")
    out = args.out if args.out is not None else args.sweep_dir / "convergence"
    write_files(out, payloads, OUTPUT_FILES)
    print(f"wrote {', '.join(payloads)} to {out}")


def main(argv: list[str] | None = None) -> int:
    return cli_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
