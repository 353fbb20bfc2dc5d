"""What SLURM says about a sweep's array tasks: `squeue` for those still queued or running, `sacct` for how those
that left ended (where the cluster keeps accounting; without it sacct fails and they read as `left the queue`)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

QUEUE_TIMEOUT_S = 30  # one squeue or sacct call
LEFT_QUEUE = "left the queue"  # a task's state when sacct cannot tell


def arrays_of(task_ids: Sequence[str]) -> list[str]:
    """The array ids of `<array>_<index>` task ids."""
    return sorted({task_id.split("_")[0] for task_id in task_ids})


def queued_states(task_ids: Sequence[str]) -> dict[str, str] | None:
    """State (PENDING, RUNNING, ...) of each task of these tasks' arrays still in the queue (one line per task:
    `squeue -r`); None when squeue cannot answer."""
    if not task_ids:
        return {}
    try:
        shown = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(arrays_of(task_ids))],
                               capture_output=True, text=True, timeout=QUEUE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0 and "Invalid job id" not in shown.stderr:  # every array has left the queue
        return None
    rows = [line.split() for line in shown.stdout.splitlines() if line.strip()]
    return {row[0]: row[1] if len(row) > 1 else "queued" for row in rows}


def ended_states(task_ids: Sequence[str]) -> dict[str, str]:
    """How these tasks ended (FAILED, TIMEOUT, OUT_OF_MEMORY, ...) as sacct reports them; tasks sacct does not
    know (no accounting) are absent."""
    if not task_ids:
        return {}
    try:
        shown = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(arrays_of(task_ids))],
                               capture_output=True, text=True, timeout=QUEUE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return {}
    if shown.returncode != 0:
        return {}
    states = dict(line.split("|", 1) for line in shown.stdout.splitlines() if line.count("|") == 1)
    return {task_id: states[task_id].split()[0] for task_id in task_ids if states.get(task_id)}
