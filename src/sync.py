"""Upload every offline wandb run of sweeps and comparisons with one `wandb sync`: `python -m src.sync`.

    python -m src.sync <dir> [<dir> ...] [--dry-run]

Training jobs (logger=wandb), the aggregator (src.estimate --wandb) and the comparison (src.compare --wandb) each
leave offline runs in folders of their own, below the sweep (or the comparison's --out); this finds them at any
depth and hands them all to `wandb sync` (src/tracking/sync.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.tracking.sync import find_offline_runs, unique_runs, wandb_sync
from src.util.cli import cli_main, command_parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m src.sync", __doc__)
    parser.add_argument("paths", type=Path, nargs="+",
                        help="sweep, estimates or compare directories (searched at any depth)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs found and what `wandb sync --dry-run` says of them; upload nothing")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    found = find_offline_runs(args.paths)
    for path, runs in found.items():
        print(f"{path}: {len(runs)} offline run(s)")
    runs = unique_runs(found)
    print(f"{'wandb sync --dry-run' if args.dry_run else 'wandb sync'} of {len(runs)} run(s):")
    wandb_sync(runs, args.dry_run)


def main(argv: list[str] | None = None) -> int:
    return cli_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
