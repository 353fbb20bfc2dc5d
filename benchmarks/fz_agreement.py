"""Is `experiment=fz_mnist` the authors' algorithm? Four sweeps with disjoint seeds on MNIST-5k, two of meminf
(A, B) and two of the independent port of the demo (C, D: benchmarks/fz_demo_port.py), and how well each pair
agrees. meminf agrees with the demo when every cross pair (A-C, A-D, B-C, B-D) agrees at least as well as the
worse of the two within pairs (A-B, C-D), less a tolerance, and the per-run test accuracies of the two
implementations do not differ (two-sample Kolmogorov-Smirnov test).

    .venv/bin/python benchmarks/fz_agreement.py [--runs 400] [--out outputs/fz_agreement] [--port-jobs 2]

Trains what is missing (meminf's sweeps resume by the done-rule, the port by its runs/ folder), estimates, and
prints the table. The seeds: A 0.., B runs.., C 2*runs.., D 3*runs.. (disjoint: the port draws its subsets
with the same RandomState(seed) rule, so shared seeds would share subsets). Agreement, as the issue defines it:
Spearman of mem on the examples either side calls non-trivial (mem >= 0.05), Jaccard of the memorized sets
(mem >= 0.25), Pearson of mem over all examples, and the high-influence pairs (infl >= 0.15, the training
example memorized, same class) of each side and their Jaccard.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.stats import ks_2samp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import table

from src.contracts.estimates import Thresholds, read_estimates
from src.contracts.records import find_records, read_meta
from src.estimators.subsample.reliability import NON_TRIVIAL, PartEstimate, agreement

ROOT = Path(__file__).resolve().parent.parent
THETA = Thresholds()  # theta_mem 0.25, theta_infl 0.15: the project's defaults
# The acceptance margins (issue 12 section 1): cross pairs may fall short of the worse within pair by this much.
TOLERANCE = {"spearman_non_trivial": 0.005, "jaccard_memorized": 0.02, "pearson": 0.002}


def train_meminf(name: str, seeds: range, out: Path) -> None:
    command = [sys.executable, "-m", "src.run", "-m", "experiment=fz_mnist", f"seed={seeds.start}..{seeds.stop - 1}",
               f"name={name}", f"paths.output_dir={out}", "logger=none"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "src.estimate", str(out / name), "--gallery", "0"], cwd=ROOT, check=True,
                   capture_output=True)


def start_port(name: str, seeds: range, out: Path, threads: int) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "benchmarks" / "fz_demo_port.py"), "--seeds",
               f"{seeds.start}..{seeds.stop - 1}", "--out", str(out / name), "--threads", str(threads)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)


class Side(NamedTuple):
    """One sweep's estimate (mem, and pairs as train * n_test + test) and its per-run test accuracies."""

    estimate: PartEstimate
    test_acc: np.ndarray


def meminf_side(out: Path, name: str) -> Side:
    est = read_estimates(out / name / "estimates")
    keys = est.arrays["pair_train_idx"].astype(np.int64) * est.n_test + est.arrays["pair_test_idx"]
    test_acc = np.array([float(read_meta(path)["test_acc"]) for path in find_records(out / name)])
    mem = est.mem.astype(np.float64)
    return Side(PartEstimate(len(test_acc), mem, est.arrays["mem_se"].astype(np.float64), keys), test_acc)


def port_side(out: Path, name: str) -> Side:
    with np.load(out / name / "estimates.npz") as est, np.load(out / name / "runs.npz") as runs:
        mem, infl = est["mem"].astype(np.float64), est["infl"]
        same_class = est["test_label"][:, None] == est["train_label"][None, :]
        test_idx, train_idx = np.nonzero((infl >= THETA.theta_infl) & (mem >= THETA.theta_mem)[None, :] & same_class)
        keys = train_idx.astype(np.int64) * infl.shape[0] + test_idx
        no_se = np.full(mem.shape, np.nan)  # the demo computes none; the SE calibration is not used here
        return Side(PartEstimate(len(runs["test_acc"]), mem, no_se, keys), runs["test_acc"])


def pair_agreement(a: PartEstimate, b: PartEstimate) -> dict[str, float | int | None]:
    """reliability.py's agreement of the two sweeps, with the counts the table shows."""
    both = ~np.isnan(a.mem) & ~np.isnan(b.mem)
    non_trivial = both & ((a.mem >= NON_TRIVIAL) | (b.mem >= NON_TRIVIAL))
    return {**agreement(a, b, THETA.theta_mem), "non_trivial": int(non_trivial.sum()),
            "pairs_a": a.pair_keys.size, "pairs_b": b.pair_keys.size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "fz_agreement")
    parser.add_argument("--port-jobs", type=int, default=2, help="port sweeps at once (1 torch thread each)")
    args = parser.parse_args()
    n = args.runs
    seeds = {name: range(k * n, (k + 1) * n) for k, name in enumerate("ABCD")}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    start = time.perf_counter()
    for name in "AB":
        train_meminf(f"fz_{name}", seeds[name], args.out)
    meminf_s = time.perf_counter() - start
    threads = max(1, (os.cpu_count() or 1) // args.port_jobs)
    for at_once in ("CD"[i:i + args.port_jobs] for i in range(0, 2, args.port_jobs)):
        ports = [start_port(f"port_{name}", seeds[name], args.out, threads) for name in at_once]
        if any(port.wait() != 0 for port in ports):
            raise SystemExit("the port failed")
    port_s = time.perf_counter() - start - meminf_s
    sides = {name: meminf_side(args.out, f"fz_{name}") for name in "AB"}
    sides |= {name: port_side(args.out, f"port_{name}") for name in "CD"}
    results = {a + b: pair_agreement(sides[a].estimate, sides[b].estimate)
               for a, b in itertools.combinations("ABCD", 2)}
    rows = [(pair, f"{r['spearman_non_trivial']:.4f}", f"{r['jaccard_memorized']:.4f}", f"{r['pearson']:.4f}",
             r["non_trivial"], f"{r['pairs_a']} / {r['pairs_b']}", f"{r['jaccard_pairs']:.3f}")
            for pair, r in results.items()]
    print(f"{n} runs per sweep; meminf A+B {meminf_s:.0f} s, port C+D {port_s:.0f} s (wall, whatever was missing)")
    print(table(["pair", "Spearman (non-trivial)", "Jaccard mem>=0.25", "Pearson", "non-trivial", "pairs",
                 "Jaccard pairs"], rows))
    verdicts = []
    for metric, tolerance in TOLERANCE.items():
        floor = min(results["AB"][metric], results["CD"][metric]) - tolerance
        worst = min(results[pair][metric] for pair in ("AC", "AD", "BC", "BD"))
        verdicts.append((metric, f"{worst:.4f}", f"{floor:.4f}", "pass" if worst >= floor else "FAIL"))
    print(table(["metric", "worst cross pair", "worse within pair - tolerance", "verdict"], verdicts))
    meminf_acc = np.concatenate([sides["A"].test_acc, sides["B"].test_acc])
    port_acc = np.concatenate([sides["C"].test_acc, sides["D"].test_acc])
    ks = ks_2samp(meminf_acc, port_acc)
    print(f"test accuracy per run: meminf {meminf_acc.mean():.4f} +- {meminf_acc.std():.4f}, port "
          f"{port_acc.mean():.4f} +- {port_acc.std():.4f}; KS statistic {ks.statistic:.4f}, p = {ks.pvalue:.3f} "
          f"({'pass' if ks.pvalue >= 0.01 else 'FAIL'}: p >= 0.01)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
