"""Benchmark of the aggregator (src/estimators/subsample/) at CIFAR-100 and ImageNet shapes; prints tables.

    .venv/bin/python benchmarks/aggregate.py                # full size: 4,000 runs x 50,000 train x 10,000 test
    .venv/bin/python benchmarks/aggregate.py --runs 100 --n-train 5000 --n-test 1000 \\
        --imagenet-widths 20000 40000                       # quick (about a minute)

Every phase runs in a fresh Python process, so that its ru_maxrss is its own:
- write: a synthetic sweep written as real record files with `write_record` (known truth: ~36% of the train
  examples memorized as in CIFAR-100, 1,000 planted high-influence pairs, 15% always-correct test examples
  whose influence column ties at 0, 1% flipped labels). `--new-runs` of the seeds are held back.
- load: `load_sweep` of the other records with a stats cache (a full read: records/s and MB/s, from a warm
  page cache since they were just written, so this is parsing and checks, not the disk), then the held-back
  records are moved in and the cache is updated (the incremental path).
- bare: float32 (n_train x K) @ (K x n_test), one call, 0/1 values.
- estimate: `estimate` on the stats read back from stats.npz, null shuffles off and on, with the time split
  into mask unpacking, the matrix product, the influence arithmetic, pair extraction and the top-k merge;
  tracemalloc peak (numpy allocations) and ru_maxrss.
- compare (with `--baseline FILE`, another influence module, e.g.
  `git show <rev>:src/estimators/subsample/influence.py > before.py`, with its package importable):
  for each of --compare-shapes, in-memory stats, then rounds of bare product / this estimate / the
  baseline's, null shuffles off and on, interleaved so that both see the same load; best of --repeats.
- imagenet: for each width, a SweepStats built in memory from the same synthetic records (not written to
  disk) with --imagenet-runs x --imagenet-test, then the estimate step and the bare product; the bare product
  goes in blocks of 50,000 rows into one output buffer (its full output would be 5 GB at 1.28M).
Timings are single runs (the best of --repeats) on a shared machine: compare the ratios within a run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import src.estimators.subsample.influence as estimate_module  # noqa: E402
import src.estimators.subsample.topk as topk_module  # noqa: E402
from src.contracts.records import FORMAT_VERSION, Record, find_records, record_path, write_record  # noqa: E402
from src.data.subsets import subset_mask  # noqa: E402
from src.estimators.subsample.cache import CACHE_NAME, read_stats_cache, write_stats_cache  # noqa: E402
from src.estimators.subsample.load import load_sweep  # noqa: E402
from src.estimators.subsample.memorization import EstimateConfig  # noqa: E402
from src.estimators.subsample.stats import SweepStats  # noqa: E402

MB = 2**20
RATIO = 0.7
P_IN = 0.995  # accuracy on examples in the subset (the paper's models fit their subsets)
MEMORIZED_FRACTION = 0.36  # CIFAR-100: 18,099 of 50,000 with mem >= 0.25 (Feldman & Zhang 2020, sec. 3)
ALWAYS_CORRECT_FRACTION = 0.15
FLIPPED_FRACTION = 0.01
PLANTED_PAIRS = 1000
T_IN, T_OUT = 0.9, 0.5
BARE_BLOCK_ROWS = 50_000
NULL_PERMS = 2


# ---------------------------------------------------------------------------------------- synthetic sweep

@dataclass(frozen=True)
class Truth:
    """What every run of the synthetic sweep shares: labels and per-example probabilities."""

    num_classes: int
    train_label: np.ndarray  # the trained (flipped) labels
    test_label: np.ndarray
    p_out: np.ndarray  # train accuracy when out of the subset
    p_test: np.ndarray  # test accuracy without a planted influencer
    influencer: np.ndarray  # train index per test example, -1 for none
    flipped_idx: np.ndarray
    flipped_orig_label: np.ndarray

    @classmethod
    def draw(cls, n_train: int, n_test: int, num_classes: int, seed: int = 0) -> Truth:
        rng = np.random.default_rng(seed)
        train_label = rng.integers(0, num_classes, n_train)
        memorized = rng.random(n_train) < MEMORIZED_FRACTION
        p_out = np.where(memorized, rng.uniform(0.05, 0.6, n_train), rng.uniform(0.88, 0.99, n_train))
        p_test = np.where(rng.random(n_test) < ALWAYS_CORRECT_FRACTION, 1.0, rng.uniform(0.5, 1.0, n_test))
        influencer = np.full(n_test, -1)
        planted = rng.choice(n_test, size=min(PLANTED_PAIRS, n_test), replace=False)
        influencer[planted] = rng.choice(np.flatnonzero(memorized), size=planted.size)
        test_label = rng.integers(0, num_classes, n_test)
        test_label[planted] = train_label[influencer[planted]]
        flipped_idx = np.sort(rng.choice(n_train, size=int(FLIPPED_FRACTION * n_train), replace=False))
        return cls(num_classes, train_label, test_label, p_out, p_test, influencer, flipped_idx,
                   (train_label[flipped_idx] + 1) % num_classes)

    def record(self, seed: int) -> Record:
        rng = np.random.default_rng(10_000 + seed)
        n_train, n_test, classes = self.train_label.size, self.test_label.size, self.num_classes
        mask = subset_mask(seed, n_train, RATIO)
        train_correct = rng.random(n_train) < np.where(mask, P_IN, self.p_out)
        has_influencer = self.influencer >= 0
        p_test = np.where(has_influencer, np.where(mask[self.influencer], T_IN, T_OUT), self.p_test)
        test_correct = rng.random(n_test) < p_test
        meta = {
            "format_version": FORMAT_VERSION, "dataset": "synthetic-cifar", "n_train": n_train, "n_test": n_test,
            "num_classes": classes, "data_fingerprint": "bench", "model": "planted", "ratio": RATIO, "salt": 0,
            "epochs": 1, "seed": seed, "experiment_hash": "bench", "experiment_name": "aggregate-benchmark",
            "test_acc": float(test_correct.mean()), "train_in_acc": float(train_correct[mask].mean()),
            "versions": {"numpy": np.__version__}, "git": {"commit": None}, "wall_time_s": 0.0,
        }
        prob = np.where(train_correct, rng.uniform(0.5, 1.0, n_train), rng.uniform(0.0, 0.5, n_train))
        return Record(
            meta=meta, subset_mask=mask, train_label=self.train_label,
            train_pred=np.where(train_correct, self.train_label, (self.train_label + 1) % classes),
            train_prob=prob.astype(np.float32), test_label=self.test_label,
            test_pred=np.where(test_correct, self.test_label, (self.test_label + 1) % classes),
            test_prob=rng.uniform(0.0, 1.0, n_test).astype(np.float32),
            flipped_idx=self.flipped_idx, flipped_orig_label=self.flipped_orig_label,
        )


def in_memory_stats(truth: Truth, n_runs: int) -> SweepStats:
    stats = SweepStats.from_record(truth.record(0), capacity=n_runs)
    for seed in range(1, n_runs):
        stats.add_record(truth.record(seed))
    return stats


# ---------------------------------------------------------------------------------------------- measuring

def rss_mb() -> float:
    """Current resident set size (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def best_time(run: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def traced_peak_mb(run: Callable[[], Any]) -> float:
    """Peak of tracemalloc (numpy registers its buffers there) above what was allocated before."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        run()
        return (tracemalloc.get_traced_memory()[1] - base) / MB
    finally:
        tracemalloc.stop()


class PhaseTimer:
    """Time spent in chosen methods of src.estimate (wrapped in place; few hundred calls: no overhead).
    `influence` includes the pair and top-k comparisons fused into its pass; `pairs` is the class filter."""

    PARTS: ClassVar[dict[str, tuple[str, str]]] = {
        "unpack": ("_InfluenceBlocks", "unpack"), "product": ("_InfluenceBlocks", "product"),
        "influence": ("_InfluenceBlocks", "influence"), "pairs": ("_InfluenceBlocks", "pairs"),
        "topk": ("TopK", "merge"),
    }

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)

    @contextmanager
    def installed(self) -> Iterator[PhaseTimer]:
        originals = {}
        for part, (owner, name) in self.PARTS.items():
            cls = getattr(estimate_module if owner.startswith("_") else topk_module, owner)
            originals[part] = (cls, name, getattr(cls, name))
            setattr(cls, name, self._timed(part, getattr(cls, name)))
        try:
            yield self
        finally:
            for cls, name, original in originals.values():
                setattr(cls, name, original)

    def _timed(self, part: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
        return timed

    def split(self, total: float) -> dict[str, float]:
        """unpack / matmul / influence (inside compute) / pairs / topk / other."""
        seconds = self.seconds
        matmul = seconds["product"] - seconds["unpack"]
        named = {"unpack": seconds["unpack"], "matmul": matmul, "influence": seconds["influence"],
                 "pairs": seconds["pairs"], "topk": seconds["topk"]}
        return {**named, "other": total - sum(named.values())}


def timed_estimate(stats: SweepStats, null_perms: int) -> dict[str, Any]:
    timer = PhaseTimer()
    with timer.installed():
        start = time.perf_counter()
        est = estimate_module.estimate(stats, EstimateConfig(null_perms=null_perms))
        total = time.perf_counter() - start
    return {"seconds": total, "split": timer.split(total), "pairs": int(est.pairs.infl.size),
            "memorized": int(np.sum(est.mem >= 0.25)), "null_pair_counts": est.null_pair_counts}


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_estimate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bare_product_seconds(n_train: int, n_runs: int, n_test: int, repeats: int, block_rows: int) -> float:
    """float32 (n_train x K) @ (K x n_test) with 0/1 values, in row blocks into one output buffer."""
    rng = np.random.default_rng(0)
    masks = (rng.integers(0, 10, (min(n_train, block_rows), n_runs), dtype=np.uint8) < 7).astype(np.float32)
    test_correct = (rng.integers(0, 4, (n_runs, n_test), dtype=np.uint8) < 3).astype(np.float32)
    out = np.empty((len(masks), n_test), dtype=np.float32)
    if n_train <= block_rows:
        return best_time(lambda: np.matmul(masks, test_correct, out=out), repeats)

    def blocked() -> None:
        for start in range(0, n_train, block_rows):
            rows = min(block_rows, n_train - start)
            np.matmul(masks[:rows], test_correct, out=out[:rows])
    return best_time(blocked, repeats)


# ------------------------------------------------------------------------------------------------- phases

def phase_write(args: argparse.Namespace) -> dict[str, Any]:
    truth = Truth.draw(args.n_train, args.n_test, args.classes)
    sweep, staged = args.workdir / "sweep", args.workdir / "staged"
    # Seeds spread over the range: the update adds runs between cached ones, as a live sweep does.
    held_back = set(np.random.default_rng(1).choice(args.runs, size=args.new_runs, replace=False).tolist())
    start = time.perf_counter()
    for seed in range(args.runs):
        write_record(record_path(staged if seed in held_back else sweep, seed), truth.record(seed))
    return {"seconds": time.perf_counter() - start, "records": args.runs}


def phase_load(args: argparse.Namespace) -> dict[str, Any]:
    sweep, staged, cache = args.workdir / "sweep", args.workdir / "staged", args.workdir / "out" / CACHE_NAME
    files = find_records(sweep)
    size = sum(path.stat().st_size for path in files)
    start = time.perf_counter()
    stats, problems = load_sweep(sweep, cache_path=cache)  # no cache yet: reads all, then writes it
    full = time.perf_counter() - start
    assert not problems and stats.n_runs == len(files), problems
    maxrss_full = max_rss_mb()
    cache_write = best_time(lambda: write_stats_cache(args.workdir / "cache-copy.npz", stats), 1)
    del stats
    new = find_records(staged)
    for path in new:
        target = sweep / path.relative_to(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    start = time.perf_counter()
    stats, _ = load_sweep(sweep, cache_path=cache, notify=lambda line: None)
    incremental = time.perf_counter() - start
    start = time.perf_counter()
    read_stats_cache(cache, sweep)
    cache_read = time.perf_counter() - start
    return {"records": len(files), "bytes": size, "seconds": full, "maxrss_mb": maxrss_full,
            "new_records": len(new), "incremental_seconds": incremental, "cache_read_seconds": cache_read,
            "cache_write_seconds": cache_write, "cache_bytes": cache.stat().st_size,
            "runs_after_update": stats.n_runs}


def phase_bare(args: argparse.Namespace) -> dict[str, Any]:
    seconds = bare_product_seconds(args.n_train, args.runs, args.n_test, args.repeats, max(args.n_train, 1))
    return {"seconds": seconds, "maxrss_mb": max_rss_mb()}


def phase_estimate(args: argparse.Namespace) -> dict[str, Any]:
    stats, _ = read_stats_cache(args.workdir / "out" / CACHE_NAME, args.workdir / "sweep")
    rss_before = rss_mb()
    result: dict[str, Any] = {"runs": stats.n_runs}
    for null_perms in (0, NULL_PERMS):
        runs = [timed_estimate(stats, null_perms) for _ in range(args.repeats)]
        result[f"null{null_perms}"] = min(runs, key=lambda run: run["seconds"])
    result["traced_peak_mb"] = traced_peak_mb(
        lambda: estimate_module.estimate(stats, EstimateConfig(null_perms=NULL_PERMS)))
    result["rss_before_mb"], result["maxrss_mb"] = rss_before, max_rss_mb()
    return result


def phase_compare(args: argparse.Namespace) -> dict[str, Any]:
    n_runs, n_train, n_test = (int(size) for size in args.shape.split("x"))
    stats = in_memory_stats(Truth.draw(n_train, n_test, args.classes), n_runs)
    baseline = load_module(args.baseline)
    steps: dict[str, Callable[[], Any]] = {
        "bare": lambda: bare_product_seconds(n_train, n_runs, n_test, 1, n_train)}
    for perms in (0, NULL_PERMS):
        steps[f"after_null{perms}"] = lambda perms=perms: estimate_module.estimate(
            stats, EstimateConfig(null_perms=perms))
        steps[f"before_null{perms}"] = lambda perms=perms: baseline.estimate(
            stats, baseline.EstimateConfig(null_perms=perms))
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(args.repeats):
        for name, step in steps.items():
            seconds = step() if name == "bare" else best_time(step, 1)
            best[name] = min(best[name], seconds)
    memorized = int(np.sum(estimate_module.estimate(stats, EstimateConfig(null_perms=0)).mem >= 0.25))
    return {"shape": args.shape, "memorized": memorized, "n_train": n_train, **best}


def phase_imagenet(args: argparse.Namespace) -> dict[str, Any]:
    n_train, n_runs, n_test = args.width, args.imagenet_runs, args.imagenet_test
    start = time.perf_counter()
    stats = in_memory_stats(Truth.draw(n_train, n_test, args.classes), n_runs)
    build = time.perf_counter() - start
    rss_before = rss_mb()
    result = {"n_train": n_train, "build_seconds": build, "rss_before_mb": rss_before}
    for null_perms in (0, NULL_PERMS):
        runs = [timed_estimate(stats, null_perms) for _ in range(args.repeats)]
        result[f"null{null_perms}"] = min(runs, key=lambda run: run["seconds"])
    result["traced_peak_mb"] = traced_peak_mb(
        lambda: estimate_module.estimate(stats, EstimateConfig(null_perms=NULL_PERMS)))
    result["maxrss_mb"] = max_rss_mb()
    result["bare_seconds"] = bare_product_seconds(n_train, n_runs, n_test, args.repeats, BARE_BLOCK_ROWS)
    return result


CHILD_OPTIONS = ("runs", "n_train", "n_test", "classes", "new_runs", "imagenet_runs", "imagenet_test", "repeats")
PHASES = {"write": phase_write, "load": phase_load, "bare": phase_bare, "estimate": phase_estimate,
          "compare": phase_compare, "imagenet": phase_imagenet}


def run_phase(name: str, argv: list[str], **extra: Any) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; its last stdout line is the JSON result."""
    options = [f"--{key.replace('_', '-')}={value}" for key, value in extra.items()]
    command = [sys.executable, str(Path(__file__).resolve()), *argv, f"--phase={name}", *options]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- report

def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in [header, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def split_row(label: str, run: dict[str, Any]) -> list[str]:
    split = run["split"]
    return [label, f"{run['seconds']:.2f}", *(f"{split[part]:.2f}" for part in
                                             ("unpack", "matmul", "influence", "pairs", "topk", "other"))]


def report_cifar(args: argparse.Namespace, write: dict, load: dict, bare: dict, est: dict) -> None:
    print(f"\n## CIFAR-100 shape: {args.runs} runs x {args.n_train} train x {args.n_test} test, "
          f"{args.classes} classes (real record files written with write_record)\n")
    print(f"writing {write['records']} records: {write['seconds']:.1f} s "
          f"({write['records'] / write['seconds']:.1f} records/s)\n")
    mb = load["bytes"] / MB
    print(table(["step", "records", "MB", "seconds", "records/s", "MB/s", "ru_maxrss MB"], [
        ["full load, then write stats.npz", str(load["records"]), f"{mb:.0f}", f"{load['seconds']:.1f}",
         f"{load['records'] / load['seconds']:.1f}", f"{mb / load['seconds']:.1f}", f"{load['maxrss_mb']:.0f}"],
        [f"update: stats.npz + {load['new_records']} new records", str(load["new_records"]), "",
         f"{load['incremental_seconds']:.2f}", "", "", ""],
        ["  of which: read stats.npz", "", f"{load['cache_bytes'] / MB:.1f}", f"{load['cache_read_seconds']:.2f}",
         "", "", ""],
        ["  of which: write stats.npz", "", f"{load['cache_bytes'] / MB:.1f}",
         f"{load['cache_write_seconds']:.2f}", "", "", ""],
    ]))
    bare_s = bare["seconds"]
    memorized = est[f"null{NULL_PERMS}"]["memorized"]
    null_work = 1 + NULL_PERMS * memorized / args.n_train  # matmul rows of the null passes, relative
    rows = [["bare float32 product", f"{bare_s:.2f}", "1.00", "", ""]]
    for perms in (0, NULL_PERMS):
        run = est[f"null{perms}"]
        work = 1 if perms == 0 else null_work
        rows.append([f"estimate, null shuffles {perms}", f"{run['seconds']:.2f}", f"{run['seconds'] / bare_s:.2f}",
                     f"{work:.2f}", f"{run['seconds'] / (bare_s * work):.2f}"])
    print(f"\nestimate step ({est['null0']['pairs']} pairs, {memorized} memorized; the null recomputes only "
          f"memorized rows, so its product work is 1 + {NULL_PERMS} x memorized/n_train bare products):\n")
    print(table(["step", "seconds", "x bare", "product work", "x bare work"], rows))
    print("\nwhere the estimate step's time goes (seconds):\n")
    print(table(["run", "total", "unpack", "matmul", "influence + compares", "pairs", "top-k", "other"],
                [split_row(f"null {perms}", est[f"null{perms}"]) for perms in (0, NULL_PERMS)]))
    print(f"\nmemory: estimate step tracemalloc peak {est['traced_peak_mb']:.0f} MB (null {NULL_PERMS}); "
          f"estimate process ru_maxrss {est['maxrss_mb']:.0f} MB ({est['rss_before_mb']:.0f} MB before the "
          f"estimate: interpreter and stats); bare product process ru_maxrss {bare['maxrss_mb']:.0f} MB")


def report_compare(args: argparse.Namespace, results: list[dict]) -> None:
    print(f"\n## Before / after: {args.baseline} against src/estimators/subsample/influence.py, interleaved, "
          f"best of {args.repeats}\n")
    rows = []
    for res in results:
        for perms in (0, NULL_PERMS):
            work = 1 + (perms * res["memorized"] / res["n_train"] if perms else 0)
            before, after = res[f"before_null{perms}"], res[f"after_null{perms}"]
            rows.append([res["shape"], str(perms), f"{res['bare']:.2f}", f"{before:.2f}",
                         f"{before / (res['bare'] * work):.2f}", f"{after:.2f}",
                         f"{after / (res['bare'] * work):.2f}"])
    print(table(["runs x n_train x n_test", "null", "bare s", "before s", "before x bare work", "after s",
                 "after x bare work"], rows))


def report_imagenet(args: argparse.Namespace, results: list[dict]) -> None:
    print(f"\n## ImageNet width: {args.imagenet_runs} runs x {args.imagenet_test} test, SweepStats built in "
          "memory from synthetic records\n")
    rows = []
    for res in results:
        off, on = res["null0"], res[f"null{NULL_PERMS}"]
        rows.append([f"{res['n_train']:,}", f"{res['bare_seconds']:.2f}", f"{off['seconds']:.2f}",
                     f"{off['seconds'] / res['bare_seconds']:.2f}", f"{on['seconds']:.2f}",
                     f"{res['traced_peak_mb']:.0f}", f"{res['rss_before_mb']:.0f}", f"{res['maxrss_mb']:.0f}"])
    print(table(["n_train", "bare s", "estimate s (null 0)", "x bare", f"estimate s (null {NULL_PERMS})",
                 "tracemalloc peak MB", "RSS before MB", "ru_maxrss MB"], rows))
    print("\nwhere the time goes (null 0, seconds):\n")
    print(table(["n_train", "total", "unpack", "matmul", "influence + compares", "pairs", "top-k", "other"],
                [split_row(f"{res['n_train']:,}", res["null0"]) for res in results]))


# ---------------------------------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--new-runs", type=int, default=40, help="records added after the cache is written")
    parser.add_argument("--imagenet-runs", type=int, default=200)
    parser.add_argument("--imagenet-test", type=int, default=1000)
    parser.add_argument("--imagenet-widths", type=int, nargs="*", default=[50_000, 320_000, 1_280_000],
                        help="n_train values of the ImageNet-width table (none: skip it)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many timings")
    parser.add_argument("--baseline", type=Path, default=None, help="another influence.py to compare with")
    parser.add_argument("--compare-shapes", nargs="*", default=["4000x10000x10000", "200x100000x1000"],
                        help="runs x n_train x n_test of the before/after comparison")
    parser.add_argument("--workdir", type=Path, default=None, help="where the records go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the records")
    parser.add_argument("--skip-cifar", action="store_true", help="skip the records and CIFAR-shape tables")
    parser.add_argument("--phase", choices=PHASES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.phase is not None:
        print(json.dumps(PHASES[args.phase](args)))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="meminf-aggregate-"))
    common = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in CHILD_OPTIONS]
    common += [f"--workdir={workdir}", *([f"--baseline={args.baseline}"] if args.baseline else [])]
    print(f"machine: {os.cpu_count()} cpus, numpy {np.__version__}; records in {workdir}", flush=True)
    try:
        if not args.skip_cifar:
            write = run_phase("write", common)
            load = run_phase("load", common)
            bare = run_phase("bare", common)
            est = run_phase("estimate", common)
            report_cifar(args, write, load, bare, est)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.baseline is not None:
        report_compare(args, [run_phase("compare", common, shape=shape) for shape in args.compare_shapes])
    if args.imagenet_widths:
        results = [run_phase("imagenet", common, width=width) for width in args.imagenet_widths]
        report_imagenet(args, results)


if __name__ == "__main__":
    main()
