"""`hydra/launcher=slurm` sweeps through a real single-node SLURM cluster (tests/slurm_cluster.py): an array of
packed jobs writes the records a local sweep writes; a task preempted with USR2, a task requeued by
`scontrol requeue` and a task that hits its time limit on its first attempt are requeued, and the sweep ends
with the estimates of an uninterrupted sweep and no partial file; a bad config fails before anything is
submitted; DDP with one SLURM task per rank writes one record per seed; Lightning inside a SLURM job is rank 0
of 1 and prints no srun hint.

Skips where SLURM is not installed (apt-get install slurm-wlm munge) or the tests do not run as root, except
under MEMINF_REQUIRE_SLURM=1 (.ci/run): then they fail. Every wait is bounded; a sweep is 4 seeds in 2 packed
jobs on the digits MLP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from src.contracts.estimates import Estimates, read_estimates
from src.contracts.records import find_records, read_record, record_path
from src.sweep.jobstate import read_launch
from src.training.trainer import SRUN_HINT
from src.util.cli import USER_ERROR
from tests.conftest import ROOT, TINY, run_cli
from tests.slurm_cluster import (
    COMMAND_TIMEOUT_S,
    MAX_ARRAY_SIZE,
    LocalSlurm,
    probe_trainer,
    require_slurm,
    start_cluster,
    wait_until,
)
from tests.test_launchers import DDP_PROB_ATOL

pytestmark = pytest.mark.slow

SWEEP = ["-m", *TINY, "name=s", "seed=0..3", "pack=2"]  # 2 jobs of 2 seeds: one array of 2 tasks
# One node of 2 CPUs: no GPU, one CPU and 1 GB per job, so that both array tasks run at once.
NODE_FIT = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1"]
PREEMPTIBLE_MIN = 15  # submitit reads a USR2 after min(0.8 limit, limit - 10 min) of run time as a time-out
SWEEP_TIMEOUT_S = 300  # an uninterrupted sweep takes ~35 s, one with a requeue ~70-100 s (2 cores, loaded)
MARKER_TIMEOUT_S = 120  # until the paused task runs (job start-up ~10 s)
PAUSE_S = 900  # the paused first attempt: longer than any wait here, so only an injected signal ends it


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurm]:
    require_slurm()
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster: LocalSlurm) -> Iterator[LocalSlurm]:
    """The session's cluster, emptied of jobs after each test (a failed test leaves none running)."""
    yield slurm_cluster
    slurm_cluster.run("scancel", "--full", f"--user={os.getuid()}", check=False)
    wait_until(lambda: not slurm_cluster.queued(), 60, "the test's jobs to end", details=slurm_cluster.logs)


def sweep_env(cluster: LocalSlurm) -> dict[str, str]:
    # One thread everywhere: the local reference and the SLURM jobs then compute bit for bit the same.
    return {**cluster.env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def start_sweep(cluster: LocalSlurm, out: Path, *extra: str) -> subprocess.Popen:
    log = (out.parent / f"{out.name}.log").open("w")
    try:
        return subprocess.Popen([sys.executable, "-m", "src.run", *SWEEP, f"paths.output_dir={out}", *NODE_FIT,
                                 *extra], cwd=ROOT, env=sweep_env(cluster), stdout=log, stderr=subprocess.STDOUT,
                                text=True)
    finally:
        log.close()


def finish_sweep(cluster: LocalSlurm, process: subprocess.Popen, out: Path) -> str:
    """Wait (bounded) for the launching process; assert it succeeded; its output."""
    try:
        process.wait(SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    output = (out.parent / f"{out.name}.log").read_text()
    assert process.returncode == 0, (f"sweep exited {process.returncode} (-9: killed after {SWEEP_TIMEOUT_S} s);"
                                     f" squeue: {cluster.queued()}\n{strip_sacct(output)[-3000:]}\n"
                                     f"{job_logs(out)[-3000:]}\n{cluster.logs()}")
    return output


def strip_sacct(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "sacct" not in line and "accounting storage" not in line)


def job_logs(out: Path) -> str:
    """Every job's submitit stdout and stderr and every run.log of the sweep."""
    paths = sorted((out / "s" / ".submitit").glob("*/*_log.*")) + sorted((out / "s").glob("*/run.log"))
    return "\n".join(f"--- {path}:\n{path.read_text(errors='replace')}" for path in paths)


def estimates(sweep: Path) -> Estimates:
    result = run_cli("src.estimate", str(sweep), cwd=ROOT, timeout=SWEEP_TIMEOUT_S, OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stderr
    return read_estimates(sweep)


def assert_same_estimates(got: Estimates, expected: Estimates) -> None:
    assert sorted(got.arrays) == sorted(expected.arrays)
    for key, array in expected.arrays.items():
        np.testing.assert_array_equal(got.arrays[key], array, err_msg=key)


def assert_complete_sweep(out: Path, reference: Estimates) -> None:
    """4 readable records, no temp file of an interrupted write, the estimates of the uninterrupted sweep."""
    sweep = out / "s"
    records = find_records(sweep)
    assert [path.parent.name for path in records] == [f"seed={seed}" for seed in range(4)]
    for path in records:
        read_record(path)
    assert not [path for path in sweep.rglob("*") if ".tmp" in path.name], "a partial file survived"
    assert_same_estimates(estimates(sweep), reference)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Estimates:
    """The same sweep on this machine with Hydra's basic launcher (no SLURM), uninterrupted."""
    out = tmp_path_factory.mktemp("local")
    result = run_cli("src.run", *SWEEP, f"paths.output_dir={out}", cwd=ROOT, timeout=SWEEP_TIMEOUT_S,
                     OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stderr[-3000:]
    return estimates(out / "s")


def pause_first_attempt(markers: Path, at: str = "start") -> list[str]:
    """The Hydra callback (tests/slurm_cluster.py) that holds the first attempt of seed 0's job, before it trains
    (`at` start) or after its records are written (end)."""
    return ["+hydra.callbacks.pause._target_=tests.slurm_cluster.PauseFirstAttempt",
            f"+hydra.callbacks.pause.marker_dir={markers}", f"+hydra.callbacks.pause.seconds={PAUSE_S}",
            f"+hydra.callbacks.pause.at={at}"]


def paused_job(cluster: LocalSlurm, markers: Path, process: subprocess.Popen, out: Path) -> str:
    """The SLURM id (<array job>_<task>) of the task paused in its first attempt, once it is running."""
    def marker() -> str | None:
        assert process.poll() is None, f"the sweep exited {process.returncode} before its task paused"
        found = sorted(markers.glob("*")) if markers.is_dir() else []
        return found[0].name if found else None

    return wait_until(marker, MARKER_TIMEOUT_S, "seed 0's job to start (its pause marker)",
                      details=lambda: f"squeue: {cluster.queued()}\n{job_logs(out)[-2000:]}")


def task_log(out: Path, job: str) -> str:
    """submitit's log of the task (stdout: its info lines, stderr: warnings, SLURM's and srun's notices)."""
    return "".join((out / "s" / ".submitit" / job / f"{job}_0_log.{kind}").read_text() for kind in ("out", "err"))


# ----------------------------------------------------------------------------------------------- tests


def test_cluster_limits_arrays_to_max_array_size_indices(slurm: LocalSlurm, tmp_path: Path) -> None:
    """MaxArraySize=8: indices 0..7 are accepted, index 8 is refused (docs/CLUSTER.md)."""
    config = slurm.run("scontrol", "show", "config").stdout
    assert re.search(rf"^MaxArraySize\s*=\s*{MAX_ARRAY_SIZE}$", config, re.MULTILINE)
    common = ["sbatch", "--parsable", "--hold", f"--output={tmp_path}/%A_%a.out", "--wrap=true"]
    accepted = slurm.run(*common, f"--array=0-{MAX_ARRAY_SIZE - 1}", check=False)
    assert accepted.returncode == 0, accepted.stderr
    refused = slurm.run(*common, f"--array=0-{MAX_ARRAY_SIZE}", check=False)
    assert refused.returncode != 0 and "Invalid job array specification" in refused.stderr
    slurm.run("scancel", accepted.stdout.strip())


def test_packed_array_sweep_writes_the_records_of_a_local_sweep(
    slurm: LocalSlurm, reference: Estimates, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    output = finish_sweep(slurm, start_sweep(slurm, out), out)
    assert "4 to train in 2 job(s) of up to 2 model(s)" in output
    assert "progress s: 4/4 models (2/2 jobs), 0 in flight, 0 failed; " in output  # printed while it waits
    assert "sweep " in output and ": trained 4 of 4 model(s) in " in output  # the closing summary
    scripts = list((out / "s" / ".submitit").glob("*/*_submission.sh"))
    assert len(scripts) == 1 and "#SBATCH --array=0-1%" in scripts[0].read_text()  # one array of 2 tasks
    assert_complete_sweep(out, reference)
    logs = job_logs(out)
    assert logs.count("Job completed successfully") >= 2
    assert SRUN_HINT not in logs and SRUN_HINT not in output


def test_usr2_preemption_is_requeued_and_the_sweep_ends_as_uninterrupted(
    slurm: LocalSlurm, reference: Estimates, tmp_path: Path
) -> None:
    """USR2 to a running task, as a cluster's preemption sends it, well within the guaranteed run time of a
    15-minute job: submitit checkpoints (resubmits the same Hydra job) and requeues it."""
    out, markers = tmp_path / "out", tmp_path / "markers"
    process = start_sweep(slurm, out, f"hydra.launcher.timeout_min={PREEMPTIBLE_MIN}", *pause_first_attempt(markers))
    job = paused_job(slurm, markers, process, out)
    slurm.run("scancel", "--signal=USR2", job)
    finish_sweep(slurm, process, out)
    log = task_log(out, job)
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log, log
    assert f"Requeued job {job} (3 remaining timeouts)" in log, log
    assert slurm.jobs()[job]["Restarts"] == "1"
    assert_complete_sweep(out, reference)


def test_scontrol_requeue_of_a_running_task_ends_as_uninterrupted(
    slurm: LocalSlurm, reference: Estimates, tmp_path: Path
) -> None:
    """SLURM's own requeue (as an administrator or a requeueing preemption does it) of a task that has written
    its records but not yet its submitit result: SLURM kills the task and starts it again, without submitit's
    handler having a say; the launcher waits, and the second attempt skips the done seeds."""
    out, markers = tmp_path / "out", tmp_path / "markers"
    process = start_sweep(slurm, out, *pause_first_attempt(markers, at="end"))
    job = paused_job(slurm, markers, process, out)
    written = {path: path.stat().st_mtime_ns for path in find_records(out / "s")}
    assert {path.parent.name for path in written} >= {"seed=0", "seed=1"}
    slurm.run("scontrol", "requeue", job)
    finish_sweep(slurm, process, out)
    log = task_log(out, job)
    assert log.count(f"Starting with JobEnvironment(job_id={job},") == 2, log
    assert slurm.jobs()[job]["Restarts"] == "1"
    assert {path: path.stat().st_mtime_ns for path in written} == written  # not trained or written again
    assert_complete_sweep(out, reference)


def test_a_time_limit_on_the_first_attempt_is_requeued_by_submitit(
    slurm: LocalSlurm, reference: Estimates, tmp_path: Path
) -> None:
    """A 2-minute limit with USR2 30 s before it (SLURM checks limits every 30 s and may send it up to 60 s
    earlier still, so 30-90 s into the run: after submitit's handler is set, before the kill): the paused first
    attempt is signalled, submitit counts a time-out (2 of max_num_timeout=3 left) and requeues; the second
    attempt (SLURM_RESTART_COUNT=1) trains at once."""
    out, markers = tmp_path / "out", tmp_path / "markers"
    process = start_sweep(slurm, out, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30",
                          *pause_first_attempt(markers))
    job = paused_job(slurm, markers, process, out)
    finish_sweep(slurm, process, out)
    log = task_log(out, job)
    assert "this job is timed-out" in log and f"Requeued job {job} (2 remaining timeouts)" in log, log
    assert slurm.jobs()[job]["Restarts"] == "1"
    assert_complete_sweep(out, reference)


def test_ddp_through_slurm_tasks_writes_one_record_per_seed_as_one_process(slurm: LocalSlurm, tmp_path: Path) -> None:
    """trainer=ddp with one SLURM task per device (docs/CLUSTER.md): 2 CPU ranks (gloo) per job, SLURM's ranks
    (SLURMEnvironment), one record per seed, within DDP_PROB_ATOL of one process (tests/test_launchers.py)."""
    common = ["-m", *TINY, "name=d", "seed=0..1", "pack=1"]
    ddp = subprocess.run([sys.executable, "-m", "src.run", *common, f"paths.output_dir={tmp_path / 'ddp'}",
                          *NODE_FIT, "hydra.launcher.tasks_per_node=2", "trainer=ddp", "trainer.accelerator=cpu",
                          "trainer.devices=2", "trainer.precision=32-true"], cwd=ROOT, env=sweep_env(slurm),
                         capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    assert ddp.returncode == 0, f"{strip_sacct(ddp.stderr)[-3000:]}\n{slurm.logs()}"
    logs = "\n".join(path.read_text() for path in sorted((tmp_path / "ddp" / "d" / ".submitit").glob("*/*_log.*")))
    assert logs.count("global_rank=1(2))") == 2 and logs.count("global_rank=0(2))") == 2  # 2 jobs of 2 ranks
    assert SRUN_HINT not in logs
    single = run_cli("src.run", *common, f"paths.output_dir={tmp_path / 'one'}", cwd=ROOT, timeout=SWEEP_TIMEOUT_S,
                     OMP_NUM_THREADS="1")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp_records, single_records = (find_records(tmp_path / kind / "d") for kind in ("ddp", "one"))
    assert [path.parent.name for path in ddp_records] == ["seed=0", "seed=1"]
    for ddp_path, single_path in zip(ddp_records, single_records, strict=True):
        ddp_record, single_record = read_record(ddp_path), read_record(single_path)
        assert np.array_equal(ddp_record.subset_mask, single_record.subset_mask)
        for name in ("train_prob", "test_prob"):
            np.testing.assert_allclose(getattr(ddp_record, name), getattr(single_record, name), atol=DDP_PROB_ATOL)


def test_a_bad_config_fails_once_before_anything_is_submitted(slurm: LocalSlurm, tmp_path: Path) -> None:
    before = set(slurm.jobs())
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "src.run", *SWEEP, f"paths.output_dir={out}", *NODE_FIT,
                             "optim.lr=0"], cwd=ROOT, env=sweep_env(slurm), capture_output=True, text=True,
                            timeout=SWEEP_TIMEOUT_S)
    assert result.returncode == USER_ERROR, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "optim.lr=0" in errors[0], result.stderr  # once: the pre-flight, no job
    assert not (out / "s" / ".submitit").exists()
    assert set(slurm.jobs()) == before and not slurm.queued()


def test_lightning_in_a_submitit_task_is_rank_0_of_1_without_the_srun_hint(
    slurm: LocalSlurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submitit's one task per job (srun inside the batch script) is SLURM task 0 of 1. A batch script that runs
    Python without srun is one process: there Lightning's own detection prints the srun hint (no tasks
    requested), or takes the job's 2 tasks for its world size (a DDP job would wait for a rank that never
    starts); make_trainer's Trainer is rank 0 of 1, without the hint."""
    import submitit

    for name, value in slurm.env.items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(timeout_min=PREEMPTIBLE_MIN, nodes=1, tasks_per_node=1, cpus_per_task=1, mem_gb=1,
                               slurm_additional_parameters={"chdir": str(ROOT)})
    job = executor.submit(probe_trainer)
    wait_until(job.paths.result_pickle.exists, PROBE_TIMEOUT_S, "the probe job's result",
               details=lambda: f"squeue: {slurm.queued()}\n{job.stderr() or ''}")
    in_task = job.result()
    for built in in_task.values():  # inside srun both agree: task 0 of 1, and srun is used
        assert rank_and_environment(built) == ("SLURMEnvironment", [0, 1], 0, 1), in_task
        assert not srun_warnings(built), in_task

    batch = {tasks: batch_probe(slurm, tmp_path, tasks) for tasks in (None, 2)}
    for built in (batch[None]["make_trainer"], batch[2]["make_trainer"]):
        assert rank_and_environment(built) == ("LightningEnvironment", [0, 1], 0, 1), batch
        assert not srun_warnings(built), batch
    assert any(SRUN_HINT in message for message in srun_warnings(batch[None]["lightning_default"])), batch
    assert rank_and_environment(batch[2]["lightning_default"])[:2] == ("SLURMEnvironment", [0, 2]), batch


PROBE_TIMEOUT_S = 180


def rank_and_environment(built: dict) -> tuple:
    return built.get("environment"), built.get("environment_rank"), built.get("global_rank"), built.get("world_size")


def srun_warnings(built: dict) -> list[str]:
    return [message for message in built["warnings"] if "srun" in message]


def batch_probe(cluster: LocalSlurm, tmp_path: Path, tasks: int | None) -> dict:
    """probe_trainer in a batch script without srun (--ntasks-per-node=`tasks` if given)."""
    output = tmp_path / f"batch-{tasks}.json"
    probe = f"{sys.executable} -c 'import json; from tests.slurm_cluster import probe_trainer; " \
            "print(json.dumps(probe_trainer()))'"
    job_id = cluster.run("sbatch", "--parsable", f"--chdir={ROOT}", f"--output={output}", "--cpus-per-task=1",
                         "--mem=1G", *([f"--ntasks-per-node={tasks}"] if tasks else []), f"--wrap={probe}"
                         ).stdout.strip()
    wait_until(lambda: cluster.jobs().get(job_id, {}).get("JobState") not in (None, "PENDING", "RUNNING",
                                                                               "COMPLETING"),
               PROBE_TIMEOUT_S, f"batch probe {job_id}", details=lambda: output.read_text() if output.exists() else "")
    return json.loads(output.read_text().strip().splitlines()[-1])


def test_a_sweep_of_more_jobs_than_max_array_size_goes_out_as_several_arrays_before_any_runs(
    slurm: LocalSlurm, tmp_path: Path
) -> None:
    """20 jobs with the cluster's MaxArraySize of 8 (read from scontrol: the preset sets none): arrays of 8, 8 and
    4 tasks, all queued at once; submit_only returns without waiting and says how to follow."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "src.run", "-m", *TINY, "name=split", "seed=0..19", "pack=1",
               f"paths.output_dir={out}", *NODE_FIT, "hydra.launcher.submit_only=true",
               *pause_first_attempt(tmp_path / "markers")]
    submitted = subprocess.run(command, cwd=ROOT, env=sweep_env(slurm), capture_output=True, text=True,
                               timeout=SWEEP_TIMEOUT_S)
    assert submitted.returncode == 0, strip_sacct(submitted.stderr)[-3000:]
    found = re.search(r"submitted 20 of 20 job\(s\) as 3 array\(s\) of up to 8 task\(s\): (\d+), (\d+), (\d+)",
                      submitted.stdout)
    assert found, submitted.stdout[-2000:]
    tasks = slurm.run("squeue", "-h", "-r", "-o", "%i").stdout.split()
    assert sorted({task.split("_")[0] for task in tasks}) == sorted(found.groups())
    assert len(tasks) == 20 and "--dry-run" in submitted.stdout


def test_a_task_killed_without_a_result_ends_the_sweep_with_one_error_line_in_bounded_time(
    slurm: LocalSlurm, tmp_path: Path
) -> None:
    """scancel of a running task (SIGTERM: Lightning turns it into KeyboardInterrupt, which leaves submitit no
    result): without accounting submitit would poll sacct for ever; the launcher sees the task leave the queue
    and, lost_after_s later, exits 1 with one line naming it."""
    out, markers = tmp_path / "out", tmp_path / "markers"
    process = start_sweep(slurm, out, "hydra.launcher.lost_after_s=15", *pause_first_attempt(markers))
    job = paused_job(slurm, markers, process, out)
    slurm.run("scancel", job)
    try:
        process.wait(SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the sweep still waited {SWEEP_TIMEOUT_S} s after its task {job} was cancelled")
    output = (out.parent / f"{out.name}.log").read_text()
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert process.returncode == 1 and len(errors) == 1, output[-3000:]
    assert f"left the queue without a result ({job}" in errors[0]


def status_of(cluster: LocalSlurm, sweep: Path) -> dict[str, str]:
    """`python -m src.status` in another process, with the cluster's squeue."""
    shown = run_cli("src.status", str(sweep), cwd=ROOT, timeout=COMMAND_TIMEOUT_S, **cluster.env)
    assert shown.returncode == 0, shown.stderr
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in shown.stdout.splitlines())


def test_status_follows_a_submitted_sweep_through_the_queue(slurm: LocalSlurm, tmp_path: Path) -> None:
    """A sweep submitted without waiting: its launch file holds the array's task ids and seeds, and
    `python -m src.status` tells from another process the paused task running, the other task's records, the time
    left; after the paused task is cancelled (it never started its job), that it left the queue without its
    records."""
    out, markers = tmp_path / "out", tmp_path / "markers"
    process = start_sweep(slurm, out, "hydra.launcher.submit_only=true", *pause_first_attempt(markers))
    finish_sweep(slurm, process, out)
    sweep = out / "s"
    tasks = read_launch(sweep).slurm_tasks
    assert sorted(tasks.values()) == [[0, 1], [2, 3]], tasks
    paused = next(task for task, seeds in tasks.items() if seeds == [0, 1])
    wait_until(lambda: (markers.is_dir() and any(markers.iterdir()))
               and all(record_path(sweep, seed).is_file() for seed in (2, 3)), SWEEP_TIMEOUT_S,
               "seed 0's task to pause and seeds 2, 3 to be written", details=lambda: job_logs(out)[-2000:])
    running = status_of(slurm, sweep)
    assert running["trained"] == "2/4 models (1/2 jobs)"
    assert running["in flight"] == f"1 job(s), 2 seed(s): task {paused}: running"
    assert running["failed"] == "none" and running["state"] == "running"
    assert re.fullmatch(r"about .+ \([0-9.]+ s/model from its first job \(2 models\) of this launch\)",
                        running["time left"]), running["time left"]

    slurm.run("scancel", paused)
    wait_until(lambda: all(line.split()[0] != paused for line in slurm.queued()), COMMAND_TIMEOUT_S * 2,
               f"task {paused} to leave the queue")
    stopped = status_of(slurm, sweep)
    assert stopped["failed"] == f"1 job(s), 2 seed(s): task {paused}: left the queue without its records"
    assert stopped["in flight"] == "none" and stopped["state"].startswith("stopped: 2 seed(s) without a record")
