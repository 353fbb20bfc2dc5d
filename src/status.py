"""Where a running or finished sweep stands, from any shell: `python -m src.status`.

    python -m src.status <sweep dir>

Seeds trained by its latest launch, jobs in flight (on this machine: their processes; on SLURM: the array tasks
recorded at submission, through squeue), jobs failed, time left and its basis: src/sweep/status.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.errors import ConfigError
from src.sweep.status import status_rows, sweep_status
from src.util.cli import cli_main, command_parser
from src.util.tables import key_value_lines


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m src.status", __doc__)
    parser.add_argument("sweep", type=Path, help="a sweep directory (<paths.output_dir>/<name>)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    if not args.sweep.is_dir():
        raise ConfigError(f"{args.sweep} is not a directory; give a sweep directory, e.g. outputs/fz_mnist")
    print("\n".join(key_value_lines(status_rows(sweep_status(args.sweep)))))


def main(argv: list[str] | None = None) -> int:
    return cli_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
