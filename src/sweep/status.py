"""Where a sweep stands, from its directory alone (src/sweep/jobstate.py) and, for SLURM arrays, the queue: the
seeds trained by its latest launch, the jobs in flight, the jobs that failed, the rate and the time left. One
reading serves the progress line of a running sweep, its closing summary, `python -m src.status` from another
shell and `--dry-run`.

Time left comes from the latest launch's own pace, never from training time alone: seconds of wall clock per
model between the ends of its most recent jobs (the records' modification times; `RECENT_JOBS` jobs' worth of
models), which counts job start-up, data loading, the launcher's parallelism and a loaded machine. The basis is
stated with every estimate.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.config.paths import job_subdir, sweep_dir
from src.contracts.records import RecordError, find_records, read_meta, record_path
from src.sweep.jobstate import (
    FAILED,
    JOBS_DIR,
    JobMarker,
    Launch,
    read_launch,
    read_markers,
    update_launch,
    write_launch,
)
from src.sweep.queue import LEFT_QUEUE, ended_states, queued_states
from src.sweep.seeds import pack_groups, seed_ranges
from src.util.tables import duration_text

if TYPE_CHECKING:
    from src.sweep.plan import PlannedJob

RECENT_JOBS = 8  # the rate is measured over this many of the latest jobs' models


@dataclass(frozen=True)
class Rate:
    seconds_per_model: float
    basis: str  # e.g. "from the last 8 jobs (128 models) of this launch"

    def text(self) -> str:
        return f"{self.seconds_per_model:.2f} s/model {self.basis}"


def recent_rate(finished: list[float], since: float, pack: int, jobs: int = RECENT_JOBS,
                launch: str = "this launch", until: float = math.inf) -> Rate | None:
    """Wall-clock seconds per model over the latest `jobs` jobs' models (`jobs * pack`), from the times models
    finished between `since` (the launch's start) and `until` (its end: a record modified later, e.g. copied,
    says nothing of its pace); None before the first one. `launch` names the launch in the basis."""
    times = sorted(t for t in finished if since <= t <= until)
    if not times:
        return None
    window = min(len(times), jobs * pack)
    start = times[-window - 1] if window < len(times) else since
    n_jobs = math.ceil(window / pack)
    which = f"the last {n_jobs} jobs" if window < len(times) else ("its first job" if n_jobs == 1 else
                                                                    f"all {n_jobs} jobs")
    return Rate((times[-1] - start) / window, f"from {which} ({window} models) of {launch}")


def device_kind(device: str) -> str:
    """`cpu` or `gpu`: a record's device (`cpu`, `cuda:0`) or a trainer's accelerator (`cpu`, `gpu`, `cuda`)."""
    return "cpu" if device.startswith("cpu") else "gpu"


def planned_rate(status: SweepStatus, records: list[tuple[dict[str, Any], float]], pack: int,
                 accelerator: str) -> Rate | None:
    """Seconds per model for a launch at `pack` on `accelerator`, from comparable jobs of this experiment: the
    latest launch's wall-clock pace when it ran at the same pack and accelerator; else the mean `wall_time_s`
    (training only) of the latest `RECENT_JOBS` jobs' worth of `records` (meta, when written) at that pack and
    device; None when neither exists."""
    launch = status.launch
    if launch is not None and launch.pack == pack and device_kind(launch.accelerator) == device_kind(accelerator):
        rate = recent_rate([status.finished[seed] for seed in status.trained], launch.started, pack,
                           launch=f"the launch of {when(launch.started)} (pack {pack}, {launch.accelerator})",
                           until=launch.ended or math.inf)
        if rate is not None:
            return Rate(rate.seconds_per_model, f"elapsed, {rate.basis}")
    comparable = sorted((record for record in records if record[0].get("pack") == pack
                         and device_kind(str(record[0].get("device"))) == device_kind(accelerator)),
                        key=lambda record: record[1])
    latest = [meta for meta, _ in comparable[-RECENT_JOBS * pack:]]
    if not latest:
        return None
    mean = sum(float(meta["wall_time_s"]) for meta in latest) / len(latest)
    return Rate(mean, f"of training only (mean wall_time_s of the latest {len(latest)} records at pack {pack} on "
                      f"{device_kind(accelerator)}; job start-up not counted)")


@dataclass(frozen=True)
class JobView:
    """A job in flight or failed: the seeds it has not written yet and what is known of it."""

    seeds: tuple[int, ...]
    what: str


@dataclass
class SweepStatus:
    sweep: Path
    launch: Launch | None
    now: float
    finished: dict[int, float]  # seed -> when its record was written (records of the launch's seeds)
    in_flight: list[JobView] = field(default_factory=list)
    failed: list[JobView] = field(default_factory=list)

    @property
    def pending(self) -> list[int]:
        return self.launch.pending if self.launch else []

    @property
    def trained(self) -> list[int]:
        return [seed for seed in self.pending if seed in self.finished]

    @property
    def remaining(self) -> list[int]:
        return [seed for seed in self.pending if seed not in self.finished]

    @property
    def skipped(self) -> int:
        return len(self.launch.seeds) - len(self.pending) if self.launch else 0

    @property
    def jobs(self) -> tuple[int, int]:
        """(jobs whose seeds are all trained, jobs of the launch), the launch's seeds grouped as it packed them."""
        if not self.launch:
            return 0, 0
        groups = pack_groups(self.pending, self.launch.pack)
        return sum(all(seed in self.finished for seed in group) for group in groups), len(groups)

    @property
    def rate(self) -> Rate | None:
        if not self.launch:
            return None
        return recent_rate([self.finished[seed] for seed in self.trained], self.launch.started, self.launch.pack,
                           until=self.launch.ended or math.inf)

    @property
    def state(self) -> str:
        if self.in_flight:
            return "running"
        if self.launch and not self.remaining:
            return "finished"
        return "stopped"

    def duration_left(self, rate: Rate) -> str:
        """The seeds left at `rate`, as text."""
        return duration_text(rate.seconds_per_model * len(self.remaining))

    def time_left(self) -> str:
        if not self.remaining:
            return "none"
        if self.state != "running":
            return f"unknown: nothing in flight ({len(self.remaining)} seed(s) left untrained)"
        rate = self.rate
        if rate is None:
            return "unknown: no model of this launch has finished yet"
        return f"about {self.duration_left(rate)} ({rate.text()})"


def seeds_of(jobs: list[JobView]) -> set[int]:
    """The seeds these jobs have not written yet."""
    return {seed for job in jobs for seed in job.seeds}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def marker_view(marker: JobMarker, missing: tuple[int, ...], now: float,
                queue: dict[str, str] | None) -> tuple[bool | None, JobView]:
    """(alive: True, False, or None when it cannot be checked from here; the job as shown)."""
    name = job_subdir(marker.seeds[0], marker.seeds)
    if marker.state == FAILED:
        return False, JobView(missing, f"{name}: {marker.error}")
    where = f"pid {marker.pid} on {marker.host}" + (f", task {marker.slurm_task}" if marker.slurm_task else "")
    if marker.slurm_task:
        alive = None if queue is None else marker.slurm_task in queue
    else:
        alive = process_alive(marker.pid) if marker.host == socket.gethostname() else None
    if alive is False:
        return False, JobView(missing, f"{name}: died ({where} ended without writing its records)")
    unchecked = "" if alive else ", not checked from here"
    return True, JobView(missing, f"{name}: running {duration_text(now - marker.started)} ({where}{unchecked})")


def sweep_status(sweep: Path, now: float | None = None) -> SweepStatus:
    """The sweep's status now (module docstring); a sweep directory without a launch file (one run, or a sweep
    launched before launch files existed) shows its records and job files only."""
    launch = read_launch(sweep)
    seeds = launch.seeds if launch else [int(path.parent.name.split("=", 1)[1]) for path in find_records(sweep)
                                         if path.parent.name.startswith("seed=")]
    finished = {}
    for seed in seeds:
        path = record_path(sweep, seed)
        if path.is_file():  # a record is written by rename: a file there is complete
            finished[seed] = path.stat().st_mtime
    status = SweepStatus(sweep, launch, time.time() if now is None else now, finished)
    markers = read_markers(sweep)
    tasks = dict(launch.slurm_tasks) if launch else {}
    task_ids = sorted({*tasks, *(marker.slurm_task for marker in markers if marker.slurm_task)})
    queue = queued_states(task_ids) if task_ids else {}
    views = []
    for marker in markers:
        missing = tuple(seed for seed in marker.seeds if seed not in finished)
        if missing:
            views.append(marker_view(marker, missing, status.now, queue))
    status.in_flight = [view for alive, view in views if alive]
    add_slurm_tasks(status, tasks, queue)
    flying = seeds_of(status.in_flight)
    status.failed += [view for alive, view in views if not alive and not set(view.seeds) <= flying]
    return status


def add_slurm_tasks(status: SweepStatus, tasks: dict[str, list[int]], queue: dict[str, str] | None) -> None:
    """The launch's array tasks that have seeds to write and no job file in flight: queued (in flight) or gone
    from the queue without their records (failed; sacct's state where the cluster keeps accounting)."""
    flying = seeds_of(status.in_flight)
    left = []
    for task_id, seeds in sorted(tasks.items()):
        missing = tuple(seed for seed in seeds if seed not in status.finished)
        if not missing or set(missing) <= flying:
            continue
        if queue is None or task_id in queue:
            state = "queue not readable" if queue is None else queue[task_id].lower()
            status.in_flight.append(JobView(missing, f"task {task_id}: {state}"))
        else:
            left.append((task_id, missing))
    ended = ended_states([task_id for task_id, _ in left])
    status.failed += [JobView(missing, f"task {task_id}: {ended.get(task_id, LEFT_QUEUE)} without its records")
                      for task_id, missing in left]


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def jobs_text(jobs: list[JobView]) -> str:
    if not jobs:
        return "none"
    return f"{len(jobs)} job(s), {len(seeds_of(jobs))} seed(s): " + "; ".join(job.what for job in jobs)


def progress_line(status: SweepStatus) -> str:
    """The one line a running sweep prints as its jobs end."""
    jobs_done, jobs_total = status.jobs
    rate = status.rate
    pace = f"{rate.text()}; " if rate else ""
    if not status.remaining:
        left = "none left"
    else:
        left = f"about {status.duration_left(rate)} left" if rate else "time left unknown"
    return (f"progress {status.sweep.name}: {len(status.trained)}/{len(status.pending)} models ({jobs_done}/"
            f"{jobs_total} jobs), {len(seeds_of(status.in_flight))} in flight, "
            f"{len(seeds_of(status.failed))} failed; {pace}{left}")


def status_rows(status: SweepStatus) -> list[tuple[str, str]]:
    """The rows `python -m src.status` prints."""
    rows = [("sweep", str(status.sweep))]
    launch = status.launch
    if launch is None:
        rows.append(("launch", f"none recorded (no -m launch here yet): {len(status.finished)} record(s)"))
    else:
        rows.append(("launch", f"{when(launch.started)}, {launch.launcher} on {launch.host} (pid "
                               f"{launch.pid}): {len(launch.seeds)} seeds, {status.skipped} done before, "
                               f"{len(launch.pending)} to train at pack {launch.pack}"))
        jobs_done, jobs_total = status.jobs
        rows.append(("trained", f"{len(status.trained)}/{len(status.pending)} models ({jobs_done}/{jobs_total} "
                                f"jobs)"))
    rows += [("in flight", jobs_text(status.in_flight)), ("failed", jobs_text(status.failed))]
    if launch is not None:
        rows.append(("time left", status.time_left()))
    rows.append(("state", state_text(status)))
    return rows


def state_text(status: SweepStatus) -> str:
    launch = status.launch
    if status.state == "finished" and launch is not None:
        end = max([*status.finished.values(), launch.started]) if launch.ended is None else launch.ended
        return f"finished {when(end)}, {duration_text(end - launch.started)} after its launch"
    if status.state == "stopped" and launch is not None:
        return (f"stopped: {len(status.remaining)} seed(s) without a record and nothing in flight; relaunch "
                f"the same command to train them")
    return status.state


def closing_lines(status: SweepStatus, wall_s: float) -> list[str]:
    """The summary a sweep prints when its launcher returns: trained, failed, skipped, mean accuracies, wall time."""
    trained = status.trained
    metas = []
    for seed in trained:
        with contextlib.suppress(RecordError):  # damaged since: the aggregator names it
            metas.append(read_meta(record_path(status.sweep, seed)))
    failed = sorted(seeds_of(status.failed) | set(status.remaining))
    per_model = f" ({wall_s / len(trained):.2f} s/model)" if trained else ""
    lines = [f"sweep {status.sweep}: trained {len(trained)} of {len(status.pending)} model(s) in "
             f"{duration_text(wall_s)}{per_model}, {len(failed)} failed or not trained"
             f"{f' (seeds {seed_ranges(failed)})' if failed else ''}, {status.skipped} skipped (done before)"]
    if metas:
        means = {key: sum(meta[key] for meta in metas) / len(metas) for key in ("train_in_acc", "test_acc")}
        lines.append(f"  mean in-subset train acc {means['train_in_acc']:.4f}, mean test acc {means['test_acc']:.4f}"
                     f" over the {len(metas)} model(s) trained")
    lines += [f"  failed {job.what}" for job in status.failed]
    return lines


def begin_launches(planned: list[PlannedJob], launcher: str) -> list[Path]:
    """Each combination's launch file, written before its jobs launch; returns their sweep directories."""
    plans = {}
    for job in planned:
        plans.setdefault(sweep_dir(job.plan.cfg), job.plan)
    started = time.time()
    for sweep, plan in plans.items():
        write_launch(sweep, Launch(started, list(plan.seeds), list(plan.pending), plan.pack,
                                   str(plan.cfg.trainer.get("accelerator", "cpu")), launcher))
    return list(plans)


def end_launches(sweeps: list[Path]) -> None:
    """The end of each launch in its file, and its closing summary on stderr (a sweep directory that a failed job
    removed, having trained nothing, has none). Called once every job has ended: an empty `jobs/` goes (a failed
    job's file keeps it)."""
    for sweep in sweeps:
        launch = read_launch(sweep)
        if launch is None:
            continue
        with contextlib.suppress(OSError):
            (sweep / JOBS_DIR).rmdir()  # only when empty
        ended = time.time()
        update_launch(sweep, ended=ended)
        for line in closing_lines(sweep_status(sweep, ended), ended - launch.started):
            print(line, file=sys.stderr, flush=True)
