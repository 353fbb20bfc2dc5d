"""Turn-over dropout as an estimator: its own job (one run on all the data, src/estimators/turnover/job.py)
writes the run's estimates; the reduce reads a run back through the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.contracts.estimates import ESTIMATES_FILE, Estimates, read_estimates
from src.errors import ConfigError
from src.estimators.base import Estimator, ReduceOptions
from src.estimators.turnover.summary import ESTIMATOR

RUNS_DIR = "turnover"  # <sweep dir>/turnover/seed=<k>/: one run's estimates (conf/estimator/turnover.yaml)


class TurnoverEstimator(Estimator):
    name = ESTIMATOR
    description = "turn-over dropout: one run, every example through its own half of the hidden units"
    trains = "own"

    def check_config(self, cfg: Any) -> None:
        from src.estimators.turnover.job import check_turnover_config

        check_turnover_config(cfg)

    def run_job(self, cfg: Any) -> list[Path]:
        from src.estimators.turnover.job import run_turnover_job

        return run_turnover_job(cfg)

    def runs(self, sweep_dir: Path) -> list[Path]:
        """The run directories of a sweep (or `sweep_dir` itself when it is one)."""
        if (Path(sweep_dir) / ESTIMATES_FILE).is_file():
            return [Path(sweep_dir)]
        return sorted(path.parent for path in (Path(sweep_dir) / RUNS_DIR).glob(f"seed=*/{ESTIMATES_FILE}"))

    def out_dir(self, sweep_dir: Path) -> Path:
        runs = self.runs(sweep_dir)
        if len(runs) != 1:
            found = ", ".join(map(str, runs)) or f"none under {Path(sweep_dir) / RUNS_DIR}"
            raise ConfigError(f"estimator=turnover reduces one run; pass its directory (found: {found})")
        return runs[0]

    def reduce(self, sweep_dir: Path, options: ReduceOptions) -> Estimates:
        est = read_estimates(self.out_dir(sweep_dir))
        if est.estimator != self.name:
            raise ConfigError(f"{est.path} holds estimates of estimator {est.estimator}, not {self.name}")
        return Estimates(est.summary, est.arrays)
