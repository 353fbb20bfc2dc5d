"""Wall time of `python -m src.run -m seed=0..N-1 --dry-run` against N: the pre-flight must stay linear in the
number of seeds (it parses the seed list, looks up each seed's record once and groups the pending ones).

    .venv/bin/python benchmarks/dry_run.py [--seeds 1 10000 100000] [--repeats 3]

Each size runs `--repeats` times into an empty output directory; the table gives the median and the time per
1,000 seeds beyond the one-seed run (interpreter start, Hydra's compose, loading the data once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import table

ROOT = Path(__file__).resolve().parent.parent


def dry_run_s(seeds: int, out: Path) -> float:
    command = [sys.executable, "-m", "src.run", "-m", f"seed=0..{seeds - 1}", "logger=none",
               f"paths.output_dir={out}", "--dry-run"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"dry run of {seeds} seeds failed: {done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    rows, base = [], None
    with tempfile.TemporaryDirectory() as out:
        for seeds in sorted(args.seeds):
            median = statistics.median(dry_run_s(seeds, Path(out)) for _ in range(args.repeats))
            base = median if base is None else base
            per_1000 = "" if seeds == min(args.seeds) else f"{(median - base) / (seeds - min(args.seeds)) * 1e3:.3f}"
            rows.append((f"{seeds:,}", f"{median:.2f}", per_1000))
    print(table(["seeds", "median s", "s per 1,000 extra seeds"], rows))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
