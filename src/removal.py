"""Marginal utility of memorized examples: `python -m src.removal`.

    python -m src.removal <estimates dir> [--theta 0.1 0.25 0.5] [--top-q 0.01 0.05] [--pairs] [--draws 3]
        [--seeds 0..3] [--sweep DIR] [--out DIR] [key=value ...]

The selections, controls and retraining: src/analyses/removal.py; the outputs: src/analyses/removal_table.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from src.analyses.removal import NEEDS, conditions, plan_jobs, retrain, retrain_config, selections, sweep_config
from src.analyses.removal_table import condition_order, format_summary, summarize, write_outputs
from src.contracts.estimates import read_estimates
from src.errors import ConfigError, DataError
from src.sweep.plan import check_launch
from src.util.cli import cli_exit_code, command_parser, parse_seeds


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options, and the `key=value` overrides of the training recipe (any argument holding '=' that is no option)."""
    overrides = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    parser = command_parser("python -m src.removal", __doc__)
    parser.epilog = "Any key=value argument overrides the training recipe of the retrained models (as for src.run)."
    parser.add_argument("estimates", type=Path, help="estimates directory, or a sweep directory holding estimates/")
    parser.add_argument("--theta", type=float, nargs="+", default=[], help="remove mem >= theta, per value")
    parser.add_argument("--top-q", type=float, nargs="+", default=[], help="remove the top fraction q by mem")
    parser.add_argument("--pairs", action="store_true", help="remove the training side of the high-influence pairs")
    parser.add_argument("--draws", type=int, default=3, help="random and class-matched draws per selection")
    parser.add_argument("--seeds", nargs="+", default=["0..2"], help="training seeds, e.g. 0 1 2 or 0..3")
    parser.add_argument("--sweep", type=Path, default=None, help="sweep directory (default: the estimates' parent)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <estimates>/../removal)")
    args = parser.parse_args([arg for arg in argv if arg not in overrides])
    return args, overrides


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    from src.config.checks import validate_config
    from src.data.dataset import load_dataset

    if args.draws < 1:
        raise ConfigError(f"--draws {args.draws} must be at least 1")
    seeds = parse_seeds(",".join(args.seeds), "--seeds")
    est = read_estimates(args.estimates, NEEDS, "src.removal")
    out_dir = args.out if args.out is not None else est.path.parent / "removal"
    cfg = retrain_config(sweep_config(est.path, est.summary, args.sweep), overrides, out_dir)
    validate_config(cfg)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    if dataset.fingerprint != est.summary["data_fingerprint"] or \
            not np.array_equal(dataset.y_train, est.arrays["train_label"]):
        raise DataError(f"the data loaded here (fingerprint {dataset.fingerprint}) are not the estimated data "
                        f"({est.summary['data_fingerprint']}); drop dataset overrides or fix paths.data_dir")
    chosen = selections(est, args.theta, args.top_q, args.pairs)
    items = [(condition, seed) for condition in conditions(chosen, est, args.draws) for seed in seeds]
    jobs = plan_jobs(items, len(dataset.y_train), cfg)
    check_launch(cfg, max(len(job) for job in jobs), local=True)  # what a job would refuse, before the first trains
    print(f"{len(items)} models ({len(items) // len(seeds)} conditions x {len(seeds)} seeds) in {len(jobs)} jobs")
    rows = sorted(retrain(cfg, dataset, jobs), key=lambda row: (*condition_order(row.selection, row.level, row.control),
                                                                 row.draw, row.seed))
    summary = summarize(rows)
    written = write_outputs(out_dir, rows, summary, est.provenance())
    print(format_summary(summary))
    print(f"wrote {', '.join(path.name for path in written)} to {out_dir}")


def main(argv: list[str] | None = None) -> int:
    args, overrides = _parse_args(sys.argv[1:] if argv is None else argv)
    return cli_exit_code(lambda: run(args, overrides))


if __name__ == "__main__":
    sys.exit(main())
