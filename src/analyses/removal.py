"""Marginal utility of memorized examples: remove them, retrain on the rest, compare with random removals (the
command line is src/removal.py; the tables and plot: src/analyses/removal_table.py).

Reads `estimates.npz` of a sweep (written by `python -m src.estimate`) and one record of that sweep (the
estimates directory's parent, or --sweep) whose experiment hash equals the summary's: its resolved config is
the training recipe. That recipe is rerun with `subset.ratio=1.0` on all training examples minus a removal
set; `key=value` arguments override it (e.g. `trainer.max_epochs=2`, `pack=8`), but the data must keep the
estimates' fingerprint.

Selections (examples without a mem estimate, NaN, are never selected):
- `theta`: every example with mem >= theta, for each --theta;
- `top_q`: the floor(q * n_estimated + 0.5) examples of largest mem (ties by mem_soft, then index), per --top-q;
- `pairs` (--pairs): the training side of the aggregator's high-influence pairs;
- `none`: nothing removed, the full-data baseline (one model per seed).
Controls per selection, each removing as many examples as the selection:
- `removed`: the selection itself (draw 0);
- `random`: the first n estimated examples of a permutation seeded by (draw, 0);
- `class_matched`: per trained class c, the first n_c estimated examples of class c in a permutation seeded by
  (draw, 1), where n_c is the selection's count in class c.
Both controls are drawn from the examples with an estimate (the population the selection comes from), and a
draw's sets are nested across levels (a larger removal extends a smaller one of the same draw).

Every (condition, seed) is one model: seed s initialises and orders the data of every condition alike, so two
conditions differ only in what was removed. Models whose kept sets have one size are packed
(`src.experiment.resolve_pack`, the recipe's `pack`): the packed data module stacks equal-size index sets.

Influenced test examples of a selection: the test side of the high-influence pairs whose training side is in
the selection. Every control of that selection is scored on the same test examples, so `removed - random`
there is the accuracy the removal costs them beyond what removing as many random examples costs.

Outputs (in --out, default `<estimates dir>/../removal`), each written atomically after all training:
- removal.csv: one row per retrained model (COLUMNS); `level` is empty for pairs and none, `influenced_acc`
  empty where a selection influences no test example;
- removal_summary.csv: per (selection, level, control) the mean over seeds of test and influenced accuracy
  (controls averaged over their draws within a seed first), with the half-width of a 95% Student-t interval
  over seeds, and for the controls the paired per-seed difference `removed - control` with its t interval;
- removal.png: accuracy against theta and q for the three controls (error bars: the t half-widths), the
  pair removal, and the full-data baseline as a dashed line;
- removal_source.json: the estimates it was made from (`Estimates.provenance()`: directory, experiment,
  estimator, runs used, fingerprint), which src.report checks against the estimates it shows.

API: `read_removal_csv(path)` returns the rows; `summarize(rows)` the summary rows as dicts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.analyses.removal_table import RemovalRow
from src.config.checks import TRAINING_GROUPS
from src.config.compose import compose_config, plain, stored_config
from src.contracts.estimates import Estimates, check_threshold, most_memorized
from src.contracts.records import experiment_metas
from src.errors import ConfigError, MeminfError
from src.util.cli import one_line

RANDOM_STREAM, CLASS_MATCHED_STREAM = 0, 1  # second entropy word of a draw's SeedSequence
RETRAIN_NAME = "retrain"  # Lightning's root directory under --out (nothing is written there with logger=none)
NEEDS = ("mem_soft", "pair_train_idx", "pair_test_idx")


def sweep_config(estimates_dir: Path, summary: dict[str, Any], sweep: Path | None = None) -> dict[str, Any]:
    """The resolved config of a record of the estimated sweep (the summary's experiment), found under `sweep`
    (default: the estimates directory's parent), in today's config layout."""
    sweep = sweep if sweep is not None else estimates_dir.parent
    wanted = summary["experiment_hash"]
    config = stored_config(experiment_metas(sweep, wanted))
    if config is not None:
        return config
    raise MeminfError(f"no readable record of experiment {wanted} under {sweep}; pass the sweep directory "
                      "with --sweep DIR")


def retrain_config(config: dict[str, Any], overrides: Sequence[str], out_dir: Path) -> DictConfig:
    """The sweep's recipe on all the data (ratio 1.0), with `overrides`, training under `out_dir`.

    The record's groups that define the trained model (TRAINING_GROUPS) replace today's; its other settings are
    merged into today's composed defaults, so keys added since the sweep keep their defaults.
    """
    # Plain containers: the record's groups may be of another schema than today's defaults (a digits dataset
    # replacing the mnist one); struct mode then refuses overrides of keys the recipe does not have.
    cfg = plain(compose_config(["logger=none"]))
    for key, value in config.items():
        if key in TRAINING_GROUPS or not isinstance(value, dict):
            cfg[key] = value
        elif key in cfg and key != "logger":
            cfg[key] = OmegaConf.to_container(OmegaConf.merge(cfg[key], value))
    cfg = OmegaConf.create(cfg)
    OmegaConf.set_struct(cfg, True)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"cannot apply overrides {list(overrides)}: {one_line(str(err))}; write them as key=value "
                          "with keys of the sweep's config") from err
    cfg.subset.ratio = 1.0
    cfg.paths.output_dir = str(out_dir)
    cfg.name = RETRAIN_NAME
    cfg.seeds = None
    return cfg


@dataclass(frozen=True)
class Selection:
    kind: str  # one of SELECTIONS
    level: float | None  # theta or q; None for pairs and none
    removed: np.ndarray  # sorted int64 training indices


def theta_selection(mem: np.ndarray, theta: float) -> Selection:
    return Selection("theta", theta, np.flatnonzero(np.nan_to_num(mem, nan=-np.inf) >= theta))


def top_q_selection(mem: np.ndarray, mem_soft: np.ndarray, q: float) -> Selection:
    count = math.floor(q * int(np.sum(~np.isnan(mem))) + 0.5)
    return Selection("top_q", q, np.sort(most_memorized(mem, mem_soft, count)))


def pair_selection(mem: np.ndarray, pair_train_idx: np.ndarray) -> Selection:
    chosen = np.unique(pair_train_idx)
    return Selection("pairs", None, chosen[~np.isnan(mem[chosen])])


def draw_permutation(n: int, draw: int, stream: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([draw, stream])).permutation(n)


def random_control(count: int, estimated: np.ndarray, draw: int) -> np.ndarray:
    """`count` estimated examples: the first ones of draw `draw`'s permutation."""
    order = draw_permutation(len(estimated), draw, RANDOM_STREAM)
    return np.sort(order[estimated[order]][:count])


def class_matched_control(removed: np.ndarray, labels: np.ndarray, estimated: np.ndarray, draw: int) -> np.ndarray:
    """Per class, as many estimated examples as `removed` holds of that class, first in draw `draw`'s order."""
    order = draw_permutation(len(labels), draw, CLASS_MATCHED_STREAM)
    order = order[estimated[order]]
    classes, counts = np.unique(labels[removed], return_counts=True)
    chosen = [order[labels[order] == label][:count] for label, count in zip(classes, counts, strict=True)]
    return np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *chosen]))


def influenced_tests(removed: np.ndarray, pair_train_idx: np.ndarray, pair_test_idx: np.ndarray) -> np.ndarray:
    """Test side (unique, sorted) of the pairs whose training side is in `removed`."""
    return np.unique(pair_test_idx[np.isin(pair_train_idx, removed)])


@dataclass(frozen=True)
class Condition:
    """One removal set; `influenced` is its selection's influenced test set."""

    selection: str
    level: float | None
    control: str
    draw: int
    removed: np.ndarray
    influenced: np.ndarray


def conditions(selections: Iterable[Selection], est: Estimates, draws: int) -> list[Condition]:
    """The baseline, then per selection: itself and `draws` random and class-matched controls."""
    nothing = np.zeros(0, dtype=np.int64)
    found = [Condition("none", None, "removed", 0, nothing, nothing)]
    estimated, labels = ~np.isnan(est.mem), est.arrays["train_label"]
    for sel in selections:
        influenced = influenced_tests(sel.removed, est.arrays["pair_train_idx"], est.arrays["pair_test_idx"])
        found.append(Condition(sel.kind, sel.level, "removed", 0, sel.removed, influenced))
        for draw in range(draws):
            found.append(Condition(sel.kind, sel.level, "random", draw,
                                   random_control(len(sel.removed), estimated, draw), influenced))
            found.append(Condition(sel.kind, sel.level, "class_matched", draw,
                                   class_matched_control(sel.removed, labels, estimated, draw),
                                   influenced))
    return found


def plan_jobs(items: Sequence[tuple[Condition, int]], n_train: int,
              cfg: DictConfig) -> list[list[tuple[Condition, int]]]:
    """(condition, seed) items grouped by kept-set size, each group cut into packs (the recipe's pack, model,
    strategy and precision: `src.sweep.plan.config_pack`)."""
    from src.sweep.plan import config_pack

    by_size: dict[int, list[tuple[Condition, int]]] = defaultdict(list)
    for item in items:
        by_size[n_train - len(item[0].removed)].append(item)
    jobs = []
    for size in sorted(by_size):
        if size < 1:
            raise ConfigError("a removal leaves no training example; use a larger --theta or a smaller --top-q")
        group = by_size[size]
        pack, _ = config_pack(cfg, len(group))
        jobs += [group[start:start + pack] for start in range(0, len(group), pack)]
    return jobs


def kept_masks(job: Sequence[tuple[Condition, int]], n_train: int) -> np.ndarray:
    masks = np.ones((len(job), n_train), dtype=bool)
    for mask, (condition, _) in zip(masks, job, strict=True):
        mask[condition.removed] = False
    return masks


def score(condition: Condition, seed: int, test_pred: np.ndarray, test_label: np.ndarray) -> RemovalRow:
    correct = test_pred == test_label
    influenced = condition.influenced
    return RemovalRow(condition.selection, condition.level, condition.control, condition.draw, seed,
                      len(condition.removed), float(correct.mean()),
                      float(correct[influenced].mean()) if influenced.size else None, int(influenced.size))


def retrain(cfg: DictConfig, dataset: Any, jobs: Sequence[Sequence[tuple[Condition, int]]]) -> list[RemovalRow]:
    """Train every job (one packed fit each) and score its members on the test set."""
    from src.training.job import fit

    rows = []
    n_train = len(dataset.y_train)
    for number, job in enumerate(jobs, 1):
        seeds = [seed for _, seed in job]
        module = fit(cfg, dataset, seeds, kept_masks(job, n_train))
        test_pred = module.evaluate("test", int(cfg.dataset.eval_batch_size)).pred
        alive = module.alive.cpu().numpy()
        for k, (condition, seed) in enumerate(job):
            if alive[k]:
                rows.append(score(condition, seed, test_pred[k], dataset.y_test))
            else:
                print(f"diverged, left out: {condition.selection} {condition.level} {condition.control} "
                      f"draw {condition.draw} seed {seed}")
        print(f"job {number}/{len(jobs)}: {len(job)} models on {n_train - len(job[0][0].removed)} examples",
              flush=True)
    return rows


def selections(est: Estimates, thetas: Sequence[float], top_qs: Sequence[float], pairs: bool) -> list[Selection]:
    if not (thetas or top_qs or pairs):
        raise ConfigError("choose what to remove: --theta 0.25, --top-q 0.05 and/or --pairs")
    for theta in thetas:
        check_threshold("--theta", theta)
    if any(not 0 < q <= 1 for q in top_qs):
        raise ConfigError(f"--top-q {list(top_qs)}: each fraction must lie in (0, 1]")
    chosen = [theta_selection(est.mem, theta) for theta in thetas]
    chosen += [top_q_selection(est.mem, est.arrays["mem_soft"], q) for q in top_qs]
    if pairs:
        chosen.append(pair_selection(est.mem, est.arrays["pair_train_idx"]))
    for sel in chosen:
        if not sel.removed.size:
            print(f"{sel.kind} {sel.level if sel.level is not None else ''}: selects no example, left out")
    return [sel for sel in chosen if sel.removed.size]
