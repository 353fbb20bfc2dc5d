"""C-scores of the training examples from sweeps at several subset ratios: `python -m src.cscore`.

    python -m src.cscore <sweep dir> <sweep dir> ... [--out DIR] [--mem ESTIMATES_DIR]

What it computes and writes: src/analyses/cscore.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.analyses.cscore import OUTPUT_FILES, cscore_outputs
from src.contracts.io import write_files
from src.estimators.subsample.load import load_sweep
from src.util.cli import cli_main, command_parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m src.cscore", __doc__)
    parser.add_argument("sweep_dirs", type=Path, nargs="+", help="sweep directories, one per subset ratio")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <first sweep dir>/cscore)")
    parser.add_argument("--mem", type=Path, default=None,
                        help="estimates dir (or sweep dir holding estimates/) of the same data: Spearman and PNG")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    sweeps = []
    for directory in args.sweep_dirs:
        stats, problems = load_sweep(directory)
        for problem in problems:
            print(f"skipped {problem.file}: {problem.reason}")
        sweeps.append((directory, stats))
    payloads, summary = cscore_outputs(sweeps, args.mem)
    out = args.out if args.out is not None else args.sweep_dirs[0] / "cscore"
    write_files(out, payloads, OUTPUT_FILES)
    ratios = ", ".join(f"{ratio:g}" for ratio in summary["ratios"])
    rho = summary.get("spearman_cscore_mem")
    print(f"C-scores of {summary['examples_with_cscore']}/{summary['n_train']} examples over ratios {ratios}"
          + ("" if args.mem is None else f"; Spearman with mem {'n/a' if rho is None else f'{rho:.3f}'}"))
    print(f"wrote {', '.join(payloads)} to {out}")


def main(argv: list[str] | None = None) -> int:
    return cli_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
