"""meminf's Hydra plugins (src/hydra_plugins/meminf_sweep/): the sweeper hands a SLURM launcher the whole sweep,
the launcher splits it into arrays of at most MaxArraySize tasks submitted before any wait, respects
max_submit_jobs, returns at once with submit_only, and ends a wait on a task lost from the queue; and Hydra finds
the plugins from a fresh install, run from outside the repository. The same launcher on a real cluster:
tests/test_slurm.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from hydra_plugins.meminf_sweep import slurm
from tests.conftest import CONF, ROOT, TINY

# Hydra's plugin scan executes every hydra_plugins module again in place when it composes a config, so the
# classes are looked up on the module (slurm.X) at the time of use, never imported by name.


def fake_command(bin_dir: Path, name: str, output: str, code: int = 0) -> None:
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_the_preset_is_meminfs_launcher_and_the_sweeper_meminfs() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True).hydra
    assert hydra.launcher._target_ == "hydra_plugins.meminf_sweep.slurm.MeminfSlurmLauncher"
    assert hydra.sweeper._target_ == "hydra_plugins.meminf_sweep.sweeper.MeminfSweeper"
    assert hydra.launcher.submit_only is False and hydra.launcher.max_array_size is None


def test_max_array_size_comes_from_scontrol(fake_bin: Path) -> None:
    fake_command(fake_bin, "scontrol", "MaxArraySize            = 8\nMaxJobCount             = 10000")
    assert slurm.cluster_max_array_size() == 8


def test_without_scontrol_the_array_size_is_slurms_default(fake_bin: Path) -> None:
    fake_command(fake_bin, "scontrol", "", code=1)
    assert slurm.cluster_max_array_size() == slurm.SLURM_DEFAULT_MAX_ARRAY_SIZE


class FakeJob:
    def __init__(self, folder: Path, job_id: str) -> None:
        self.job_id = job_id
        self.paths = SimpleNamespace(result_pickle=folder / f"{job_id}_result.pkl")

    def finish(self) -> None:
        self.paths.result_pickle.write_bytes(b"")

    def results(self) -> list[str]:
        return [f"result of {self.job_id}"]


class FakeExecutor:
    """map_array as submitit's: one array id per call, task ids <array>_<k>; records the size of every array."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.arrays, self.jobs = folder, [], []

    def map_array(self, function: Any, *columns: Any) -> list[FakeJob]:
        array = str(100 + len(self.arrays))
        jobs = [FakeJob(self.folder, f"{array}_{k}") for k in range(len(columns[0]))]
        self.arrays.append(len(jobs))
        self.jobs.extend(jobs)
        return jobs


def launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: Any) -> tuple[Any, FakeExecutor]:
    instance = slurm.MeminfSlurmLauncher(submitit_folder=str(tmp_path / "submitit"), max_num_timeout=0, **options)
    instance.config = SimpleNamespace(hydra=SimpleNamespace(sweep=SimpleNamespace(dir=str(tmp_path / "sweep"))))
    executor = FakeExecutor(tmp_path)
    monkeypatch.setattr(instance, "executor", lambda: executor)
    monkeypatch.setattr(slurm.Singleton, "get_state", lambda: {})
    monkeypatch.setattr(slurm, "POLL_S", 0.01)
    return instance, executor


def jobs_of(n: int) -> list[list[str]]:
    return [[f"seeds=[{2 * k},{2 * k + 1}]"] for k in range(n)]


def test_a_sweep_goes_out_as_arrays_of_max_array_size_before_any_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """125 jobs (2,000 seeds at pack=16) with MaxArraySize 8: 16 arrays, all submitted before the first wait."""
    instance, executor = launcher(tmp_path, monkeypatch, max_array_size=8)
    waited_after: list[int] = []

    def wait_for(jobs: list[FakeJob]) -> None:
        waited_after.append(len(executor.arrays))
        for job in jobs:
            job.finish()

    monkeypatch.setattr(instance, "wait_for", wait_for)
    returns = instance.launch(jobs_of(125), initial_job_idx=0)
    assert executor.arrays == [8] * 15 + [5] and waited_after == [16]
    assert len(returns) == 125 and returns[0] == "result of 100_0"
    assert "submitted 125 of 125 job(s) as 16 array(s) of up to 8 task(s)" in capsys.readouterr().out


def test_submit_only_returns_after_submitting_and_says_how_to_follow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    instance, executor = launcher(tmp_path, monkeypatch, max_array_size=8, submit_only=True)
    monkeypatch.setattr(instance, "wait_for", lambda jobs: pytest.fail("submit_only waited"))
    assert instance.launch(jobs_of(20), initial_job_idx=0) == []
    out = capsys.readouterr().out
    assert executor.arrays == [8, 8, 4]
    assert "100, 101, 102" in out and "squeue -j 100,101,102" in out and "--dry-run" in out


def test_max_submit_jobs_holds_an_array_back_until_earlier_tasks_finish(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    instance, executor = launcher(tmp_path, monkeypatch, max_array_size=4, max_submit_jobs=6)
    checks = iter(range(1000))

    def sleep(_: float) -> None:  # the cluster: the first array finishes while the launcher waits for room
        if next(checks) == 3:
            for job in executor.jobs[:4]:
                job.finish()

    monkeypatch.setattr(slurm.time, "sleep", sleep)
    monkeypatch.setattr(instance, "wait_for", lambda jobs: [job.finish() for job in jobs])
    instance.launch(jobs_of(10), initial_job_idx=0)
    assert executor.arrays == [4, 4, 2]


def test_submit_only_under_max_submit_jobs_submits_what_fits_and_says_to_relaunch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    instance, executor = launcher(tmp_path, monkeypatch, max_array_size=4, max_submit_jobs=6, submit_only=True)
    instance.launch(jobs_of(10), initial_job_idx=0)
    assert executor.arrays == [4]
    assert "the other 6 would exceed hydra.launcher.max_submit_jobs=6" in capsys.readouterr().out


def test_a_task_that_leaves_the_queue_without_a_result_ends_the_wait_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_bin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """squeue lists task 100_1 only; 100_0 finishes, 100_2 is gone without a result: lost after lost_after_s."""
    fake_command(fake_bin, "squeue", "100_1")
    instance, _ = launcher(tmp_path, monkeypatch, max_array_size=8, lost_after_s=0.05)
    real_submit = instance.submit

    def submit(arrays: list[Any]) -> tuple[list[FakeJob], list[str]]:
        jobs, ids = real_submit(arrays)
        jobs[0].finish()
        return jobs, ids

    monkeypatch.setattr(instance, "submit", submit)
    with pytest.raises(SystemExit) as exited:
        instance.launch(jobs_of(3), initial_job_idx=0)
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 task(s) left the queue without a result (100_2;")


def test_the_wait_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_bin: Path) -> None:
    fake_command(fake_bin, "squeue", "100_0")
    instance, _ = launcher(tmp_path, monkeypatch, wait_hours=1e-6)
    with pytest.raises(slurm.SweepFailed, match=r"unfinished after hydra\.launcher\.wait_hours"):
        instance.wait_for([FakeJob(tmp_path, "100_0")])


def test_an_array_larger_than_max_submit_jobs_is_refused_before_submitting(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    instance, executor = launcher(tmp_path, monkeypatch, max_array_size=8, max_submit_jobs=4)
    with pytest.raises(SystemExit):
        instance.launch(jobs_of(8), initial_job_idx=0)
    assert executor.arrays == []


@pytest.fixture
def fresh_install(tmp_path: Path) -> Iterator[Path]:
    """A new virtualenv with meminf installed editable into it (`pip install -e`, as `make setup` does); its
    dependencies, pip and setuptools come from the project's .venv through a .pth file (no pip of its own, whose
    older setuptools would come first), so nothing is downloaded."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "project_venv.pth").write_text("\n".join(sorted(p for p in sys.path if p.endswith("site-packages"))))
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                                "--no-build-isolation", "-e", str(ROOT)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    yield venv / "bin" / "python"


@pytest.mark.slow
def test_hydra_finds_the_plugins_of_a_fresh_install_from_outside_the_repository(fresh_install: Path,
                                                                                 tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    ran = subprocess.run([str(fresh_install), "-m", "src.run", "-m", *TINY, "trainer.max_epochs=1", "seed=0..1",
                          f"paths.output_dir={outside / 'out'}", "name=fresh"], cwd=outside, env=env,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    multirun = (outside / "out" / "fresh" / "multirun.yaml").read_text()
    assert "_target_: hydra_plugins.meminf_sweep.sweeper.MeminfSweeper" in multirun
    assert sorted(path.parent.name for path in (outside / "out" / "fresh").rglob("record.npz")) == ["seed=0", "seed=1"]
    shown = subprocess.run([str(fresh_install), "-m", "src.run", "hydra/launcher=slurm", "--cfg", "hydra",
                            "--package", "hydra.launcher"], cwd=outside, env=env, capture_output=True, text=True,
                           timeout=600)
    assert "_target_: hydra_plugins.meminf_sweep.slurm.MeminfSlurmLauncher" in shown.stdout, shown.stderr[-2000:]
