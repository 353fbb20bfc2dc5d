"""Issue 22 §3: a training job's wandb run carries its results, read back from the offline `.wandb` file: the
job's seeds in the config (no `seed`), the members' final metrics as a table and as `final/<metric>` in the
summary, each member's epoch curves in a pack of several, the epoch as their x-axis, an id that a relaunch of
the same job reuses, and no wandb lines on the console of a `-m` sweep. Tiny digits MLP, 1 epoch a job."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import DictConfig

from src.contracts.records import read_meta
from src.training.job import run_job
from tests.conftest import ROOT, TINY, cli_env, run_cli
from tests.wandb_offline import OfflineRun, offline_runs, record_key

MEMBER_COLUMNS = ["seed", "test_acc", "train_in_acc", "train_out_acc"]
FINAL = ("test_acc", "train_in_acc", "train_out_acc")
WANDB_RUN_ID = re.compile(r"[0-9a-f]{16}")


def tiny(tmp_path: Path, *overrides: str) -> DictConfig:
    from src.config.compose import compose_config

    return compose_config([*TINY, "trainer.max_epochs=1", "logger=wandb", "name=tracked",
                           f"paths.output_dir={tmp_path / 'out'}", f"paths.data_dir={tmp_path / 'data'}", *overrides])


def job_run(tmp_path: Path, seeds: list[int]) -> tuple[OfflineRun, Path, list[dict[str, Any]]]:
    """The job's one offline run, its run directory and its members' record metas."""
    written = run_job(tiny(tmp_path, f"seeds=[{','.join(map(str, seeds))}]"))
    job_dir = written[0].parent if len(seeds) == 1 else written[0].parent.parent / f"pack={seeds[0]}-{seeds[-1]}"
    [run] = offline_runs(job_dir)
    [run_dir] = (job_dir / "wandb").glob("offline-run-*")
    return run, run_dir, [read_meta(path) for path in written]


@pytest.mark.parametrize("seeds", [[0], [0, 1]])
def test_job_run_holds_seeds_and_final_metrics(no_network: list[Any], tmp_path: Path, seeds: list[int]) -> None:
    run, run_dir, metas = job_run(tmp_path, seeds)
    config = {record_key(item): json.loads(item.value_json) for item in run.run.config.update}
    assert config["seeds"] == seeds and "seed" not in config and config["pack"] == len(seeds)
    assert config["dataset"]["name"] == "digits" and config["model"]["name"] == "mlp"
    for metric in FINAL:
        assert run.summary[f"final/{metric}"] == pytest.approx(np.mean([meta[metric] for meta in metas]), abs=1e-12)
    assert run.summary["final/members"]["nrows"] == len(seeds) and "final/members" in run.history_keys
    [table_file] = (run_dir / "files" / "media" / "table" / "final").glob("members_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == MEMBER_COLUMNS
    assert [row[0] for row in table["data"]] == seeds
    assert table["data"] == [[meta[column] for column in MEMBER_COLUMNS] for meta in metas]


def test_pack_logs_each_members_epoch_curves_over_the_epoch(no_network: list[Any], tmp_path: Path) -> None:
    run, _, _ = job_run(tmp_path, [3, 5])
    members = {f"train/{name}/seed={seed}" for seed in (3, 5) for name in ("loss", "acc")}
    assert {"epoch", "train/loss", "train/acc"} | members <= run.history_keys
    # The members' means are the pack's (on-device sums of the same batches).
    assert np.mean([run.summary[f"train/acc/seed={seed}"] for seed in (3, 5)]) == pytest.approx(
        run.summary["train/acc"], abs=1e-6)
    steps = {record.metric.name: record.metric.step_metric for record in run.records
             if record.WhichOneof("record_type") == "metric"}
    assert all(steps[name] == "epoch" for name in {"train/loss", "train/acc"} | members), steps


def test_single_seed_job_logs_no_member_curves(no_network: list[Any], tmp_path: Path) -> None:
    run, _, _ = job_run(tmp_path, [2])
    assert not any("/seed=" in key for key in run.history_keys)
    assert {"train/loss", "train/acc"} <= run.history_keys


def test_the_same_job_launched_again_continues_its_run(no_network: list[Any], tmp_path: Path) -> None:
    """A relaunch or a SLURM requeue of a job (here: retrained with overwrite=true) logs to the same run id,
    resumed; another job's run is another."""
    for _ in range(2):
        run_job(tiny(tmp_path, "seeds=[0,1]", "overwrite=true"))
    run_job(tiny(tmp_path, "seeds=[2,3]"))
    sweep = tmp_path / "out" / "tracked"
    first, again = offline_runs(sweep / "pack=0-1")
    [other] = offline_runs(sweep / "pack=2-3")
    assert first.run.run_id == again.run.run_id != other.run.run_id
    assert WANDB_RUN_ID.fullmatch(first.run.run_id) and WANDB_RUN_ID.fullmatch(other.run.run_id)


def test_a_sweep_job_prints_no_wandb_lines(no_network: list[Any], tmp_path: Path) -> None:
    result = run_cli("src.run", "-m", *TINY, "trainer.max_epochs=1", "logger=wandb", f"paths.output_dir={tmp_path}",
                     "name=quiet", "seed=0..1", "pack=2", cwd=ROOT, WANDB_SILENT="false")
    assert result.returncode == 0, result.stderr
    printed = (result.stdout + result.stderr).splitlines()
    assert not [line for line in printed if line.startswith("wandb:")], printed
    assert len(offline_runs(tmp_path / "quiet" / "pack=0-1")) == 1


@pytest.mark.slow
def test_ddp_job_logs_one_run_from_rank_zero(no_network: list[Any], tmp_path: Path) -> None:
    """torchrun's two CPU ranks train each job: only rank 0 starts the job's run."""
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29563", "-m",
         "src.run", "-m", *TINY, "trainer.max_epochs=1", "logger=wandb", "pack=1", "name=ddp", "seed=0..1",
         "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
         f"paths.output_dir={tmp_path}"], cwd=ROOT, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True,
        text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for seed in (0, 1):
        [run] = offline_runs(tmp_path / "ddp" / f"seed={seed}")
        seeds = [json.loads(item.value_json) for item in run.run.config.update if record_key(item) == "seeds"]
        assert seeds == [[seed]]
