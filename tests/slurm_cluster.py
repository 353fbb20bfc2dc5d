"""A single-node SLURM cluster from Debian's slurm-wlm and munge, for tests/test_slurm.py; docs/CLUSTER.md ("Try
the preset on a local cluster") starts the same cluster by hand (tests/test_launchers.py checks that its slurm.conf
is this one).

Everything lives in one directory: munge's key and socket, slurm.conf, the daemons' state, spool, pid and log
files. munged, slurmctld and slurmd run in the foreground as children of the test session, as root
(`SlurmUser=root`; jobs run as the user who submits them), without cgroups (`proctrack/linuxproc`,
`task/none`) and without accounting (no slurmdbd: `sacct` fails, which submitit reports on every poll and reads
as "state unknown"), on two free ports so that a machine's own SLURM is left alone. `MaxArraySize=8`: array
indices 0..7. `cred_expire=10`: a requeued job may start again 11 s after its requeue (SLURM's default 120 s),
and the scheduler looks every 5 s (`sched_interval`, default 60 s) to start it.

Nothing is installed here: .ci/run installs the packages. Without them the tests skip with the reason, except
when MEMINF_REQUIRE_SLURM=1 (.ci/run sets it): then they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRE_ENV = "MEMINF_REQUIRE_SLURM"
PACKAGES = "slurm-wlm munge"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
MAX_ARRAY_SIZE = 8
START_TIMEOUT_S = 90  # munged, slurmctld and slurmd start in ~1 s on an idle 2-core machine; the node is idle
COMMAND_TIMEOUT_S = 30  # one client command (squeue, scontrol, scancel)
STOP_TIMEOUT_S = 30  # jobs cancelled, then each daemon after SIGTERM (SIGKILL after that)
NODE_MEMORY_SHARE = 0.9  # RealMemory below what slurmd -C finds, so that the node is never drained as too small

# The configuration, also shown in docs/CLUSTER.md with shell variables in place of the values.
SLURM_CONF = """\
ClusterName=meminf
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
MpiDefault=none
MaxArraySize={max_array_size}
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def slurm_conf(*, root: str, host: str, cpus: int | str, memory_mb: int | str, ctld_port: int | str = 6817,
               slurmd_port: int | str = 6818) -> str:
    return SLURM_CONF.format(root=root, host=host, cpus=cpus, memory_mb=memory_mb, ctld_port=ctld_port,
                             slurmd_port=slurmd_port, max_array_size=MAX_ARRAY_SIZE)


def program(name: str) -> str | None:
    """The path of one of PROGRAMS: on PATH, or in the sbin directories (not on a Debian user's PATH)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if program(name) is None]


def require_slurm() -> None:
    """Skip (or, with MEMINF_REQUIRE_SLURM=1, fail) where SLURM's and munge's programs are not installed, or
    where this is not root (the daemons run as root)."""
    import pytest

    missing = missing_programs()
    if missing:
        reason = (f"SLURM is not installed ({', '.join(missing)} not found): apt-get install {PACKAGES} "
                  "(.ci/run does)")
    elif os.geteuid() != 0:
        reason = "the local SLURM cluster's daemons run as root; run the SLURM tests as root"
    else:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires it")
    pytest.skip(reason)


def node_resources() -> tuple[int, int]:
    """(CPUs, RealMemory in MB) of this machine as slurmd sees it (`slurmd -C`), memory times NODE_MEMORY_SHARE."""
    found = subprocess.run([str(program("slurmd")), "-C"], capture_output=True, text=True,
                           timeout=COMMAND_TIMEOUT_S).stdout
    cpus, memory = (re.search(rf"\b{key}=(\d+)", found) for key in ("CPUs", "RealMemory"))
    if cpus is None or memory is None:
        raise RuntimeError(f"slurmd -C printed no CPUs= or RealMemory=: {found!r}")
    return int(cpus.group(1)), int(int(memory.group(1)) * NODE_MEMORY_SHARE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, *, every_s: float = 1.0,
               details: Callable[[], str] = lambda: "") -> Any:
    """condition()'s first true value within timeout_s; else AssertionError saying what was awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f} s for {what}; {details()}")
        time.sleep(every_s)


@dataclass
class LocalSlurm:
    """A running single-node cluster: `env` is the environment to run SLURM's clients (and sweeps) under."""

    root: Path
    host: str
    cpus: int
    memory_mb: int
    env: dict[str, str] = field(default_factory=dict)
    daemons: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def run(self, *command: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
            ) -> subprocess.CompletedProcess:
        result = subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld still holds (finished ones for MinJobAge): job id (array tasks as <job>_<task>)
        → `scontrol show job` fields."""
        out = self.run("scontrol", "show", "jobs", "--oneliner").stdout
        jobs = {}
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" not in fields:
                continue
            task = fields.get("ArrayTaskId")
            key = f"{fields['ArrayJobId']}_{task}" if task and task.isdigit() else fields["JobId"]
            jobs[key] = fields
        return jobs

    def queued(self) -> list[str]:
        """Jobs pending, running or completing (squeue)."""
        return self.run("squeue", "--noheader", "--format=%i %T").stdout.split("\n")[:-1]

    def logs(self, lines: int = 20) -> str:
        tails = []
        for path in sorted((self.root / "log").glob("*.*")):
            tails.append(f"--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(tails)

    def start(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket directory that not everyone can enter, and a key others can read.
        for path in (self.root, self.root / "munge"):
            path.chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(slurm_conf(root=str(self.root), host=self.host, cpus=self.cpus,
                                        memory_mb=self.memory_mb, ctld_port=free_port(), slurmd_port=free_port()))
        munge = self.root / "munge"
        self.env = {**{name: value for name, value in os.environ.items() if not name.startswith("SLURM_")},
                    "SLURM_CONF": str(self.conf)}
        self._daemon("munged", "--foreground", f"--key-file={key}", f"--socket={munge}/munge.socket",
                     f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed",
                     f"--log-file={self.root}/log/munged.log")
        wait_until(lambda: (munge / "munge.socket").exists(), START_TIMEOUT_S, "munged's socket",
                   every_s=0.2, details=self.logs)
        self._daemon("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._daemon("slurmd", "-D", "-f", str(self.conf), "-N", self.host)
        wait_until(self._node_idle, START_TIMEOUT_S, f"node {self.host} idle in sinfo", details=self.logs)

    def _daemon(self, *command: str) -> None:
        log = (self.root / "log" / f"{command[0]}.out").open("ab")
        # A session of its own: a Ctrl-C in the terminal goes to pytest, whose teardown stops the daemons.
        self.daemons.append(subprocess.Popen([str(program(command[0])), *command[1:]], env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
        time.sleep(0.2)
        if self.daemons[-1].poll() is not None:
            raise RuntimeError(f"{command[0]} exited {self.daemons[-1].returncode} at start:\n{self.logs()}")

    def _node_idle(self) -> bool:
        if any(daemon.poll() is not None for daemon in self.daemons):
            raise RuntimeError(f"a SLURM daemon exited while starting:\n{self.logs()}")
        result = self.run("sinfo", "--noheader", "--Node", "--format=%T", check=False)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def stop(self) -> None:
        """Cancel every job, wait (bounded) until none runs, then stop the daemons (SIGTERM, then SIGKILL)."""
        if self.daemons and self.daemons[0].poll() is None:
            try:
                self.run("scancel", "--full", f"--user={os.getuid()}", check=False)
                wait_until(lambda: not self.queued(), STOP_TIMEOUT_S, "the cancelled jobs to end")
            except (AssertionError, subprocess.SubprocessError, OSError):
                pass  # stop the daemons regardless
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(STOP_TIMEOUT_S)
        self.daemons.clear()


def start_cluster(root: Path | None = None) -> LocalSlurm:
    """Write the configuration into `root` (a new temporary directory if None) and start the cluster."""
    root = Path(tempfile.mkdtemp(prefix="meminf-slurm-")) if root is None else root
    cpus, memory_mb = node_resources()
    cluster = LocalSlurm(root=root, host=socket.gethostname().split(".")[0], cpus=cpus, memory_mb=memory_mb)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


# ------------------------------------------------------------------------------------- jobs the tests shape


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover (Hydra is a dependency)
    Callback = object  # type: ignore[assignment,misc]


class PauseFirstAttempt(Callback):  # type: ignore[misc]
    """A Hydra callback the SLURM tests add on the command line (`+hydra.callbacks.pause._target_=...`): the
    first attempt of the job that trains `seed` (SLURM_RESTART_COUNT unset or 0) writes its SLURM job id to
    `<marker_dir>/<job id>` and sleeps `seconds`, a running task to preempt, requeue or time out: `at` start,
    before it trains, or at its end, after its records are written and before submitit saves its result. A
    requeued attempt does not pause. It runs in the job's process, under submitit's signal handlers."""

    def __init__(self, marker_dir: str, seconds: float, seed: int = 0, at: str = "start") -> None:
        if at not in ("start", "end"):
            raise ValueError(f"at={at!r}: start or end")
        self.marker_dir, self.seconds, self.seed, self.at = Path(marker_dir), float(seconds), int(seed), at

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if self.at == "start":
            self._pause(config)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if self.at == "end":
            self._pause(config)

    def _pause(self, config: Any) -> None:
        seeds = config.get("seeds") or [config.get("seed")]
        if self.seed not in seeds or int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
            return
        array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job_id = f"{array_job}_{task}" if array_job and task else os.environ["SLURM_JOB_ID"]
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        (self.marker_dir / job_id).write_text(f"{os.getpid()}\n")
        time.sleep(self.seconds)


def probe_trainer() -> dict[str, Any]:
    """Run inside a SLURM job (submitit, or a batch script): the cluster environment that make_trainer's Trainer
    and Lightning's own default Trainer get, [rank, world size] as that environment reads them, the Trainer's
    rank and world size, and the warnings each construction emitted."""
    import warnings

    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from src.training.trainer import make_trainer

    def built(make: Callable[[], pl.Trainer]) -> dict[str, Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                trainer = make()
            except Exception as err:  # Lightning's own detection may refuse the job
                return {"error": f"{type(err).__name__}: {err}",
                        "warnings": [str(warning.message) for warning in caught]}
        environment = trainer._accelerator_connector.cluster_environment
        return {"environment": type(environment).__name__,
                "environment_rank": [environment.global_rank(), environment.world_size()],
                "global_rank": trainer.global_rank, "world_size": trainer.world_size,
                "warnings": [str(warning.message) for warning in caught]}

    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1},
                            "progress": False})
    return {"make_trainer": built(lambda: make_trainer(cfg, Path(tempfile.mkdtemp()), logger=False)),
            "lightning_default": built(lambda: pl.Trainer(accelerator="cpu", devices=1, logger=False,
                                                          enable_progress_bar=False))}


def main() -> None:
    """python -m tests.slurm_cluster [DIR]: start the cluster in DIR (a new temporary directory by default), print
    its SLURM_CONF, and keep it until Ctrl-C or SIGTERM (then cancel its jobs and stop the daemons)."""
    import sys

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = start_cluster(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(f"export SLURM_CONF={started.conf}  # a cluster in {started.root}; Ctrl-C stops it", flush=True)
    try:
        while all(daemon.poll() is None for daemon in started.daemons):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        started.stop()


if __name__ == "__main__":
    main()
