"""Memorization over training epochs by group: `python -m src.dynamics`.

    python -m src.dynamics <estimates dir or sweep dir> [--out DIR] [--hard-fraction 0.1]

What it computes and writes: src/analyses/dynamics.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from src.analyses.dynamics import DEFAULT_HARD_FRACTION, NEEDS, dynamics, format_report, render_png
from src.contracts.estimates import read_estimates
from src.contracts.io import write_files
from src.util.cli import cli_main, command_parser
from src.util.tables import csv_text


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m src.dynamics", __doc__)
    parser.add_argument("input", type=Path, help="estimates directory, or a sweep directory holding estimates/")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <estimates dir>/dynamics)")
    parser.add_argument("--hard-fraction", type=float, default=DEFAULT_HARD_FRACTION,
                        help="fraction of clean examples, learned slowest, that form the hard group")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    est = read_estimates(args.input, NEEDS, "src.dynamics")
    columns, report = dynamics(est.arrays, args.hard_fraction)
    out = args.out if args.out is not None else est.path / "dynamics"
    payloads = {"dynamics.csv": csv_text(columns).encode(), "dynamics.png": render_png(columns),
                "dynamics.json": (json.dumps(report, indent=2, allow_nan=False) + "\n").encode()}
    write_files(out, payloads)
    print(format_report(columns, report))
    print(f"wrote {', '.join(payloads)} to {out}")


def main(argv: list[str] | None = None) -> int:
    return cli_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
