"""Following a sweep: the rate and its basis from the latest jobs, the job files (in flight, failed, died), the
progress lines and closing summary of a -m sweep (per-seed lines in run.log only), and `python -m src.status`
from another process, on a finished sweep and on one that a job's error stopped."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from src.contracts.records import find_records, read_meta, record_path
from src.sweep.jobstate import FAILED, JOBS_DIR, RUNNING, JobMarker, Launch, job_marked, read_markers, write_launch
from src.sweep.status import progress_line, recent_rate, status_rows, sweep_status
from tests.conftest import TINY, run_cli

STARTED = 1_000.0  # a launch's start, in the synthetic sweeps' own clock


def test_recent_rate_takes_the_latest_jobs_and_states_its_basis() -> None:
    # Three jobs of 2 models end at 110, 130 and 140 s; a record from before the launch is not counted.
    finished = [50.0, 110.0, 110.0, 130.0, 130.0, 140.0, 140.0]
    latest_two = recent_rate(finished, since=100.0, pack=2, jobs=2)
    assert latest_two.seconds_per_model == pytest.approx((140 - 110) / 4)
    assert latest_two.basis == "from the last 2 jobs (4 models) of this launch"
    every = recent_rate(finished, since=100.0, pack=2, jobs=8)
    assert every.seconds_per_model == pytest.approx((140 - 100) / 6)
    assert every.basis == "from all 3 jobs (6 models) of this launch"
    assert recent_rate([50.0], since=100.0, pack=2) is None
    # A launch that ended at 135 s: the records modified after it (copied, touched) are not its pace.
    ended = recent_rate(finished, since=100.0, pack=2, until=135.0)
    assert ended.seconds_per_model == pytest.approx((130 - 100) / 4)


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_marker(sweep: Path, marker: JobMarker) -> None:
    folder = sweep / JOBS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"pack={marker.seeds[0]}-{marker.seeds[-1]}.json").write_text(json.dumps(asdict(marker)))


def synthetic_sweep(sweep: Path) -> None:
    """A launch of seeds 0..9 at pack 2 (seed 0 done before it): seeds 1..3 trained at 1010 and 1030 s, 4-5 in
    flight in this process, 6-7 in a process that died, 8-9 failed with an error."""
    write_launch(sweep, Launch(STARTED, list(range(10)), list(range(1, 10)), 2, "cpu", "BasicLauncher"))
    for seed, written in ((0, 500.0), (1, 1010.0), (2, 1030.0), (3, 1030.0)):
        path = record_path(sweep, seed)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (written, written))
    host = socket.gethostname()
    write_marker(sweep, JobMarker(RUNNING, [4, 5], 1040.0, host, os.getpid()))
    write_marker(sweep, JobMarker(RUNNING, [6, 7], 1040.0, host, dead_pid()))
    write_marker(sweep, JobMarker(FAILED, [8, 9], 1040.0, host, os.getpid(), error="OSError: disk full"))


def test_status_tells_trained_in_flight_died_failed_and_time_left(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    synthetic_sweep(sweep)
    status = sweep_status(sweep, now=1050.0)
    rows = dict(status_rows(status))
    assert rows["trained"] == "3/9 models (1/5 jobs)"  # jobs [1,2] [3,4] [5,6] [7,8] [9]: the first is done
    assert rows["in flight"] == f"1 job(s), 2 seed(s): pack=4-5: running 10.0 s (pid {os.getpid()} on " \
                                f"{socket.gethostname()})"
    assert "pack=6-7: died (pid" in rows["failed"] and "pack=8-9: OSError: disk full" in rows["failed"]
    assert rows["failed"].startswith("2 job(s), 4 seed(s): ")
    # 30 s for the 3 models of this launch (its start at 1000 s to the last record at 1030 s), 6 seeds left
    assert rows["time left"] == "about 60 s (1.0 min) (10.00 s/model from all 2 jobs (3 models) of this launch)"
    assert rows["state"] == "running"
    assert progress_line(status) == ("progress sweep: 3/9 models (1/5 jobs), 2 in flight, 4 failed; 10.00 s/model "
                                     "from all 2 jobs (3 models) of this launch; about 60 s (1.0 min) left")


def test_a_sweep_with_nothing_in_flight_and_seeds_left_is_stopped(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    synthetic_sweep(sweep)
    (sweep / JOBS_DIR / "pack=4-5.json").unlink()
    rows = dict(status_rows(sweep_status(sweep, now=1050.0)))
    assert rows["in flight"] == "none"
    assert rows["time left"] == "unknown: nothing in flight (6 seed(s) left untrained)"
    assert rows["state"].startswith("stopped: 6 seed(s) without a record and nothing in flight; relaunch")


def test_a_job_file_lives_while_its_job_runs_and_says_why_it_failed(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    with job_marked(sweep, 0, [2, 3], keep_failure=True):
        [marker] = read_markers(sweep)
        assert (marker.state, marker.seeds, marker.pid) == (RUNNING, [2, 3], os.getpid())
    assert read_markers(sweep) == []
    with pytest.raises(OSError), job_marked(sweep, 0, [2, 3], keep_failure=True):
        raise OSError("disk full")
    [marker] = read_markers(sweep)
    assert (marker.state, marker.error) == (FAILED, "OSError: disk full")
    with pytest.raises(OSError), job_marked(sweep, 5, None, keep_failure=False):
        raise OSError("disk full")
    assert [marker.seeds for marker in read_markers(sweep)] == [[2, 3]]  # a single run leaves no failure behind
    alone = tmp_path / "alone"
    with job_marked(alone, 0, None, keep_failure=False):
        assert (alone / JOBS_DIR).is_dir()
    assert not (alone / JOBS_DIR).exists()  # a single run leaves no empty jobs/ behind


def sweep_args(out: Path, *extra: str) -> list[str]:
    return ["src.run", "-m", *TINY, "trainer.max_epochs=1", f"paths.output_dir={out}", "name=followed", "pack=2",
            *extra]


def test_a_sweep_prints_progress_lines_and_a_closing_summary_not_per_seed_lines(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(*sweep_args(out, "seed=0..5"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    assert not re.search(r"seed=\d+ in-subset acc", console), "a per-seed line reached the console"
    assert not re.search(r"#\d+ : ", console), "a launcher's per-job line reached the console"
    progress = [line for line in console.splitlines() if line.startswith("progress followed: ")]
    assert [line.split(": ")[1].split(",")[0] for line in progress] == ["2/6 models (1/3 jobs)",
                                                                         "4/6 models (2/3 jobs)",
                                                                         "6/6 models (3/3 jobs)"]
    assert all(re.search(r" s/model from (its first job|all \d jobs) \(\d models\) of this launch", line)
               for line in progress), progress
    sweep = out / "followed"
    metas = [read_meta(path) for path in find_records(sweep)]
    assert f"sweep {sweep}: trained 6 of 6 model(s) in " in console
    assert "0 failed or not trained, 0 skipped (done before)" in console
    assert (f"mean in-subset train acc {np.mean([meta['train_in_acc'] for meta in metas]):.4f}, mean test acc "
            f"{np.mean([meta['test_acc'] for meta in metas]):.4f} over the 6 model(s) trained") in console
    assert len(re.findall(r"seed=\d+ in-subset acc", (sweep / "pack=0-1" / "run.log").read_text())) == 2

    status = run_cli("src.status", str(sweep), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    rows = status_table(status.stdout)
    assert rows["trained"] == "6/6 models (3/3 jobs)"
    assert (rows["in flight"], rows["failed"], rows["time left"]) == ("none", "none", "none")
    assert rows["state"].startswith("finished ")
    assert not (sweep / JOBS_DIR).exists()  # every job ended: the sweep removed the empty folder


def status_table(printed: str) -> dict[str, str]:
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in printed.splitlines())


def test_a_failed_job_is_in_the_summary_and_the_status(tmp_path: Path) -> None:
    """Seed 3's record path is a directory that holds a file: its job writes seed 2's record, fails to rename seed
    3's onto it and stops the sweep."""
    out = tmp_path / "out"
    (out / "followed" / "seed=3" / "record.npz").mkdir(parents=True)
    (out / "followed" / "seed=3" / "record.npz" / "in the way").write_text("")
    result = run_cli(*sweep_args(out, "seed=0..5"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    sweep = out / "followed"
    assert f"sweep {sweep}: trained 3 of 6 model(s) in " in result.stderr
    assert "3 failed or not trained (seeds 3..5), 0 skipped (done before)" in result.stderr
    assert re.search(r"^  failed pack=2-3: RecordError: .*seed=3/record.npz: cannot write the record", result.stderr,
                     flags=re.MULTILINE), result.stderr
    status = run_cli("src.status", str(sweep), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    rows = status_table(status.stdout)
    assert rows["failed"].startswith("1 job(s), 1 seed(s): pack=2-3: RecordError: "), status.stdout
    assert rows["state"].startswith("stopped: 3 seed(s) without a record"), status.stdout
    assert [path.name for path in (sweep / JOBS_DIR).iterdir()] == ["pack=2-3.json"]


def test_status_of_a_missing_directory_is_one_error_line(tmp_path: Path) -> None:
    result = run_cli("src.status", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'} is not a directory; give a sweep directory, e.g. outputs/fz_mnist"]
