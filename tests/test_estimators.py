"""Every registered estimator (src/estimators/registry.py) through the commands that read estimates: estimate,
compare, report and evaluate, on the digits with flipped labels. An estimator registered without a way to make
its estimates here fails this test: add it to PRODUCE."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from src.contracts.estimates import read_estimates
from src.estimators.registry import ESTIMATORS, get_estimator
from tests.conftest import TINY, run_cli

COMMON = [*TINY, "trainer.max_epochs=2", "dataset.label_noise=0.1", "name=sweep"]


def subsample(root: Path) -> Path:
    """A 16-seed subset sweep; returns the sweep directory (its estimates: src.estimate's default)."""
    assert run_cli("src.run", "-m", *COMMON, f"paths.output_dir={root}", "seed=0..15", cwd=root).returncode == 0
    return root / "sweep"


def turnover(root: Path) -> Path:
    """One turn-over run of the same data; returns its run directory."""
    ran = run_cli("src.run", *COMMON, "estimator=turnover", "estimator.influence_cap=50", "optim.lr=0.02",
                  f"paths.output_dir={root}", cwd=root)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return root / "sweep" / "turnover" / "seed=0"


PRODUCE: dict[str, Callable[[Path], Path]] = {"subsample": subsample, "turnover": turnover}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A subsampled sweep with its estimates, to compare and evaluate against."""
    sweep = subsample(tmp_path_factory.mktemp("reference"))
    assert run_cli("src.estimate", str(sweep), cwd=sweep).returncode == 0
    return sweep


def test_every_estimator_has_a_producer() -> None:
    assert set(PRODUCE) == set(ESTIMATORS)


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

    reported = run_cli("src.report", str(reference), "--estimates", str(out), "--out", str(tmp_path / "report"),
                       cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr[-2000:]
    assert (tmp_path / "report" / "index.html").is_file()

    evaluated = run_cli("src.evaluate", str(reference), "--parts", "noise", "--estimates", str(out),
                        "--out", str(tmp_path / "evaluation"), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    scores = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())["noise"]["scores"]
    assert {row["source"] for row in scores} == {"sweep", str(out)}
