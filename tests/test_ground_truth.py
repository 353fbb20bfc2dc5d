"""The whole pipeline against planted truth: real training runs, then the aggregator.

- longtail: Feldman's mixture. Examples that are the only member of their subpopulation in the training
  sample must be memorized more than examples of frequent subpopulations, and a test point of such a
  subpopulation must have that single training example as its top influencer.
- label noise: flipped training labels must rank above clean ones by memorization.
"""

from collections.abc import Callable

import numpy as np
import pytest
from omegaconf import DictConfig

from src.config.paths import sweep_dir
from src.estimators.subsample.influence import estimate
from src.estimators.subsample.load import load_sweep
from src.estimators.subsample.memorization import EstimateConfig
from src.training.job import run_job

pytestmark = pytest.mark.slow


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count one half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def sweep(compose_cfg: Callable[..., DictConfig], seeds: int, *overrides: str):
    for seed in range(seeds):
        run_job(compose_cfg(f"seed={seed}", *overrides))
    stats, problems = load_sweep(sweep_dir(compose_cfg(*overrides)))
    assert not problems and stats.n_runs == seeds
    return stats, estimate(stats, EstimateConfig(null_perms=1))


LONGTAIL = ["dataset=longtail", "dataset.n_subpops=400", "dataset.n_train=1200", "dataset.n_test=600",
            "dataset.dim=64", "model.kwargs.hidden=[256]", "optim=adamw", "optim.lr=0.003", "trainer.max_epochs=20",
            "name=lt"]


def test_longtail_singletons_are_memorized_and_support_their_test_points(
        compose_cfg: Callable[..., DictConfig]) -> None:
    stats, est = sweep(compose_cfg, 48, *LONGTAIL)
    assert np.mean(stats.train_in_acc) > 0.99
    count = stats.extras["train_subpop_count"]
    singleton, frequent = count == 1, count >= 10
    has = ~np.isnan(est.mem)
    score = auroc(est.mem[has & (singleton | frequent)], singleton[has & (singleton | frequent)])
    print(f"longtail: {singleton.sum()} singletons, AUROC(mem: singleton vs frequent) = {score:.3f}")
    assert score > 0.95
    test_subpop, train_subpop = stats.extras["test_subpop"], stats.extras["train_subpop"]
    singleton_tests = np.flatnonzero(stats.extras["test_subpop_count"] == 1)
    own_singleton = np.array([np.flatnonzero(train_subpop == test_subpop[j])[0] for j in singleton_tests])
    top_is_own = est.topk_idx[singleton_tests, 0] == own_singleton
    print(f"longtail: top influencer is the singleton for {top_is_own.mean():.3f} of {len(singleton_tests)}")
    assert len(singleton_tests) >= 10 and top_is_own.mean() > 0.8


def test_flipped_labels_rank_above_clean_ones(compose_cfg: Callable[..., DictConfig]) -> None:
    stats, est = sweep(compose_cfg, 24, "dataset.label_noise=0.1", "model.kwargs.hidden=[256]", "optim=adamw",
                       "optim.lr=0.003", "trainer.max_epochs=40", "name=noisy")
    assert np.mean(stats.train_in_acc) > 0.98
    flipped = np.zeros(stats.n_train, dtype=bool)
    flipped[stats.flipped_idx] = True
    has = ~np.isnan(est.mem)
    score = auroc(est.mem[has], flipped[has])
    print(f"label noise: {flipped.sum()} flipped, AUROC(mem) = {score:.3f}, mean mem flipped "
          f"{np.nanmean(est.mem[flipped]):.2f} vs clean {np.nanmean(est.mem[~flipped]):.2f}")
    assert score > 0.95
