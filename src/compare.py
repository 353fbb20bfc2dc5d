"""Agreement between the estimates of several sweeps of one data set: `python -m src.compare`.

    python -m src.compare <estimates A> <estimates B> ... [--labels a,b,...] [--theta-mem 0.25] [--out DIR]
        [--wandb ...]

What it computes and writes: src/analyses/compare.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.analyses.compare import compare_inputs, format_report, load_inputs, write_compare
from src.contracts.estimates import Thresholds
from src.tracking.wandb import add_wandb_arguments, log_compare
from src.util.cli import cli_main, command_parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m src.compare", __doc__)
    parser.add_argument("inputs", type=Path, nargs="+",
                        help="estimates directories (or sweep directories holding estimates/)")
    parser.add_argument("--labels", default=None, help="comma-separated labels, one per input")
    parser.add_argument("--theta-mem", type=float, default=Thresholds.theta_mem, help="memorized: mem >= this")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default <the first input's sweep dir>/compare)")
    add_wandb_arguments(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    labels = args.labels.split(",") if args.labels is not None else None
    inputs = load_inputs(args.inputs, labels)
    rows = compare_inputs(inputs, args.theta_mem)
    out = args.out if args.out is not None else inputs[0].path.parent / "compare"
    written = write_compare(out, inputs, rows, args.theta_mem)
    print(format_report(inputs, rows, args.theta_mem))
    print(f"wrote {', '.join(path.name for path in written)} to {out}")
    log_compare(args, out)


def main(argv: list[str] | None = None) -> int:
    return cli_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
