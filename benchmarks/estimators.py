"""Cheaper estimators scored against the full one: every registered way of scoring memorization on MNIST-5k
with the corrected `fz_mnist` recipe, against a 2,000-run subsampled reference (seeds 0..1999).

No scored estimator reads a run of the reference: the small-K subsample sweeps and the one-run estimators use
seeds >= 2000 (SEEDS below), the LDS held-out runs are a third disjoint set (outputs/estimators/lds_holdout,
seeds 3000..3099 with subset.repeats=2; --parts lds). Everything is trained once and cached under --out with
the CPU seconds it cost (cost.json beside each sweep), so reruns only score.

    .venv/bin/python benchmarks/estimators.py [--reference outputs/fz_agreement/fz_A fz_B fz_ref]
        [--out outputs/estimators] [--parts scores,lds] [--bootstrap 200]

Figures (docs/ESTIMATORS.md has the reading): against the reference mem (hard, theta 0.25), per estimate:
Spearman over all examples and over the reference's non-trivial ones (mem >= 0.05), cosine similarity (the
metric of the CSL paper, Ravikumar et al. 2025), the Jaccard of the estimate's top set of the reference's
memorized size with the memorized set, and the planted-noise AUROC of the same estimator on a sweep with 5% of
the labels flipped (trained 20 epochs instead of 10, so that the subsets are fitted: the in-subset accuracy of
the flipped examples is printed). Each figure carries a 95% percentile-bootstrap CI over examples. Cost: the
CPU seconds of the training processes (getrusage of the children) plus the reduce in this process, with
OMP_NUM_THREADS=1 (--threads) so that CPU seconds measure work and not the spinning of contended threads.
Beside them: the reference's own agreement with an independent 2,000-run reference, projected from its split
halves (src/estimators/subsample/reliability.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import table

from src.analyses.evaluation.lds import ceiling_summary, predicted_outputs, repeated_subsets
from src.analyses.evaluation.split import HeldOut
from src.contracts.estimates import Thresholds, read_estimates
from src.contracts.io import write_atomic
from src.contracts.records import find_records, read_record
from src.estimators.subsample.influence import estimate
from src.estimators.subsample.memorization import EstimateConfig, masked_mean
from src.estimators.subsample.projection import fitted_agreement, logit_fit, spearman_brown
from src.estimators.subsample.reliability import EMPIRICAL_METRICS, NON_TRIVIAL, split_half
from src.estimators.subsample.stats import IN, SweepStats
from src.util.plotting import new_figure, png_bytes
from src.util.stats import auroc, jaccard_index, spearman

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RECIPE = ["experiment=fz_mnist", "logger=none"]
NOISY = ["dataset.label_noise=0.05", "trainer.max_epochs=20"]  # 10 epochs fit 62-81% of the flipped labels
FREE_SCORES = "record.scores=[learn_speed,loss,margin,cumulative_loss]"
CURVATURE = "record.scores=[curvature]"
ALL_DATA = "subset.ratio=1.0"
SMALL_K = (16, 32, 64, 128, 256)
ONE_RUN_SEEDS = 4  # independent one-run estimates: the first is scored with its CI, the others give a range
SEEDS = {"subsets": 2000, "one_run": 2300, "turnover": 2400, "lastlayer": 2500, "lds_holdout": 3000,
         "noisy": 4000}
LASTLAYER_RUNS = 64
LDS_K = (64, 128, 256, 512, 1000, 2000)  # fit runs of the reference (its first K seeds) for LDS against K
LDS_HOLDOUT = ["subset.repeats=2"]  # 50 held-out subsets x 2 seeds: the noise ceiling (src.evaluate)
LDS_HOLDOUT_RUNS = 100
BOOTSTRAP_SEED = 0
CI = (2.5, 97.5)
# Record scores and how the estimator orients them (src/estimators/record_scores.py): larger = more memorized.
ORIENTED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "learn_speed": lambda v: 1.0 - v, "loss": lambda v: v, "margin": lambda v: -v, "cumulative_loss": lambda v: v,
    "curvature": lambda v: v,
}
METRICS = ("spearman_all", "spearman_non_trivial", "cosine", "jaccard_top", "noise_auroc")


# ------------------------------------------------------------------------------------------------ training

@dataclass(frozen=True)
class Sweep:
    """A sweep trained through the real command line, with the CPU seconds it cost."""

    directory: Path
    cpu_s: float
    runs: int


def run_command(args: list[str], threads: int) -> float:
    """Run a command of the project; the CPU seconds of it and its children."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([PYTHON, *args], cwd=REPO, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cached(directory: Path, runs: int, train: Callable[[], float]) -> Sweep:
    """The sweep in `directory`, trained by `train` unless its cost.json says it was completed before (a
    directory without one is an interrupted or foreign sweep whose cost is unknown: it is trained afresh)."""
    cost_file = directory / "cost.json"
    if cost_file.is_file():
        return Sweep(directory, float(json.loads(cost_file.read_text())["cpu_s"]), runs)
    if directory.exists():
        print(f"{directory} has no cost.json: trained again", flush=True)
        shutil.rmtree(directory)
    started = time.perf_counter()
    cpu_s = train()
    write_atomic(cost_file, lambda h: h.write(json.dumps({"cpu_s": cpu_s, "runs": runs,
                                                           "wall_s": time.perf_counter() - started}).encode()))
    print(f"trained {directory.name}: {runs} runs, {cpu_s:.0f} CPU s", flush=True)
    return Sweep(directory, cpu_s, runs)


def subset_sweep(out: Path, name: str, overrides: list[str], first: int, runs: int, threads: int) -> Sweep:
    seeds = f"seed={first}..{first + runs - 1}"
    command = ["-m", "src.run", "-m", *RECIPE, *overrides, seeds, f"paths.output_dir={out}", f"name={name}"]
    return cached(out / name, runs, lambda: run_command(command, threads))


def turnover_run(out: Path, name: str, overrides: list[str], seed: int, threads: int) -> Sweep:
    command = ["-m", "src.run", *RECIPE, *overrides, "estimator=turnover", f"seed={seed}",
               f"paths.output_dir={out}", f"name={name}"]
    return cached(out / name, 1, lambda: run_command(command, threads))


def lastlayer_sweep(out: Path, threads: int) -> Sweep:
    features_dir, seed = out / "lastlayer_features", SEEDS["lastlayer"]

    def train() -> float:
        cpu_s = run_command(["-m", "src.lastlayer", "features", *RECIPE, f"seed={seed}", "--out", str(features_dir)],
                            threads)
        seeds = f"seed={seed}..{seed + LASTLAYER_RUNS - 1}"
        return cpu_s + run_command(["-m", "src.run", "-m", "experiment=lastlayer_mnist", "logger=none",
                                    f"dataset.path={features_dir / 'features.npz'}", seeds,
                                    f"paths.output_dir={out}", "name=lastlayer"], threads)

    return cached(out / "lastlayer", LASTLAYER_RUNS, train)


# ------------------------------------------------------------------------------------------------ scoring

def by_seed(paths: list[Path]) -> list[Path]:
    """Record paths in seed order (their directories are seed=<k>)."""
    return sorted(paths, key=lambda path: int(path.parent.name.split("=")[1]))


def read_stats(paths: list[Path]) -> SweepStats:
    """The sufficient statistics of the records, in seed order."""
    *_, (_, stats, _) = nested(paths, (len(paths),))
    return stats


def nested(stats_paths: list[Path], ks: tuple[int, ...]) -> Iterator[tuple[int, SweepStats, float]]:
    """(K, statistics of the first K runs by seed, CPU seconds of reading them); one object folded in place."""
    paths = by_seed(stats_paths)
    stats, started = None, time.process_time()
    for count, path in enumerate(paths, start=1):
        record = read_record(path)
        if stats is None:
            stats = SweepStats.from_record(record, path, capacity=len(paths))
        else:
            stats.add_record(record, path)
        if count in ks:
            yield count, stats, time.process_time() - started


@dataclass
class Scored:
    """One estimate's scores of every example (larger = more memorized), and what it cost."""

    name: str
    family: str
    runs: int
    cpu_s: float
    score: np.ndarray
    noisy: tuple[np.ndarray, np.ndarray] | None = None  # (score, flipped) on the 5%-noise sweep
    spread: list[np.ndarray] | None = None  # other independent estimates of the same kind


def agreement_metrics(score: np.ndarray, reference: np.ndarray, memorized_size: int,
                      noisy: tuple[np.ndarray, np.ndarray] | None) -> dict[str, float | None]:
    finite = np.isfinite(score) & np.isfinite(reference)
    s, m = score[finite], reference[finite]
    non_trivial = m >= NON_TRIVIAL
    top = np.zeros(s.size, dtype=bool)
    top[np.argsort(-s, kind="stable")[:memorized_size]] = True
    norm = float(np.linalg.norm(s) * np.linalg.norm(m))
    return {"spearman_all": spearman(s, m), "spearman_non_trivial": spearman(s[non_trivial], m[non_trivial]),
            "cosine": float(s @ m) / norm if norm > 0 else None,
            "jaccard_top": jaccard_index(np.flatnonzero(top), np.flatnonzero(m >= Thresholds().theta_mem)),
            "noise_auroc": None if noisy is None else auroc(*noisy).auroc}


def bootstrap(scored: Scored, reference: np.ndarray, memorized: float, reps: int) -> dict[str, tuple[float, ...]]:
    """Each metric with its percentile CI over examples resampled with replacement (the noise AUROC over the
    noisy sweep's examples); the memorized size scales with the resample."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    n = reference.size
    point = agreement_metrics(scored.score, reference, round(memorized * n), scored.noisy)
    draws: dict[str, list[float]] = {metric: [] for metric in METRICS}
    for _ in range(reps):
        rows = rng.integers(0, n, n)
        noisy = None if scored.noisy is None else tuple(a[rows] for a in scored.noisy)
        values = agreement_metrics(scored.score[rows], reference[rows], round(memorized * n), noisy)
        for metric, value in values.items():
            if value is not None and np.isfinite(value):
                draws[metric].append(value)
    return {metric: (point[metric], *np.percentile(draws[metric], CI)) if draws[metric] and point[metric] is not None
            else (None,) for metric in METRICS}


def subsample_estimates(paths: list[Path], noisy_paths: list[Path], per_run_cpu: float, noisy: np.ndarray,
                        config: EstimateConfig) -> list[Scored]:
    """Hard and soft subsample mem and the record scores averaged over in-subset runs, at K = SMALL_K (the
    nested statistics are folded in place, so each K is scored before the next is read)."""
    out = []
    for (k, stats, read_cpu), (_, noisy_stats, _) in zip(nested(paths, SMALL_K), nested(noisy_paths, SMALL_K),
                                                         strict=True):
        started = time.process_time()
        est = estimate(stats, config)
        cost = k * per_run_cpu + read_cpu + time.process_time() - started
        noisy_est = estimate(noisy_stats, config)
        out.append(Scored(f"subsample K={k}", "subsample", k, cost, est.mem, (noisy_est.mem, noisy)))
        out.append(Scored(f"subsample soft K={k}", "subsample soft", k, cost, est.mem_soft,
                          (noisy_est.mem_soft, noisy)))
        for name in sorted(stats.proxy_sums):
            raw = masked_mean(stats.proxy_sums[name][IN], stats.n_in)
            noisy_raw = masked_mean(noisy_stats.proxy_sums[name][IN], noisy_stats.n_in)
            out.append(Scored(f"{name} mean of K={k}", f"{name} (in-subset mean)", k, k * per_run_cpu,
                              ORIENTED[name](raw), (ORIENTED[name](noisy_raw), noisy)))
    return out


def one_run_estimates(free: Sweep, curvature: Sweep, noisy_free: Sweep, noisy_curvature: Sweep,
                      noisy: np.ndarray) -> list[Scored]:
    """Each record score of one run on all the data; the first seed scored, the others its spread."""
    out = []
    for sweep, noisy_sweep in ((free, noisy_free), (curvature, noisy_curvature)):
        records = [read_record(p) for p in sorted(find_records(sweep.directory))]
        noisy_records = [read_record(p) for p in sorted(find_records(noisy_sweep.directory))]
        for name in sorted(records[0].proxies):
            scores = [ORIENTED[name](r.proxies[name].astype(np.float64)) for r in records]
            noisy_score = ORIENTED[name](noisy_records[0].proxies[name].astype(np.float64))
            out.append(Scored(f"{name} one run", f"{name} (one run, ratio 1.0)", 1, sweep.cpu_s / sweep.runs,
                              scores[0], (noisy_score, noisy), scores[1:]))
    return out


def turnover_estimate(run: Sweep, noisy_run: Sweep, noisy: np.ndarray) -> Scored:
    [clean] = [read_estimates(p.parent) for p in run.directory.rglob("estimates.npz")]
    [dirty] = [read_estimates(p.parent) for p in noisy_run.directory.rglob("estimates.npz")]
    return Scored("turnover one run", "turnover dropout", 1, run.cpu_s, clean.mem.astype(np.float64),
                  (dirty.mem.astype(np.float64), noisy))


def lastlayer_estimate(sweep: Sweep, config: EstimateConfig) -> Scored:
    stats = read_stats(find_records(sweep.directory))
    started = time.process_time()
    est = estimate(stats, config)
    return Scored(f"last layer K={sweep.runs}", "last layer (subsample on features)", sweep.runs,
                  sweep.cpu_s + time.process_time() - started, est.mem)


def chance(reference: np.ndarray, flipped: np.ndarray) -> Scored:
    """The reference's own scores shuffled across examples: what each metric gives a score unrelated to mem
    with mem's distribution (cosine similarity of non-negative, skewed scores is far from 0 by chance)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    return Scored("chance (reference mem shuffled)", "chance", 0, 0.0, rng.permutation(reference),
                  (rng.permutation(reference), flipped))


def flipped_of(paths: list[Path]) -> np.ndarray:
    record = read_record(paths[0])
    flipped = np.zeros(record.train_label.size, dtype=bool)
    flipped[record.flipped_idx] = True
    return flipped


def flipped_fit(paths: list[Path], flipped: np.ndarray) -> float:
    """The share of (run, flipped in-subset example) pairs predicted as the flipped label."""
    hits = total = 0
    for path in paths:
        record = read_record(path)
        where = record.subset_mask & flipped
        hits, total = hits + int(record.train_correct[where].sum()), total + int(where.sum())
    return hits / max(total, 1)


# ------------------------------------------------------------------------------------------------ reference

def reference_reliability(stats: SweepStats, config: EstimateConfig) -> dict[str, float | None]:
    """The projected agreement of this reference with an independent one of as many runs."""
    reliability = split_half(stats, config)
    half_runs = float(np.mean([sum(h["runs"]) / 2 for h in reliability["halvings"]]))
    projected: dict[str, float | None] = {"pearson": spearman_brown(reliability["pearson"], stats.n_runs / half_runs)}
    for metric in EMPIRICAL_METRICS:
        fit = logit_fit(dict(reliability["projection"][metric]["measured"]))
        projected[metric] = fitted_agreement(fit, stats.n_runs) if fit else None
    return projected


def render(rows: list[tuple[Scored, dict[str, tuple[float, ...]]]], ceiling: float | None, out: Path) -> None:
    """Spearman on non-trivial examples against CPU seconds, one line per kind of estimate; chance (no cost)
    and the reference's own projected reliability as horizontal lines."""
    import matplotlib

    figure = new_figure((8.0, 5.0))
    ax = figure.add_subplot()
    families: dict[str, list[tuple[float, float]]] = {}
    for scored, metrics in rows:
        value = metrics["spearman_non_trivial"][0]
        if value is not None:
            families.setdefault(scored.family, []).append((scored.cpu_s, value))
    colours = matplotlib.colormaps["tab20"]
    for i, (family, points) in enumerate(sorted(families.items())):
        if family == "chance":
            ax.axhline(points[0][1], color="grey", linestyle=":", label="chance (reference mem shuffled)")
            continue
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="osD^v<>"[i % 7], color=colours(i % 20), label=family)
    if ceiling is not None:
        ax.axhline(ceiling, color="black", linestyle="--", label="2,000-run reference vs an independent one")
    ax.set(xscale="log", xlabel="CPU seconds (training included)", ylabel="Spearman with the reference mem",
           title="agreement with the 2,000-run reference (non-trivial examples)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    write_atomic(out, lambda handle: handle.write(png_bytes(figure)))


def lds_against_k(reference_paths: list[Path], holdout: Sweep, config: EstimateConfig, scratch: Path) -> None:
    """LDS of the reference's first K runs' influence on the held-out repeated sweep, beside its noise ceiling."""
    held = HeldOut()
    for path in find_records(holdout.directory):
        held.add(read_record(path))
    held.sort_by_seed()
    masks, actual = np.stack(held.masks), np.stack(held.test_prob)
    groups = repeated_subsets(held.subset_seeds)
    rows = []
    for k, stats, _ in nested(reference_paths, LDS_K):
        est = estimate(stats, config, dense_dir=scratch)
        infl = np.array(np.load(est.dense.tmp, allow_pickle=False))
        est.discard_dense()
        summary, _ = ceiling_summary({"estimate": predicted_outputs(infl, masks)}, actual, groups)
        row = summary["matrices"]["estimate"]
        lds, ceiling, ratio = row["lds"], row["ceiling"], row["ratio"]
        rows.append((k, row["examples"], interval(lds["mean"], lds["ci95_subsets"]),
                     interval(ceiling["mean"], ceiling["ci95_subsets"]),
                     interval(ratio["value"], ratio["ci95_subsets"])))
    print(f"LDS against K: F&Z influence of the reference's first K runs on {holdout.runs} held-out runs "
          f"({len(groups)} subsets x {groups.shape[1]} seeds, {holdout.cpu_s:.0f} CPU s); intervals: +- 1.96 SE "
          "over bootstrap resamples of the held-out subsets")
    print(table(["fit runs K", "test examples", "LDS", "ceiling", "LDS / ceiling"], rows))


def interval(value: float | None, bounds: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + ("" if bounds is None else f" [{bounds[0]:.3f}, {bounds[1]:.3f}]")


def cell(values: tuple[float, ...]) -> str:
    if values[0] is None:
        return "n/a"
    return f"{values[0]:.3f} [{values[1]:.3f}, {values[2]:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", nargs="+", type=Path,
                        default=[REPO / "outputs/fz_agreement" / name for name in ("fz_A", "fz_B", "fz_ref")])
    parser.add_argument("--out", type=Path, default=REPO / "outputs/estimators")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parts", default="scores,lds", help="scores (the table), lds (LDS against K)")
    args = parser.parse_args()
    out, threads = args.out.resolve(), args.threads
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    config = EstimateConfig(null_perms=0)

    turnover = turnover_run(out, "turnover", [], SEEDS["turnover"], threads)
    noisy_turnover = turnover_run(out, "noisy_turnover", NOISY, SEEDS["noisy"] + max(SMALL_K) + 1, threads)
    lastlayer = lastlayer_sweep(out, threads)
    lds_holdout = subset_sweep(out, "lds_holdout", LDS_HOLDOUT, SEEDS["lds_holdout"], LDS_HOLDOUT_RUNS, threads)
    subsets = subset_sweep(out, "subsets", [FREE_SCORES], SEEDS["subsets"], max(SMALL_K), threads)
    noisy_subsets = subset_sweep(out, "noisy_subsets", [*NOISY, FREE_SCORES], SEEDS["noisy"], max(SMALL_K), threads)
    free = subset_sweep(out, "one_run_free", [ALL_DATA, FREE_SCORES], SEEDS["one_run"], ONE_RUN_SEEDS, threads)
    curv = subset_sweep(out, "one_run_curvature", [ALL_DATA, CURVATURE], SEEDS["one_run"], ONE_RUN_SEEDS, threads)
    noisy_seed = SEEDS["noisy"] + max(SMALL_K)
    noisy_free = subset_sweep(out, "noisy_one_run_free", [*NOISY, ALL_DATA, FREE_SCORES], noisy_seed, 1, threads)
    noisy_curv = subset_sweep(out, "noisy_one_run_curvature", [*NOISY, ALL_DATA, CURVATURE], noisy_seed, 1, threads)

    reference_paths = [path for sweep in args.reference for path in find_records(sweep)]
    if "lds" in args.parts.split(","):
        lds_against_k(reference_paths, lds_holdout, config, out)
    if "scores" not in args.parts.split(","):
        return
    stats = read_stats(reference_paths)
    started = time.process_time()
    reference = estimate(stats, config)
    reference_cpu = stats.n_runs * subsets.cpu_s / subsets.runs + time.process_time() - started
    reliability = reference_reliability(stats, config)
    memorized = float(np.mean(reference.mem >= Thresholds().theta_mem))

    noisy_paths = sorted(find_records(noisy_subsets.directory))
    flipped = flipped_of(noisy_paths)
    estimates = [*subsample_estimates(sorted(find_records(subsets.directory)), noisy_paths,
                                      subsets.cpu_s / subsets.runs, flipped, config),
                 *one_run_estimates(free, curv, noisy_free, noisy_curv, flipped),
                 turnover_estimate(turnover, noisy_turnover, flipped), lastlayer_estimate(lastlayer, config),
                 chance(reference.mem, flipped)]
    rows = [(scored, bootstrap(scored, reference.mem, memorized, args.bootstrap)) for scored in estimates]

    print(f"reference: {stats.n_runs} runs (seeds {stats.seeds[0]}..{stats.seeds[-1]}), {reference_cpu:.0f} CPU s "
          f"(training at {subsets.cpu_s / subsets.runs:.2f} CPU s/run, {threads} thread(s)); memorized "
          f"{memorized:.4f} of the examples; against an independent 2,000-run reference (projected): "
          + ", ".join(f"{k} {v:.3f}" for k, v in reliability.items() if v is not None))
    print(f"noise sweep: {flipped.mean():.3f} of the labels flipped; in-subset fit of the flipped labels "
          f"{flipped_fit(noisy_paths, flipped):.3f} ({' '.join(NOISY)})")
    memorized_size = round(memorized * stats.n_train)
    table_rows = []
    for scored, metrics in rows:
        spread = ""
        if scored.spread:
            values = [agreement_metrics(other, reference.mem, memorized_size, None)["spearman_non_trivial"]
                      for other in scored.spread]
            spread = f"{min(values):.3f}..{max(values):.3f}"
        share = f"{100 * scored.cpu_s / reference_cpu:.2f}%"
        table_rows.append((scored.name, scored.runs, f"{scored.cpu_s:.0f}", share,
                           *(cell(metrics[metric]) for metric in METRICS), spread))
    print(table(["estimate", "runs", "CPU s", "of reference", "Spearman all", "Spearman non-trivial", "cosine",
                 "Jaccard top-|M|", "noise AUROC", "other runs (non-trivial)"], table_rows))
    render(rows, reliability.get("spearman_non_trivial"), out / "agreement_vs_compute.png")
    print(f"wrote {out / 'agreement_vs_compute.png'}; load average at end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
