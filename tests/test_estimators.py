"""Every registered estimator (src/estimators/registry.py) through the commands that read estimates: estimate,
compare, report and evaluate, on the digits with flipped labels. An estimator registered without a way to make
its estimates here fails this test: add it to PRODUCE."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from src.contracts.estimates import read_estimates
from src.contracts.records import read_record
from src.estimators.base import ReduceOptions
from src.estimators.registry import ESTIMATORS, get_estimator
from src.training.job import run_job
from src.training.module import SubsetClassifier
from tests.conftest import TINY, run_cli
from tests.test_estimate import small_sweep

COMMON = [*TINY, "trainer.max_epochs=2", "dataset.label_noise=0.1", "name=sweep"]


def subsample(root: Path, seeds: str = "0..15") -> Path:
    """A 16-seed subset sweep; returns the sweep directory (its estimates: src.estimate's default)."""
    assert run_cli("src.run", "-m", *COMMON, f"paths.output_dir={root}", f"seed={seeds}", cwd=root).returncode == 0
    return root / "sweep"


def turnover(root: Path) -> Path:
    """One turn-over run of the same data; returns its run directory."""
    ran = run_cli("src.run", *COMMON, "estimator=turnover", "estimator.influence_cap=50", "optim.lr=0.02",
                  f"paths.output_dir={root}", cwd=root)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return root / "sweep" / "turnover" / "seed=0"


def scored(root: Path) -> Path:
    """A subset sweep whose records hold every record score."""
    scores = "record.scores=[learn_speed,loss,margin,cumulative_loss,curvature]"
    assert run_cli("src.run", "-m", *COMMON, scores, f"paths.output_dir={root}", "seed=0..15", cwd=root).returncode == 0
    return root / "sweep"


PRODUCE: dict[str, Callable[[Path], Path]] = {"subsample": subsample, "turnover": turnover, "learn_speed": scored,
                                              "loss": scored, "margin": scored, "cumulative_loss": scored,
                                              "curvature": scored}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A subsampled sweep with its estimates, to compare and evaluate against (on seeds disjoint from the
    others', so that its comparison with another subsampled sweep is a noise floor)."""
    sweep = subsample(tmp_path_factory.mktemp("reference"), seeds="100..115")
    assert run_cli("src.estimate", str(sweep), cwd=sweep).returncode == 0
    return sweep


def test_every_estimator_has_a_producer() -> None:
    assert set(PRODUCE) == set(ESTIMATORS)


@pytest.mark.parametrize("name", ["learn_speed", "loss", "margin"])
def test_a_score_estimators_summary_says_it_has_no_pairs(name: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from src.estimate import main

    sweep = small_sweep().write(tmp_path / "sweep")
    main([str(sweep), "--estimator", name, "--gallery", "0"])
    printed = capsys.readouterr().out
    assert "None" not in printed and "no influence pairs (this estimator estimates none)" in printed
    theta_mem = read_estimates(get_estimator(name).out_dir(sweep)).summary["thresholds"]["theta_mem"]
    assert f"memorized (mem >= {theta_mem})" in printed


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimator_through_every_reader(name: str, reference: Path, tmp_path: Path) -> None:
    made = PRODUCE[name](tmp_path)
    estimated = run_cli("src.estimate", str(made), "--estimator", name, cwd=tmp_path)
    assert estimated.returncode == 0, estimated.stderr[-2000:]
    out = get_estimator(name).out_dir(made)
    est = read_estimates(out)
    assert est.estimator == name and est.summary["estimates_format"] == 1

    compared = run_cli("src.compare", str(reference), str(out), "--labels", f"reference,{name}",
                       "--out", str(tmp_path / "compare"), cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-2000:]
    [row] = json.loads((tmp_path / "compare" / "compare.json").read_text())["pairs"]
    assert (row["relation"] == "same experiment (noise floor)") == (name == "subsample")
    assert (row["jaccard_pairs"] is None) == (name not in ("subsample", "turnover"))

    sweep = made.parent.parent if name == "turnover" else made  # the run's estimates lie under its sweep
    reported = run_cli("src.report", str(sweep), "--estimates", str(out), "--out", str(tmp_path / "report"),
                       cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr[-2000:]
    assert (tmp_path / "report" / "index.html").is_file()

    evaluated = run_cli("src.evaluate", str(reference), "--parts", "noise", "--estimates", str(out),
                        "--out", str(tmp_path / "evaluation"), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    scores = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())["noise"]["scores"]
    assert {row["source"] for row in scores} == {"sweep", str(out)}


def test_cumulative_loss_is_the_hand_computed_sum(compose_cfg: Callable[..., DictConfig]) -> None:
    """On a toy sweep, the record's cumulative loss equals the per-step losses summed by hand (each example's
    loss in every step that held it, train mode, before the update)."""
    cfg = compose_cfg("subset.ratio=0.1", "trainer.max_epochs=2", "seeds=[3,4]", "name=csl",
                      "record.scores=[learn_speed,cumulative_loss]")
    by_hand: dict[int, np.ndarray] = {}
    original = SubsetClassifier.training_step

    def spy(self: SubsetClassifier, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        idx, shifts, flips = batch
        with torch.no_grad():  # the losses this step trains on, recomputed before the update
            logits = self.members(self.normalize_batch(self.x_train[idx], shifts, flips))
            losses = F.cross_entropy(logits.flatten(0, 1), self.y_train[idx].flatten(), reduction="none")
        for k, (rows, values) in enumerate(zip(idx, losses.view(idx.shape), strict=True)):
            total = by_hand.setdefault(k, np.zeros(self.n_train))
            np.add.at(total, rows.numpy(), values.double().numpy())
        return original(self, batch, batch_idx)

    SubsetClassifier.training_step = spy
    try:
        written = run_job(cfg)
    finally:
        SubsetClassifier.training_step = original
    for k, path in enumerate(written):
        record = read_record(path)
        csl = record.proxies["cumulative_loss"]
        assert np.array_equal(np.isnan(csl), ~record.subset_mask)
        np.testing.assert_allclose(csl[record.subset_mask], by_hand[k][record.subset_mask], rtol=1e-5)


@pytest.mark.parametrize("name", ["learn_speed", "loss", "margin", "cumulative_loss", "curvature"])
def test_a_record_score_estimator_is_the_in_subset_mean(tmp_path: Path, name: str) -> None:
    sweep = small_sweep(n_runs=6)
    sweep.proxies["cumulative_loss"] = sweep.proxies["loss"] * 7  # planted scores, >= 0
    sweep.proxies["curvature"] = sweep.proxies["loss"] * 3
    sweep.write(tmp_path)
    est = get_estimator(name).reduce(tmp_path, ReduceOptions())
    records = [sweep.record(k) for k in sweep.seeds]
    raw = np.array([np.where(r.subset_mask, r.proxies[name], np.nan) for r in records], dtype=np.float64)
    expected = np.nanmean(raw, axis=0)
    sign = {"learn_speed": (1.0, -1.0), "margin": (0.0, -1.0)}.get(name, (0.0, 1.0))
    np.testing.assert_allclose(est.mem, sign[0] + sign[1] * expected, atol=1e-6)
    assert est.estimator == name and est.summary["score"]["record_score"] == name
