"""Memorization of the last layer alone: `python -m src.lastlayer`.

    python -m src.lastlayer features [--out DIR] [key=value ...]      # e.g. experiment=fz_mnist
    python -m src.run -m experiment=lastlayer_mnist dataset.path=<DIR>/features.npz seed=0..63
    python -m src.estimate <paths.output_dir>/lastlayer_mnist
    python -m src.lastlayer compare <full estimates> <last-layer estimates> [--theta 0.1 0.25 0.5] [--out DIR]

What each command does: src/analyses/lastlayer.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from src.analyses.lastlayer import DEFAULT_THETAS, make_features, run_compare
from src.util.cli import DefaultsHelpFormatter, cli_exit_code, command_parser


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = command_parser("python -m src.lastlayer", __doc__)
    commands = parser.add_subparsers(dest="command", required=True, help="features, then compare")
    features = commands.add_parser("features", help="train the full-data model, write its features",
                                   formatter_class=DefaultsHelpFormatter)
    features.add_argument("overrides", nargs="*", help="config overrides, as for python -m src.run")
    features.add_argument("--out", type=Path, default=None, help="default <paths.output_dir>/<name>_features")
    compare = commands.add_parser("compare", help="full-network vs last-layer estimates",
                                  formatter_class=DefaultsHelpFormatter)
    compare.add_argument("full", type=Path, help="estimates of the full network")
    compare.add_argument("lastlayer", type=Path, help="estimates of the last-layer sweep")
    compare.add_argument("--theta", type=float, nargs="+", default=list(DEFAULT_THETAS),
                        help="mem thresholds at which the memorized sets are compared")
    compare.add_argument("--out", type=Path, default=None, help="default: the last-layer estimates directory")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    if args.command == "features":
        make_features(args.overrides, args.out)
    else:
        run_compare(args.full, args.lastlayer, args.theta, args.out)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    return cli_exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
