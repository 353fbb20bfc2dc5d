"""A static HTML page of one sweep's estimates: summary, memorization, galleries, high-influence pairs, and
(when given) removal curves and cross-architecture agreement.

    python -m src.report <sweep dir> [--estimates DIR] [--compare DIR] [--removal DIR] [--out DIR]
        [--gallery 32] [--pairs 12] [--influencers 6]

Inputs: the estimates (`--estimates`, default <sweep dir>/estimates: estimates.npz and summary.json, as
`python -m src.estimate` wrote them); a `python -m src.compare` output dir (`--compare`: compare.json and
compare.png); a removal experiment's dir (`--removal`: removal.csv, summarized by `src.removal.summarize`,
and removal.png when present). What those two were made from is checked against the estimates
(src/reporting/provenance.py): an analysis of another experiment is refused in one line; one made from other
estimates of this experiment (e.g. fewer runs), or that records none, is shown with a one-line warning, on the
page and on stderr. A per-epoch section appears when the estimates hold `mem_epoch` (E, n_train)
with E > 0 (the epochs from `epoch_list` when it has E entries, else 1..E).
Images come from the data set named by the metadata of the sweep's records (`src.data.dataset_from_meta`);
when it cannot be loaded here, or holds vectors, the page says so in one line and shows the numbers only.

Output (default <sweep dir>/report/): index.html with every PNG beside it, linked relatively (no external
URL, no script but one inline line that counts loaded images into <body data-images-loaded/-total>).
Example images are one PNG each, grey or RGB, enlarged by an integer factor with nearest-neighbour to at
least MIN_DISPLAY_PX on the longer side (larger images keep their size). Every string that comes from data
(names, labels, paths) is HTML-escaped. The page is built in a temp dir beside --out and renamed onto it
when complete; an existing --out is replaced only when it is a report this command wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from src.contracts.estimates import Estimates, read_estimates
from src.contracts.identity import record_experiment_hash
from src.contracts.records import RecordError, find_records, read_meta
from src.data.images import sweep_images
from src.errors import MeminfError
from src.reporting.page import check_replaceable, write_report
from src.reporting.provenance import embedded_warnings
from src.reporting.sections import build_page
from src.util.cli import cli_main, command_parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m src.report", __doc__)
    parser.add_argument("sweep_dir", type=Path, help="directory holding the sweep's records")
    parser.add_argument("--estimates", type=Path, default=None, help="estimates dir (default <sweep dir>/estimates)")
    parser.add_argument("--compare", type=Path, default=None, help="a python -m src.compare --out dir")
    parser.add_argument("--removal", type=Path, default=None, help="a removal experiment dir (removal.csv)")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default <sweep dir>/report)")
    parser.add_argument("--gallery", type=int, default=32, help="examples in each gallery")
    parser.add_argument("--pairs", type=int, default=12, help="test examples shown with their influencers")
    parser.add_argument("--influencers", type=int, default=6, help="influencers shown per test example")
    args = parser.parse_args(argv)
    for name in ("gallery", "pairs", "influencers"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    return args


def check_same_sweep(sweep_dir: Path, est: Estimates) -> None:
    """The page is titled and illustrated from the sweep: its estimates must lie under the sweep directory or be
    of an experiment whose records the sweep holds."""
    if est.path is not None and est.path.resolve().is_relative_to(sweep_dir.resolve()):
        return
    wanted = est.summary.get("experiment_hash")
    for path in find_records(sweep_dir):
        with contextlib.suppress(RecordError):
            if record_experiment_hash(read_meta(path)) == wanted:
                return
    raise MeminfError(f"the estimates in {est.path} are of experiment {est.summary.get('experiment_name')} "
                      f"({wanted}), of which {sweep_dir} holds no record; pass this sweep's estimates (--estimates) "
                      "or the sweep they come from")


def run(args: argparse.Namespace) -> None:
    est = read_estimates(args.estimates if args.estimates is not None else args.sweep_dir)
    check_same_sweep(args.sweep_dir, est)
    warnings = embedded_warnings(est, args.compare, args.removal)
    out = args.out if args.out is not None else args.sweep_dir / "report"
    check_replaceable(out)
    images = sweep_images(args.sweep_dir, est.summary)
    page = build_page(args.sweep_dir, est, images, args, warnings)
    path = write_report(out, page, f"meminf report: {est.summary['experiment_name']}")
    for warning in warnings.values():
        print(f"warning: {warning}", file=sys.stderr)
    if images.problem is not None:
        print(f"images not shown: {images.problem}")
    print(f"wrote {path} ({len(page.files)} images and charts)")


def main(argv: list[str] | None = None) -> int:
    return cli_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
