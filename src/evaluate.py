"""Built-in evaluation of memorization and influence scores on a sweep: planted label noise, the linear
datamodeling score (LDS) and membership inference (LiRA).

    python -m src.evaluate <sweep dir> [--out DIR] [--parts noise,lds,mia] [--holdout-seeds a..b[,c..d]]
        [--estimates DIR ...] [--infl FILE.npy ...] [--lira-variance auto|global|per-example]
        [--dense-cap-mb 512] [--removal DIR]

The sweep is read like `python -m src.estimate --strict` does (a damaged or foreign record, e.g. a mixed
sweep, is one `error:` line, exit 2), then the records of the runs it uses are read a second time to get
the per-run probabilities (SweepStats keeps only sums). Runs are split by seed into held-out runs
(`--holdout-seeds`, default the last 10% of the seeds, at least 2) and fit runs (all others); fewer than 2
on either side is an error. The held-out runs never enter an estimate that LDS or the attack uses.

noise: planted-noise AUROC (needs records with flipped labels; skipped with a note otherwise). For every
  score, the AUROC of flipped (positive) against clean training examples: the Mann-Whitney statistic with
  midranks, so ties count 1/2; examples with a NaN score are left out and counted per class. Scores: mem
  and mem_soft estimated from all runs of the sweep (source `sweep`), and every float (n_train,) array of
  each `--estimates DIR` (its estimates.npz: mem, mem_soft, acc_in, proxy_*, ...; `*_se` columns are not
  scores). A score ranks flipped examples high when its AUROC is above 0.5; 1 - AUROC is the AUROC of its
  negation (learning speed or margin flag flipped examples by low values). An estimates file whose
  `flipped` column disagrees with the sweep is an error.
lds: the influence matrix estimated from the fit runs (src.estimate, hard correctness; n_train x n_test
  float32, refused above --dense-cap-mb), named `estimate`, and each `--infl FILE.npy` of that shape, named by
  its file stem. For held-out run k and
  test example j: predicted(k, j) = sum of infl(i, j) over the i in run k's subset (a NaN influence, i.e.
  an example the fit runs never left out or never included, counts as 0), actual(k, j) = the run's
  probability of the test label (test_prob). LDS_j = Spearman (Pearson of midranks) over the held-out runs
  of predicted vs actual; NaN where either side is constant (e.g. an all-zero matrix), left out of the mean
  and counted. Reported: mean with a normal 95% CI (mean +- 1.96 sd / sqrt(m) over the m test examples
  with an LDS) and the median. The target is the probability only: LDS_j ranks the runs of one test
  example, so logit(p) or any other increasing function of p gives the same LDS to the bit, and the
  margin (logit of y minus the largest other logit) needs logits, which records do not hold.
mia: LiRA (Carlini et al. 2022) with the fit runs as shadow models and each held-out run as a target.
  phi = log(p / (1 - p)) of train_prob, p clipped to [1e-6, 1 - 1e-6]. Per training example, Gaussians
  are fitted to phi over the shadow runs that included it (in) and left it out (out). Variance `global`:
  one pooled within-example variance per side (sum of squared deviations from each example's own mean
  over sum of (n - 1)); `per-example`: each example's sample variance, floored at PHI_VARIANCE_FLOOR;
  `auto` (default): per-example from PER_EXAMPLE_MIN_SHADOW shadow runs on, global below. Scores for
  target run k and example i, label = i in run k's subset: online = log N(phi; mu_in, var_in) -
  log N(phi; mu_out, var_out); offline = (phi - mu_out) / sd_out (one-sided, larger = member; the same
  ranking as Carlini's offline p-value); baseline = phi itself (a confidence/loss threshold, Yeom et al.
  2018: -loss = log p ranks like phi). All (k, i) pooled: AUC (Mann-Whitney, as above), TPR at 1% FPR and
  at 0.1% FPR where the non-members allow at least MIN_FALSE_POSITIVES false positives there (TPR at FPR a:
  the largest TPR over thresholds whose FPR <= a). NaN scores (an example with no shadow run on a side, or
  a side with fewer than 2 runs under per-example variance) are left out and counted. Vulnerability of i:
  its mean online score over the held-out runs that included it; its Spearman with mem of the fit runs.
removal (--removal DIR or removal.csv): the summary of a removal experiment (python -m src.removal), through
  src.removal's read_removal_csv and summarize, copied into evaluation.json.

Outputs (in --out, default <sweep dir>/evaluation/), all computed before any is written, each atomically:
evaluation.json (summary), noise_auroc.csv (source, score, auroc, counts), lds.csv (test index, label, one
LDS column per matrix; NaN empty), lds.png, mia_roc.csv (attack, fpr, tpr; collinear points dropped),
mia_roc.png, mia_examples.csv (per training example: mem of the fit runs, held-out runs with it in,
vulnerability, mu/var in and out), and estimates_without_holdout/ (src.estimate's outputs for the fit runs,
influence.npy included). One line summarizes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_curve

from src import removal
from src.errors import ConfigError, DataError, cli_exit_code
from src.estimate import (
    MB,
    EstimateConfig,
    Estimates,
    SweepStats,
    csv_text,
    estimate,
    load_sweep,
    spearman,
    summarize,
    write_outputs,
)
from src.records import Record, read_record, write_atomic

PARTS = ("noise", "lds", "mia")
# Scores for which a LOW value flags an example (slow learning, small margin, low in-subset accuracy); the
# noise AUROC negates them. Measured on fz_mnist with 10% flipped labels (20 epochs): raw AUROC of
# proxy_learn_speed 0.003 and proxy_margin 0.097, i.e. 0.997 and 0.903 oriented.
LOW_SCORE_FLAGS = frozenset({"proxy_learn_speed", "proxy_margin", "acc_in", "acc_out"})
HOLDOUT_FRACTION = 0.1
MIN_RUNS_PER_SIDE = 2  # a Spearman over held-out runs and a variance over shadow runs need 2
PROB_CLIP = 1e-6
# Carlini et al. 2022 (LiRA, "fixed variance"): below 64 shadow models a global variance estimate does
# better than per-example ones.
PER_EXAMPLE_MIN_SHADOW = 64
# Per-example phi variances are floored: an example whose probability is clipped in every shadow run has
# variance 0 (a degenerate Gaussian). 0.01 is 1/240 of the pooled in-variance measured on fz_mnist (2.43 in,
# 3.64 out, 56 shadow runs), so it only touches such examples.
PHI_VARIANCE_FLOOR = 0.01
FPR_TARGETS = (0.01, 0.001)
# TPR at FPR a is reported when a x non-members >= 5: with fewer, it rests on a handful of points.
MIN_FALSE_POSITIVES = 5
CONFIDENCE = 0.95
Z_CONFIDENCE = float(norm.ppf(0.5 + CONFIDENCE / 2))
FIT_ESTIMATES_DIR = "estimates_without_holdout"
ESTIMATES_NAME = "estimates.npz"
REMOVAL_CSV = "removal.csv"
SWEEP_SOURCE = "sweep"
FIT_MATRIX = "estimate"
ATTACKS = ("online", "offline", "baseline")
PLOT_DPI = 100
PLOT_INCHES = (6.0, 4.5)


# -------------------------------------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Auroc:
    auroc: float  # NaN when a class is empty
    n_pos: int
    n_neg: int
    nan_pos: int  # left out: NaN score
    nan_neg: int


def auroc(scores: np.ndarray, positive: np.ndarray) -> Auroc:
    """AUROC of positives above negatives: Mann-Whitney U / (n_pos n_neg) with midranks (a tie counts 1/2);
    NaN scores are left out and counted per class."""
    scores, positive = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(positive, dtype=bool).ravel()
    missing = np.isnan(scores)
    s, y = scores[~missing], positive[~missing]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    value = float("nan")
    if n_pos and n_neg:
        ranks = rankdata(s)
        value = (float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return Auroc(value, n_pos, n_neg, int((missing & positive).sum()), int((missing & ~positive).sum()))


def column_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of a[:, j] and b[:, j] for every column j (Pearson of midranks); NaN where a
    column is constant."""
    ranks_a, ranks_b = rankdata(a, axis=0), rankdata(b, axis=0)
    ranks_a -= ranks_a.mean(axis=0)
    ranks_b -= ranks_b.mean(axis=0)
    numerator = (ranks_a * ranks_b).sum(axis=0)
    denominator = np.sqrt((ranks_a**2).sum(axis=0) * (ranks_b**2).sum(axis=0))
    out = np.full(numerator.shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)




def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The largest TPR over the ROC points (all thresholds) whose FPR is at most `target`."""
    return float(tpr[fpr <= target].max())


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def mean_ci(values: np.ndarray) -> dict[str, Any]:
    """Mean, normal CI of the mean and median over the finite values; how many were NaN."""
    finite = values[np.isfinite(values)]
    result: dict[str, Any] = {"mean": None, "ci95": None, "median": None, "n": int(finite.size),
                              "n_nan": int(values.size - finite.size)}
    if finite.size:
        mean = float(finite.mean())
        result.update(mean=mean, median=float(np.median(finite)))
        if finite.size >= 2:
            half = Z_CONFIDENCE * float(finite.std(ddof=1)) / math.sqrt(finite.size)
            result["ci95"] = [mean - half, mean + half]
    return result


# --------------------------------------------------------------------------------------------- loading

def parse_seeds(spec: str) -> list[int]:
    """`a..b` (inclusive), single seeds, comma-separated: '0..3,7' -> [0, 1, 2, 3, 7]."""
    seeds: list[int] = []
    try:
        for item in spec.split(","):
            first, _, last = item.strip().partition("..")
            seeds += range(int(first), int(last or first) + 1)
    except ValueError as err:
        raise ConfigError(f"--holdout-seeds {spec!r} is not a seed list; use e.g. 56..63 or 1,5,9..12") from err
    return sorted(set(seeds))


def holdout_seeds(seeds: Sequence[int], spec: str | None) -> list[int]:
    """The held-out seeds: `spec`, or the last HOLDOUT_FRACTION of the seeds (at least MIN_RUNS_PER_SIDE);
    ConfigError when a requested seed is not in the sweep or fewer than 2 runs remain on a side."""
    ordered = sorted(seeds)
    if spec is None:
        held = ordered[len(ordered) - max(MIN_RUNS_PER_SIDE, math.ceil(HOLDOUT_FRACTION * len(ordered))):]
    else:
        held = parse_seeds(spec)
        absent = sorted(set(held) - set(ordered))
        if absent:
            raise ConfigError(f"--holdout-seeds names seed {absent[0]} ({len(absent)} in all), which the sweep "
                              f"lacks; its seeds are {ordered[0]}..{ordered[-1]} ({len(ordered)} runs)")
    fit = len(ordered) - len(held)
    if len(held) < MIN_RUNS_PER_SIDE or fit < MIN_RUNS_PER_SIDE:
        raise ConfigError(f"{len(held)} held-out and {fit} fit runs of {len(ordered)}: each side needs at least "
                          f"{MIN_RUNS_PER_SIDE}; train more seeds or change --holdout-seeds")
    return held


def logit(prob: np.ndarray) -> np.ndarray:
    """phi = log(p / (1 - p)), p clipped to [PROB_CLIP, 1 - PROB_CLIP]; float64."""
    p = np.clip(np.asarray(prob, dtype=np.float64), PROB_CLIP, 1 - PROB_CLIP)
    return np.log(p) - np.log1p(-p)


@dataclass
class LogitSums:
    """Per-example counts, sums and sums of squares of phi over the shadow runs, in and out of the subset."""

    n_in: np.ndarray
    sum_in: np.ndarray
    sq_in: np.ndarray
    n_out: np.ndarray
    sum_out: np.ndarray
    sq_out: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> LogitSums:
        return cls(*(np.zeros(n) for _ in range(6)))

    def add(self, mask: np.ndarray, prob: np.ndarray) -> None:
        phi = logit(prob)
        for side, where in (("in", mask), ("out", ~mask)):
            getattr(self, f"n_{side}")[where] += 1
            getattr(self, f"sum_{side}")[where] += phi[where]
            getattr(self, f"sq_{side}")[where] += phi[where] ** 2

    def gaussian(self, side: str, per_example: bool) -> tuple[np.ndarray, np.ndarray | float]:
        """(mean, variance) of phi on a side: NaN mean without runs there; variance per example (NaN below 2
        runs, floored at PHI_VARIANCE_FLOOR) or pooled over the examples with 2 runs or more."""
        n, total, squares = (getattr(self, f"{name}_{side}") for name in ("n", "sum", "sq"))
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(n > 0, total / n, np.nan)
            deviations = np.where(n >= 2, np.maximum(squares - total * mean, 0.0), 0.0)
            if per_example:
                return mean, np.where(n >= 2, np.maximum(deviations / (n - 1), PHI_VARIANCE_FLOOR), np.nan)
        dof = float(np.sum(np.maximum(n - 1, 0)))
        return mean, float(deviations.sum()) / dof if dof > 0 else float("nan")


@dataclass
class HeldOut:
    """The held-out runs, by seed: their subsets and per-example probabilities of the label."""

    seeds: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    train_prob: list[np.ndarray] = field(default_factory=list)
    test_prob: list[np.ndarray] = field(default_factory=list)

    def add(self, record: Record) -> None:
        self.seeds.append(record.seed)
        self.masks.append(record.subset_mask)
        self.train_prob.append(record.train_prob)
        self.test_prob.append(record.test_prob)

    def sort_by_seed(self) -> None:
        order = np.argsort(self.seeds, kind="stable")
        for name in ("seeds", "masks", "train_prob", "test_prob"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in order])


@dataclass
class SplitSweep:
    """A sweep split by seed: sufficient statistics and phi sums of the fit (shadow) runs; the held-out runs."""

    fit: SweepStats
    phi: LogitSums
    held_out: HeldOut


def split_runs(records: Iterable[tuple[str | Path, Record]], held_seeds: Iterable[int]) -> SplitSweep:
    """Fold (path, record) pairs into a SplitSweep. The held-out records are checked like fit records
    (identity, seed repeated, subset of their seed: SweepStats.add_record), in statistics of their own."""
    held_seeds = set(held_seeds)
    fit: SweepStats | None = None
    checked: SweepStats | None = None
    held_out = HeldOut()
    phi: LogitSums | None = None
    for path, record in records:
        if record.seed in held_seeds:
            if checked is None:
                checked = SweepStats.from_record(record, path)
            else:
                checked.add_record(record, path)
            held_out.add(record)
            continue
        if fit is None:
            fit, phi = SweepStats.from_record(record, path), LogitSums.zeros(record.train_label.size)
        else:
            fit.add_record(record, path)
        phi.add(record.subset_mask, record.train_prob)
    n_fit = 0 if fit is None else fit.n_runs
    if fit is None or checked is None or phi is None or min(n_fit, checked.n_runs) < MIN_RUNS_PER_SIDE:
        raise ConfigError(f"{n_fit} fit and {len(held_out.seeds)} held-out runs: each side needs at least "
                          f"{MIN_RUNS_PER_SIDE}; train more seeds or change --holdout-seeds")
    differences = checked.identity.differences(fit.identity)
    if differences:
        raise DataError(f"the held-out runs belong to another sweep than the fit runs: {'; '.join(differences)}")
    fit.sort_by_seed()
    held_out.sort_by_seed()
    return SplitSweep(fit, phi, held_out)


def load_split(stats: SweepStats, held_seeds: Sequence[int]) -> SplitSweep:
    """Read the records behind `stats` (from load_sweep) again and split them by seed."""
    return split_runs(((path, read_record(path)) for path in stats.paths), held_seeds)


# ----------------------------------------------------------------------------------------------- noise

def estimate_scores(path: Path, stats: SweepStats) -> dict[str, np.ndarray]:
    """The score columns of an estimates dir: float arrays of shape (n_train,) not named *_se."""
    file = path / ESTIMATES_NAME if path.is_dir() else path
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, TypeError, EOFError) as err:
        raise DataError(f"cannot read {file} ({type(err).__name__}: {err}); pass a directory written by "
                        "python -m src.estimate") from err
    flipped = arrays.get("flipped")
    if flipped is not None and not np.array_equal(flipped.astype(bool), flipped_mask(stats)):
        raise DataError(f"{file} flags other flipped examples than the sweep; pass estimates of this sweep")
    scores = {key: values for key, values in arrays.items()
              if values.dtype.kind == "f" and values.shape == (stats.n_train,) and not key.endswith("_se")}
    if not scores:
        raise DataError(f"{file} has no float column of length n_train={stats.n_train}; pass estimates of "
                        "this sweep")
    return scores


def flipped_mask(stats: SweepStats) -> np.ndarray:
    flipped = np.zeros(stats.n_train, dtype=bool)
    flipped[stats.flipped_idx] = True
    return flipped


def noise_auroc(sources: Mapping[str, Mapping[str, np.ndarray]], flipped: np.ndarray) -> list[dict[str, Any]]:
    """One row per (source, score): AUROC of flipped vs clean and the counts. Scores in LOW_SCORE_FLAGS are
    negated first, so that every AUROC reads "how well the score ranks flipped labels as suspect"."""
    rows = []
    for source, scores in sources.items():
        for name, values in scores.items():
            low_flags = name in LOW_SCORE_FLAGS
            result = auroc(-values if low_flags else values, flipped)
            rows.append({"source": source, "score": name, "flags": "low" if low_flags else "high",
                         "auroc": _number(result.auroc),
                         "n_flipped": result.n_pos, "n_clean": result.n_neg, "nan_flipped": result.nan_pos,
                         "nan_clean": result.nan_neg})
    return rows


# ------------------------------------------------------------------------------------------------- LDS

def check_dense_cap(n_train: int, n_test: int, cap_mb: float) -> None:
    size_mb = n_train * n_test * 4 / MB
    if size_mb > cap_mb:
        raise ConfigError(f"the influence matrix ({n_train} x {n_test} float32, {size_mb:.0f} MB) exceeds "
                          f"--dense-cap-mb {cap_mb:g}; raise the cap or leave lds out of --parts")


def read_influence(path: Path, n_train: int, n_test: int, cap_mb: float) -> np.ndarray:
    """An (n_train, n_test) float matrix from a .npy file, as float32."""
    check_dense_cap(n_train, n_test, cap_mb)
    try:
        matrix = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read {path} as a .npy array ({err})") from err
    if matrix.shape != (n_train, n_test) or matrix.dtype.kind != "f":
        raise DataError(f"{path} has dtype {matrix.dtype} shape {matrix.shape}; --infl needs floats of shape "
                        f"(n_train, n_test) = ({n_train}, {n_test})")
    return np.asarray(matrix, dtype=np.float32)


def fit_estimate(split: SplitSweep, dense_cap_mb: float, out_dir: Path) -> tuple[Estimates, np.ndarray | None]:
    """Estimates of the fit runs with their influence matrix (in a temp file under out_dir that write_outputs
    moves into place), and the matrix in memory; None when it exceeds the cap."""
    config = EstimateConfig(null_perms=0, dense_cap_mb=dense_cap_mb)
    est = estimate(split.fit, config, dense_dir=out_dir)
    if est.dense is None:
        return est, None
    return est, np.array(np.load(est.dense.tmp, allow_pickle=False, mmap_mode="r"))


def linear_datamodel_scores(infl: np.ndarray, masks: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """LDS_j for every test example: Spearman over runs of sum_{i in subset} infl(i, j) (NaN as 0) vs actual."""
    predicted = masks.astype(np.float32) @ np.nan_to_num(infl, nan=0.0)
    return column_spearman(predicted, actual)


# ------------------------------------------------------------------------------------------------- MIA

def lira_scores(phi_sums: LogitSums, train_prob: np.ndarray, per_example: bool) -> dict[str, np.ndarray]:
    """(runs, n) scores of the target runs: online and offline LiRA and the confidence baseline."""
    phi = logit(train_prob)
    mu_in, var_in = phi_sums.gaussian("in", per_example)
    mu_out, var_out = phi_sums.gaussian("out", per_example)
    online = norm.logpdf(phi, mu_in, np.sqrt(var_in)) - norm.logpdf(phi, mu_out, np.sqrt(var_out))
    return {"online": online, "offline": (phi - mu_out) / np.sqrt(var_out), "baseline": phi}


def attack_metrics(scores: np.ndarray, members: np.ndarray) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """AUC, TPR at the FPR targets the non-members support, counts; and the ROC with collinear points
    dropped (for the CSV and plot)."""
    scores, members = scores.ravel(), members.ravel()
    result = auroc(scores, members)
    finite = ~np.isnan(scores)
    fpr, tpr, _ = roc_curve(members[finite], scores[finite], drop_intermediate=False)
    metrics = {"auc": _number(result.auroc), "members": result.n_pos, "non_members": result.n_neg,
               "nan_excluded": result.nan_pos + result.nan_neg,
               "tpr_at_fpr": {str(target): tpr_at_fpr(fpr, tpr, target) for target in FPR_TARGETS
                              if target * result.n_neg >= MIN_FALSE_POSITIVES}}
    thin_fpr, thin_tpr, _ = roc_curve(members[finite], scores[finite], drop_intermediate=True)
    return metrics, thin_fpr, thin_tpr


def vulnerability(online: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean online score of each example over the target runs that included it (NaN: none), and their count."""
    valid = masks & np.isfinite(online)
    count = valid.sum(axis=0)
    total = np.where(valid, online, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0), masks.sum(axis=0)


def use_per_example_variance(mode: str, shadow_runs: int) -> bool:
    return mode == "per-example" or (mode == "auto" and shadow_runs >= PER_EXAMPLE_MIN_SHADOW)


# --------------------------------------------------------------------------------------------- outputs

def _figure() -> Figure:
    figure = Figure(figsize=PLOT_INCHES, dpi=PLOT_DPI)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI)
    return buffer.getvalue()


def render_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], metrics: Mapping[str, dict[str, Any]]) -> bytes:
    """Log-log ROC of the attacks (the low-FPR regime LiRA is judged by) with the chance line."""
    figure = _figure()
    ax = figure.add_subplot()
    floor = 1e-4
    for name, (fpr, tpr) in curves.items():
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=f"{name} (AUC {metrics[name]['auc']:.3f})")
    ax.plot([floor, 1], [floor, 1], "k:", label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), xlabel="false positive rate",
           ylabel="true positive rate", title="membership inference on held-out runs")
    ax.legend(loc="lower right")
    figure.tight_layout()
    return _png(figure)


def render_lds(columns: Mapping[str, np.ndarray]) -> bytes:
    figure = _figure()
    ax = figure.add_subplot()
    bins = np.linspace(-1, 1, 41)
    for name, values in columns.items():
        finite = values[np.isfinite(values)]
        if finite.size:
            ax.hist(finite, bins=bins, alpha=0.6, label=f"{name} (mean {finite.mean():.3f})")
    ax.set(xlabel="LDS of a test example (Spearman over held-out runs)", ylabel="test examples",
           title="linear datamodeling score")
    ax.legend(loc="upper left")
    figure.tight_layout()
    return _png(figure)


def roc_csv(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    names = np.concatenate([np.full(fpr.size, name) for name, (fpr, _) in curves.items()])
    return csv_text({"attack": names, "fpr": np.concatenate([fpr for fpr, _ in curves.values()]),
                     "tpr": np.concatenate([tpr for _, tpr in curves.values()])})


def _rows_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = {key: np.array([np.nan if row[key] is None else row[key] for row in rows]) for key in rows[0]}
    return csv_text(columns)


# ----------------------------------------------------------------------------------------------- parts

@dataclass
class Evaluation:
    """Everything computed, ready to be written."""

    summary: dict[str, Any]
    payloads: dict[str, bytes] = field(default_factory=dict)
    fit: tuple[SweepStats, Estimates] | None = None  # the fit runs' estimates, written beside


def evaluate_noise(stats: SweepStats, estimates_dirs: Sequence[Path], evaluation: Evaluation) -> None:
    if stats.flipped_idx.size == 0:
        evaluation.summary["noise"] = {"skipped": "the records carry no flipped labels (train with "
                                                  "dataset.label_noise=0.1, say)"}
        return
    est = estimate(stats, EstimateConfig(null_perms=0))
    sources = {SWEEP_SOURCE: {"mem": est.mem, "mem_soft": est.mem_soft}}
    sources.update({str(path): estimate_scores(path, stats) for path in estimates_dirs})
    rows = noise_auroc(sources, flipped_mask(stats))
    evaluation.summary["noise"] = {"n_flipped": int(stats.flipped_idx.size), "runs": stats.n_runs, "scores": rows}
    evaluation.payloads["noise_auroc.csv"] = _rows_csv(rows).encode()


def evaluate_lds(split: SplitSweep, stats: SweepStats, matrices: Mapping[str, np.ndarray],
                 evaluation: Evaluation) -> None:
    masks, actual = np.stack(split.held_out.masks), np.stack(split.held_out.test_prob)
    columns = {name: linear_datamodel_scores(infl, masks, actual) for name, infl in matrices.items()}
    evaluation.summary["lds"] = {
        "target": "test_prob (probability of the test label)", "held_out_runs": len(split.held_out.seeds),
        "matrices": {name: mean_ci(values) for name, values in columns.items()},
    }
    csv_columns = {"test_index": np.arange(stats.n_test), "label": stats.test_label}
    csv_columns.update({f"lds_{name}": values for name, values in columns.items()})
    evaluation.payloads["lds.csv"] = csv_text(csv_columns).encode()
    evaluation.payloads["lds.png"] = render_lds(columns)


def evaluate_mia(split: SplitSweep, fit_mem: np.ndarray, variance_mode: str, evaluation: Evaluation) -> None:
    masks = np.stack(split.held_out.masks)
    per_example = use_per_example_variance(variance_mode, split.fit.n_runs)
    scores = lira_scores(split.phi, np.stack(split.held_out.train_prob), per_example)
    metrics: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in ATTACKS:
        metrics[name], fpr, tpr = attack_metrics(scores[name], masks)
        curves[name] = (fpr, tpr)
    vuln, held_in = vulnerability(scores["online"], masks)
    rho, n_rho = spearman(vuln, fit_mem), int((np.isfinite(vuln) & np.isfinite(fit_mem)).sum())
    variances = {side: split.phi.gaussian(side, per_example) for side in ("in", "out")}
    evaluation.summary["mia"] = {
        "shadow_runs": split.fit.n_runs, "target_runs": len(split.held_out.seeds),
        "variance": "per-example" if per_example else "global",
        **({} if per_example else {f"var_{side}": _number(var) for side, (_, var) in variances.items()}),
        "attacks": metrics, "vulnerability_mem_spearman": rho, "vulnerability_examples": n_rho,
    }
    evaluation.payloads["mia_roc.csv"] = roc_csv(curves).encode()
    evaluation.payloads["mia_roc.png"] = render_roc(curves, metrics)
    n = split.fit.n_train
    evaluation.payloads["mia_examples.csv"] = csv_text({
        "index": np.arange(n), "mem": fit_mem, "held_out_in": held_in, "vulnerability": vuln,
        **{f"{stat}_{side}": np.broadcast_to(values, (n,))
           for side, pair in variances.items() for stat, values in zip(("mu", "var"), pair, strict=True)},
    }).encode()


def removal_summary(removal_path: Path) -> dict[str, Any]:
    """The removal experiment's summary (src.removal): per selection, level and control, accuracy over seeds
    and the paired difference removed - control."""
    csv_path = removal_path / REMOVAL_CSV if removal_path.is_dir() else removal_path
    return {"csv": str(csv_path), "rows": removal.summarize(removal.read_removal_csv(csv_path))}


def check_matrix_names(infl_files: Sequence[Path]) -> None:
    """--infl files are named by their stem (lds_<stem> in lds.csv): distinct, and not the fit estimate's."""
    stems = [FIT_MATRIX, *(path.stem for path in infl_files)]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ConfigError(f"--infl files are named by their stem and {repeated[0]!r} is taken twice (or is the "
                          f"fit estimate's name); rename or link one")


def evaluate(args: argparse.Namespace, out_dir: Path) -> Evaluation:
    parts = parse_parts(args.parts)
    check_matrix_names(args.infl)
    stats, _ = load_sweep(args.sweep_dir, strict=True)
    evaluation = Evaluation({
        "sweep": str(args.sweep_dir), "runs": stats.n_runs, "parts": list(parts),
        **{key: stats.meta.get(key) for key in ("dataset", "model", "experiment_name", "experiment_hash", "ratio")},
        "n_train": stats.n_train, "n_test": stats.n_test,
    })
    if "noise" in parts:
        evaluate_noise(stats, args.estimates, evaluation)
    if args.removal is not None:
        evaluation.summary["removal"] = removal_summary(args.removal)
    if "lds" not in parts and "mia" not in parts:
        return evaluation
    held = holdout_seeds(stats.seeds, args.holdout_seeds)
    other_matrices = {}
    if "lds" in parts:
        check_dense_cap(stats.n_train, stats.n_test, args.dense_cap_mb)
        other_matrices = {path.stem: read_influence(path, stats.n_train, stats.n_test, args.dense_cap_mb)
                          for path in args.infl}
    split = load_split(stats, held)
    evaluation.summary.update(held_out_seeds=split.held_out.seeds, fit_runs=split.fit.n_runs)
    out_existed = out_dir.exists()
    est = None
    try:
        est, fit_infl = fit_estimate(split, args.dense_cap_mb if "lds" in parts else 0.0,
                                     out_dir / FIT_ESTIMATES_DIR)
        evaluation.fit = (split.fit, est)
        if fit_infl is not None:
            evaluate_lds(split, stats, {FIT_MATRIX: fit_infl, **other_matrices}, evaluation)
        if "mia" in parts:
            evaluate_mia(split, est.mem, args.lira_variance, evaluation)
    except BaseException:
        if est is not None:
            est.discard_dense()
        if not out_existed:
            with contextlib.suppress(OSError):  # not empty: something else was written there
                out_dir.rmdir()
        raise
    return evaluation


def write_evaluation(out_dir: Path, evaluation: Evaluation) -> list[Path]:
    payloads = {"evaluation.json": (json.dumps(evaluation.summary, indent=2, allow_nan=False) + "\n").encode(),
                **evaluation.payloads}
    written = []
    if evaluation.fit is not None:
        stats, est = evaluation.fit
        try:
            written += write_outputs(out_dir / FIT_ESTIMATES_DIR, stats, est, summarize(stats, est, []))
        finally:
            est.discard_dense()
    written += [write_atomic(out_dir / name, lambda handle, data=data: handle.write(data))
                for name, data in payloads.items()]
    return written


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def one_line(summary: Mapping[str, Any]) -> str:
    parts = [f"{summary['experiment_name']}: {summary['runs']} runs"]
    if "fit_runs" in summary:
        parts[0] += f" ({summary['fit_runs']} fit, {len(summary['held_out_seeds'])} held out)"
    noise = summary.get("noise", {})
    for row in noise.get("scores", []):
        if row["source"] == SWEEP_SOURCE and row["score"] == "mem":
            parts.append(f"noise AUROC(mem) {_fmt(row['auroc'])}")
    for name, lds in summary.get("lds", {}).get("matrices", {}).items():
        ci = lds["ci95"] or [None, None]
        parts.append(f"LDS[{name}] {_fmt(lds['mean'])} [{_fmt(ci[0])}, {_fmt(ci[1])}]")
    if "mia" in summary:
        mia = summary["mia"]["attacks"]
        tpr = mia["online"]["tpr_at_fpr"].get(str(FPR_TARGETS[0]))
        parts.append(f"LiRA AUC {_fmt(mia['online']['auc'])} TPR@1%FPR {_fmt(tpr)} (baseline AUC "
                     f"{_fmt(mia['baseline']['auc'])}), Spearman(vulnerability, mem) "
                     f"{_fmt(summary['mia']['vulnerability_mem_spearman'])}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------- CLI

def parse_parts(spec: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in spec.split(",") if part.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ConfigError(f"--parts {spec!r}: choose among {','.join(PARTS)}")
    return tuple(part for part in PARTS if part in parts)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="directory holding seed=<k>/record.npz")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <sweep dir>/evaluation)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--holdout-seeds", default=None,
                        help="held-out seeds, e.g. 56..63 (default: the last 10%%, at least 2)")
    parser.add_argument("--estimates", type=Path, action="append", default=[],
                        help="estimates dir whose per-example columns get a noise AUROC (repeatable)")
    parser.add_argument("--infl", type=Path, action="append", default=[],
                        help="(n_train, n_test) influence .npy to score by LDS as well (repeatable)")
    parser.add_argument("--lira-variance", choices=("auto", "global", "per-example"), default="auto")
    parser.add_argument("--dense-cap-mb", type=float, default=EstimateConfig.dense_cap_mb,
                        help="largest influence matrix held in memory")
    parser.add_argument("--removal", type=Path, default=None,
                        help="removal experiment dir (python -m src.removal --out) or its removal.csv")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    out_dir = args.out if args.out is not None else args.sweep_dir / "evaluation"
    evaluation = evaluate(args, out_dir)
    written = write_evaluation(out_dir, evaluation)
    print(one_line(evaluation.summary))
    print(f"wrote {len(written)} files to {out_dir}")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return cli_exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
