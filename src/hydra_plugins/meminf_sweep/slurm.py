"""meminf's SLURM launcher: hydra-submitit-launcher's SLURM launcher, given the whole sweep at once (sweeper.py)
and submitting it as job arrays of at most the cluster's MaxArraySize tasks, every array before waiting on any.

- Array size: `max_array_size`, or the cluster's `MaxArraySize` from `scontrol show config` (array indices run
  0..MaxArraySize-1, so an array holds at most MaxArraySize tasks); SLURM's default when neither answers.
- `max_submit_jobs` (the account's MaxSubmitJobsPerUser, which counts every array task; `sacctmgr show assoc` or
  `show qos` tells it): arrays are submitted while they fit under it, the rest as earlier tasks finish.
- `submit_only`: submit, print the array ids and how to follow the sweep, and return without waiting (records
  make waiting unnecessary: relaunching the same command trains only what is missing).
- Each array task's id and seeds go into its sweep's launch file as it is submitted (src/sweep/jobstate.py), so
  that `python -m src.status <sweep>` finds the tasks in the queue from any shell; while waiting, a progress line
  is printed whenever more models are trained (src/sweep/status.py).
- Waiting is bounded: a task that has left the queue (`squeue`) without a result for `lost_after_s` is reported
  as lost, instead of being polled for ever (submitit reads a failed `sacct`, as on a cluster without
  accounting, as "still running"); `wait_hours` bounds the whole wait.
Preemption, requeueing and time-outs are submitit's (conf/hydra/launcher/slurm.yaml, docs/CLUSTER.md).
"""


import logging
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001  # slurm.conf(5): MaxArraySize's default
POLL_S = 10.0  # between looks at the queue while waiting
SCONTROL_TIMEOUT_S = 30
SECONDS_PER_HOUR = 3600
MEMINF_KEYS = ("max_array_size", "max_submit_jobs", "submit_only", "lost_after_s", "wait_hours")  # not submitit's


@dataclass
class MeminfSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.meminf_sweep.slurm.MeminfSlurmLauncher"
    max_array_size: int | None = None  # null: the cluster's MaxArraySize (scontrol show config)
    max_submit_jobs: int | None = None  # null: no limit; else the account's MaxSubmitJobsPerUser
    submit_only: bool = False  # submit every array, print how to follow, and return
    lost_after_s: float = 300.0  # a task out of the queue this long without a result is lost
    wait_hours: float = 168.0  # the longest the launcher waits for the sweep's results


ConfigStore.instance().store(group="hydra/launcher", name="meminf_slurm", node=MeminfSlurmConf, provider="meminf")


def cluster_max_array_size() -> int:
    """MaxArraySize from `scontrol show config`; SLURM's default when scontrol cannot tell."""
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                               timeout=SCONTROL_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return SLURM_DEFAULT_MAX_ARRAY_SIZE
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", shown, flags=re.MULTILINE)
    return int(found[1]) if found else SLURM_DEFAULT_MAX_ARRAY_SIZE


def queued_task_ids(job_ids: Sequence[str]) -> set[str] | None:
    """The array tasks of these arrays still pending or running (one id per task, `squeue -r`); None when
    squeue cannot answer (then nothing is declared lost)."""
    from src.sweep.queue import queued_states

    states = queued_states(list(job_ids))
    return None if states is None else set(states)


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


class SweepFailed(RuntimeError):
    """Jobs of the sweep ended without a result, or the wait ran out."""


class MeminfSlurmLauncher(SlurmLauncher):
    takes_whole_sweep = True  # sweeper.py hands it every job of the sweep at once

    def __init__(self, max_array_size: int | None = None, max_submit_jobs: int | None = None,
                 submit_only: bool = False, lost_after_s: float = 300.0, wait_hours: float = 168.0,
                 **params: Any) -> None:
        super().__init__(**params)
        self.max_array_size, self.max_submit_jobs = max_array_size, max_submit_jobs
        self.submit_only, self.lost_after_s, self.wait_hours = submit_only, lost_after_s, wait_hours

    def executor(self) -> Any:
        """submitit's SLURM executor with the preset's parameters (as the parent launcher builds it)."""
        import submitit

        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in shared else f"slurm_{key}": value
                                      for key, value in self.params.items()
                                      if key not in ("submitit_folder", "max_num_timeout")})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        arguments = [(list(overrides), "hydra.sweep.dir", initial_job_idx + k, f"job_id_for_{initial_job_idx + k}",
                      Singleton.get_state()) for k, overrides in enumerate(job_overrides)]
        for index, (overrides, *_rest) in enumerate(arguments, start=initial_job_idx):
            log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
        size = self.max_array_size or cluster_max_array_size()
        try:
            jobs, arrays = self.submit(chunks(arguments, size))
            print(f"submitted {len(jobs)} of {len(arguments)} job(s) as {len(arrays)} array(s) of up to {size} "
                  f"task(s): {', '.join(arrays)}", flush=True)
            if self.submit_only:
                rest = len(arguments) - len(jobs)
                print(("" if not rest else f"the other {rest} would exceed hydra.launcher.max_submit_jobs="
                       f"{self.max_submit_jobs}: relaunch the same command when these have finished; ")
                      + "not waiting (hydra.launcher.submit_only=true): follow with `python -m src.status "
                      f"{sweep_dir}` (seeds done, tasks queued and running, failed, time left) or `squeue -j "
                      f"{','.join(arrays)}`; the same command with --dry-run plans a relaunch", flush=True)
                return []
            self.wait_for(jobs)
        except SweepFailed as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(1)
        return [job.results()[0] for job in jobs]

    def submit(self, arrays: list[Sequence[Any]]) -> tuple[list[Any], list[str]]:
        """Submit the arrays in order, each as soon as it fits under max_submit_jobs (submit_only: those that
        fit now); the jobs and the array ids."""
        executor = self.executor()
        jobs: list[Any] = []
        ids: list[str] = []
        for chunk in arrays:
            if self.submit_only and not self.fits(jobs, len(chunk)):
                break
            self.wait_for_room(jobs, len(chunk))
            submitted = executor.map_array(self, *zip(*chunk, strict=True))
            self.record_tasks(chunk, submitted)
            jobs.extend(submitted)
            ids.append(str(submitted[0].job_id).split("_")[0])
        return jobs, ids

    def record_tasks(self, chunk: Sequence[Any], submitted: list[Any]) -> None:
        """Each submitted task's id and seeds in its sweep's launch file. The sweeper sets `planned_jobs`
        (src/sweep/plan.py `PlannedJob`, by job index); without it there is nothing to record."""
        from src.config.paths import sweep_dir
        from src.sweep.jobstate import add_slurm_tasks

        planned = getattr(self, "planned_jobs", None)
        if not planned:
            return
        by_sweep: dict[Path, dict[str, list[int]]] = {}
        for (_overrides, _key, index, *_rest), job in zip(chunk, submitted, strict=True):
            by_sweep.setdefault(sweep_dir(planned[index].plan.cfg), {})[str(job.job_id)] = list(planned[index].seeds)
        for sweep, tasks in by_sweep.items():
            add_slurm_tasks(sweep, tasks)

    def print_progress(self, shown: dict[Path, int]) -> None:
        """Each sweep's progress line when more of its models are trained than last shown."""
        from src.config.paths import sweep_dir
        from src.sweep.status import progress_line, sweep_status

        for sweep in dict.fromkeys(sweep_dir(job.plan.cfg) for job in getattr(self, "planned_jobs", None) or []):
            status = sweep_status(sweep)
            if shown.get(sweep) != len(status.trained):
                shown[sweep] = len(status.trained)
                print(progress_line(status), file=sys.stderr, flush=True)

    def fits(self, jobs: list[Any], needed: int) -> bool:
        unfinished = sum(not job.paths.result_pickle.exists() for job in jobs)
        return self.max_submit_jobs is None or unfinished + needed <= self.max_submit_jobs

    def wait_for_room(self, jobs: list[Any], needed: int) -> None:
        """Under max_submit_jobs, wait until `needed` more tasks fit beside the unfinished ones."""
        if self.max_submit_jobs is not None and needed > self.max_submit_jobs:
            raise SweepFailed(f"an array of {needed} tasks exceeds hydra.launcher.max_submit_jobs="
                              f"{self.max_submit_jobs}; set hydra.launcher.max_array_size to at most that")
        deadline = time.monotonic() + self.wait_hours * SECONDS_PER_HOUR
        while not self.fits(jobs, needed):
            self.check_deadline(deadline, jobs)
            time.sleep(POLL_S)

    def wait_for(self, jobs: list[Any]) -> None:
        """Until every task has a result; a task that left the queue without one is lost (module docstring)."""
        deadline = time.monotonic() + self.wait_hours * SECONDS_PER_HOUR
        missing_since: dict[str, float] = {}
        shown: dict[Path, int] = {}
        while True:
            waiting = [job for job in jobs if not job.paths.result_pickle.exists()]
            self.print_progress(shown)
            if not waiting:
                return
            queued = queued_task_ids([job.job_id for job in waiting])
            now = time.monotonic()
            for job in waiting:
                if queued is None or job.job_id in queued:
                    missing_since.pop(job.job_id, None)
                else:
                    missing_since.setdefault(job.job_id, now)
            lost = [job_id for job_id, since in missing_since.items() if now - since >= self.lost_after_s]
            if lost:
                raise SweepFailed(f"{len(lost)} task(s) left the queue without a result ({', '.join(sorted(lost)[:8])}"
                                  f"{', ...' if len(lost) > 8 else ''}; killed or failed outside Python): see "
                                  f"their logs under {self.params['submitit_folder']}, then relaunch the same "
                                  "command to train what is missing")
            self.check_deadline(deadline, waiting)
            time.sleep(min(POLL_S, self.lost_after_s / 2))

    def check_deadline(self, deadline: float, waiting: list[Any]) -> None:
        if time.monotonic() > deadline:
            raise SweepFailed(f"{len(waiting)} task(s) unfinished after hydra.launcher.wait_hours={self.wait_hours}; "
                              "they go on running: relaunch the same command later to collect what is missing")
