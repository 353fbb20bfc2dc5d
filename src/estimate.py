"""Estimates of a sweep (the reduce step): `python -m src.estimate <sweep dir>`.

    python -m src.estimate <sweep dir> [--estimator subsample|turnover] [--out DIR] [--strict] [--no-cache]
        [--exclude-unhealthy]
        [--theta-mem 0.25] [--theta-infl 0.15] [--top-k 5] [--null-perms 2] [--block-mb 256]
        [--dense-cap-mb 512] [--gallery 64] [--seed 0] [--progress] [--wandb ...]

The estimator (src/estimators/registry.py; default subsample, F&Z's subsampled estimator: the algorithm and
its outputs are documented in src/estimators/subsample/) reduces the sweep; the estimates go through the
estimates contract (src/contracts/estimates.py) to `--out` (default <sweep dir>/estimates/, for turn-over
dropout its run directory): estimates.npz, memorization.csv, pairs.csv, summary.json, gallery.png (the most
memorized examples, when the training images load here) and, under --dense-cap-mb, influence.npy. Every file is
written atomically after everything is computed. The subsampled estimator keeps its sufficient statistics in
<out>/stats.npz: a rerun reads only new records (--no-cache reads everything again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from src.contracts.estimates import GALLERY_FILE, Estimates, write_estimates
from src.data.images import Images, sweep_images
from src.errors import ConfigError, MeminfError
from src.estimators.base import ReduceOptions
from src.estimators.registry import ESTIMATORS, get_estimator
from src.estimators.subsample.cache import CACHE_NAME
from src.estimators.subsample.memorization import EstimateConfig
from src.tracking.progress import ProgressBar
from src.tracking.wandb import add_wandb_arguments, log_estimates
from src.util.cli import cli_main, command_parser

DEFAULT_GALLERY = 64


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m src.estimate", __doc__)
    parser.add_argument("sweep_dir", type=Path, help="directory holding seed=<k>/record.npz")
    parser.add_argument("--estimator", choices=list(ESTIMATORS), default="subsample",
                        help="the estimator that reduces the sweep (default subsample)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default <sweep dir>/estimates)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad or foreign record")
    parser.add_argument("--no-cache", action="store_true",
                        help=f"read every record instead of updating {CACHE_NAME} in --out (then rewrite it)")
    parser.add_argument("--exclude-unhealthy", action="store_true",
                        help="leave out the runs that did not train (accuracy at chance or a low outlier of the "
                             "sweep's; they are named either way) and print what that changes; default: use every "
                             "run, since failures can correlate with the subsets and leaving them out biases mem")
    parser.add_argument("--theta-mem", type=float, default=EstimateConfig.theta_mem,
                        help="an example is memorized when mem >= this (the train side of a pair too)")
    parser.add_argument("--theta-infl", type=float, default=EstimateConfig.theta_infl,
                        help="a (train, test) pair is high-influence when infl >= this")
    parser.add_argument("--top-k", type=int, default=EstimateConfig.top_k,
                        help="most influential training examples kept per test example")
    parser.add_argument("--null-perms", type=int, default=EstimateConfig.null_perms,
                        help="shuffles of the runs for the pairs expected by chance (0: none)")
    parser.add_argument("--block-mb", type=float, default=EstimateConfig.block_mb,
                        help="memory of one block of the influence pass, in MB")
    parser.add_argument("--dense-cap-mb", type=float, default=EstimateConfig.dense_cap_mb,
                        help="largest influence matrix written as influence.npy, in MB (0: never)")
    parser.add_argument("--gallery", type=int, default=DEFAULT_GALLERY, help="examples in gallery.png (0: none)")
    parser.add_argument("--seed", type=int, default=EstimateConfig.seed, help="seed of the permutation null")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars on stderr (default: when stderr is a terminal)")
    add_wandb_arguments(parser)
    return parser.parse_args(argv)


def gallery_png(est: Estimates, images: Images, count: int) -> bytes | None:
    """gallery.png of the `count` most memorized examples, or None (printed why) when there are no images."""
    if count <= 0:
        return None
    from src.reporting.gallery import render_gallery

    order = est.most_memorized(count)
    pictures = images.get("train", order)
    if pictures is None:
        print(f"gallery skipped: {images.problem}")
        return None
    arrays = est.arrays
    try:
        return render_gallery(pictures, order, arrays["train_label"], arrays["orig_label"], arrays["mem"],
                              arrays.get("mem_se", np.full(est.n_train, np.nan)))
    except MeminfError as err:
        print(f"gallery skipped: {err}")
        return None


def add_train_paths(est: Estimates, images: Images) -> None:
    """memorization.csv's `path` column: each training example's image file, for image-folder data sets."""
    paths = None if images.dataset is None else images.dataset.train_paths
    if paths is not None:
        est.arrays["train_path"] = np.array(paths, dtype=str)


def run(args: argparse.Namespace) -> None:
    estimator = get_estimator(args.estimator)
    config = EstimateConfig(theta_mem=args.theta_mem, theta_infl=args.theta_infl, top_k=args.top_k,
                            null_perms=args.null_perms, block_mb=args.block_mb, dense_cap_mb=args.dense_cap_mb,
                            seed=args.seed)
    config.validate()
    if args.exclude_unhealthy and estimator.trains != "subsets":
        raise ConfigError(f"--exclude-unhealthy applies to estimators that read a sweep's records, not to "
                          f"{estimator.name}; drop it")
    out_dir = estimator.out_dir(args.sweep_dir) if args.out is None else args.out
    show = sys.stderr.isatty() if args.progress is None else args.progress
    options = ReduceOptions(out_dir=out_dir, strict=args.strict, use_cache=not args.no_cache, settings=config,
                            load_progress=ProgressBar(show, "records", "file"),
                            reduce_progress=ProgressBar(show, "influence", "example"), notify=print,
                            exclude_unhealthy=args.exclude_unhealthy)
    est = estimator.reduce(args.sweep_dir, options)
    try:
        images = sweep_images(args.sweep_dir, est.summary)
        add_train_paths(est, images)
        png = gallery_png(est, images, args.gallery)
        written = write_estimates(out_dir, est, {} if png is None else {GALLERY_FILE: png})
    finally:
        if est.dense is not None:
            est.dense.discard()
    print(estimator.format_summary(est.summary))
    print(f"wrote {', '.join(path.name for path in written)} to {out_dir}")
    log_estimates(args, out_dir, args.sweep_dir)


def main(argv: list[str] | None = None) -> int:
    return cli_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
