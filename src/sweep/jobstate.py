"""What a sweep leaves on disk for `python -m src.status` and the progress line, beside its records.

- `<sweep>/launch.json`: written atomically by the sweeper when a launch starts (src/hydra_plugins/meminf_sweep/):
  the seeds asked for and those to train, the pack, the accelerator, the launcher, when it started; the SLURM
  launcher adds each array task's id and seeds once submitted, and the sweeper the time it ended.
- `<sweep>/jobs/<job>.json` (`<job>` is the job's directory name, `seed=<k>` or `pack=<first>-<last>`): written
  atomically by a job as it starts (its seeds, host, pid, SLURM task id, start time) and removed when it ends
  with its records written. A job that fails with an error rewrites it as failed, with its one-line error. A job
  killed from outside (SIGKILL, out of memory, a node lost) leaves it as running: the status command checks
  whether its process still lives (on this host) or its task is still in the queue (SLURM), and reads it as
  died if not (a job on another host, outside SLURM, cannot be checked from here and reads as in flight; a pid
reused by another process reads as alive). A seed is in flight when a live job's file names it and its record is
not written yet.

A job's record is written before its file is removed, so a seed is never both missing and out of flight while its
job succeeds. Both files are JSON, never pickled; a damaged one is read as absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from src.config.paths import job_seed_list, job_subdir
from src.contracts.io import write_atomic

LAUNCH_FILE = "launch.json"
JOBS_DIR = "jobs"
RUNNING, FAILED = "running", "failed"


@dataclass
class Launch:
    """One launch of a sweep directory (module docstring)."""

    started: float  # Unix time
    seeds: list[int]
    pending: list[int]
    pack: int
    accelerator: str
    launcher: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    slurm_tasks: dict[str, list[int]] = field(default_factory=dict)  # array task id -> its seeds
    ended: float | None = None


@dataclass
class JobMarker:
    """One job's file under `jobs/` (module docstring)."""

    state: str
    seeds: list[int]
    started: float
    host: str
    pid: int
    slurm_task: str | None = None
    error: str | None = None


def write_json(path: Path, content: dict[str, Any]) -> Path:
    text = json.dumps(content, allow_nan=False) + "\n"
    return write_atomic(path, lambda handle: handle.write(text.encode()), faults=False)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is absent, damaged or not an object."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def write_launch(sweep: Path, launch: Launch) -> Path:
    return write_json(sweep / LAUNCH_FILE, asdict(launch))


def read_launch(sweep: Path) -> Launch | None:
    content = read_json(sweep / LAUNCH_FILE)
    if content is None:
        return None
    try:
        return Launch(**content)
    except TypeError:
        return None


def update_launch(sweep: Path, **changes: Any) -> None:
    """Rewrite the sweep's launch file with `changes` (no file: nothing to update)."""
    launch = read_launch(sweep)
    if launch is not None:
        write_launch(sweep, Launch(**{**asdict(launch), **changes}))


def add_slurm_tasks(sweep: Path, tasks: dict[str, list[int]]) -> None:
    launch = read_launch(sweep)
    if launch is not None:
        update_launch(sweep, slurm_tasks={**launch.slurm_tasks, **tasks})


def this_slurm_task() -> str | None:
    """The array task this process runs in (`<array>_<index>`), or the plain job id, or None outside SLURM."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return os.environ.get("SLURM_JOB_ID")


def marker_path(sweep: Path, seed: int, seeds: Iterable[int] | None) -> Path:
    return sweep / JOBS_DIR / f"{job_subdir(seed, seeds)}.json"


@contextlib.contextmanager
def job_marked(sweep: Path, seed: int, seeds: Iterable[int] | None, keep_failure: bool) -> Iterator[None]:
    """The job's file for the duration of the job: running, then removed; failed (with its error) when the job
    raises and `keep_failure`, else removed too. A single run (no `keep_failure`: no sweep's end to tidy after it)
    also removes `jobs/` when that leaves it empty."""
    path = marker_path(sweep, seed, seeds)
    marker = JobMarker(RUNNING, job_seed_list(seed, seeds), time.time(), socket.gethostname(), os.getpid(),
                       this_slurm_task())
    write_json(path, asdict(marker))
    try:
        yield
    except BaseException as err:
        if keep_failure and not isinstance(err, KeyboardInterrupt):
            write_json(path, asdict(JobMarker(**{**asdict(marker), "state": FAILED, "error": failure_line(err)})))
        else:
            _remove(path, keep_folder=keep_failure)
        raise
    _remove(path, keep_folder=keep_failure)


def _remove(marker: Path, keep_folder: bool) -> None:
    marker.unlink(missing_ok=True)
    if not keep_folder:
        with contextlib.suppress(OSError):  # another job's file in it: it stays
            marker.parent.rmdir()


def failure_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_markers(sweep: Path) -> list[JobMarker]:
    """Every readable job file of the sweep, in name order."""
    folder = sweep / JOBS_DIR
    markers = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        content = read_json(path)
        if content is None:
            continue
        with contextlib.suppress(TypeError):
            markers.append(JobMarker(**content))
    return markers
