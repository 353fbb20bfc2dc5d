"""The Hydra entry point: command line → subset-training jobs, one record per seed.

    python -m src.run                                   # one job, seed 0
    python -m src.run -m seed=0..1999                   # 2,000 jobs (a..b is inclusive)
    python -m src.run -m experiment=fz_mnist seed=0..63 hydra/launcher=joblib

Before Hydra sees the command line, `a..b` seed ranges become `range(a, b+1)` (plain Hydra reads `0..1999` as
one string; src/sweep/seeds.py) and a -m command line is composed once (a bad override is one line); meminf's
sweeper (src/hydra_plugins/meminf_sweep/) then plans the sweep once per combination of its other keys (config and
data checked, seeds that are done dropped, the rest packed: src/sweep/plan.py). One run is planned here.
`--dry-run` stops after the plan and prints it (src/sweep/dryrun.py). Each job runs the estimator's job: the
subset job (src/training/job.py) or the estimator's own (turn-over dropout).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import src.config.compose  # noqa: F401  (registers the resolvers of conf/ before Hydra composes)
from src.config.paths import MULTIRUN_FILE
from src.contracts.records import RECORD_NAME, find_records
from src.errors import ConfigError, MeminfError
from src.sweep.seeds import MULTIRUN_FLAGS, expand_seed_ranges
from src.util.cli import USER_ERROR, CtrlC, cli_exit_code, one_line, os_error_line

DRY_RUN_FLAG = "--dry-run"
log = logging.getLogger("src.run")


# The sweep directory of the command being launched, for the line a Ctrl-C prints.
LAUNCHED: dict[str, Path] = {}


def plan_command_line(args: list[str]) -> list[str]:
    """The arguments Hydra gets. A -m sweep is composed once here, so that a bad override is one line before Hydra
    starts; meminf's sweeper plans it. One run is planned here (its job skips itself when its record is done)."""
    from src.config.paths import sweep_dir
    from src.sweep.plan import check_sweep_command, plan_sweep

    args = expand_seed_ranges(args)
    if any(arg in MULTIRUN_FLAGS for arg in args):  # (a print flag with -m was refused before)
        LAUNCHED["sweep"] = sweep_dir(check_sweep_command(args))
        return args
    plan = plan_sweep(args)
    if plan is None:
        return args
    LAUNCHED["sweep"] = sweep_dir(plan.cfg)
    for note in plan.notes:
        print(note, file=sys.stderr)
    return args


def limit_threads_under_joblib() -> None:
    """Parallel jobs on one machine: give each job cores // jobs threads, so jobs × threads <= cores."""
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return
    import torch

    cores = os.cpu_count() or 1
    n_jobs = int(launcher.get("n_jobs") or -1)
    jobs = min(cores, n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs))
    torch.set_num_threads(max(1, cores // jobs))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_entry(cfg: DictConfig) -> None:
    from src.config.paths import sweep_dir
    from src.estimators.registry import get_estimator
    from src.sweep.jobstate import job_marked
    from src.sweep.plan import runs_remotely
    from src.tracking.progress import in_multirun, per_seed_lines_to_job_log

    limit_threads_under_joblib()
    multirun = in_multirun()
    per_seed_lines_to_job_log(multirun and not HydraConfig.get().verbose)
    try:
        estimator = get_estimator(str(cfg.estimator.name))
        if estimator.trains == "own":
            run_job = estimator.run_job
        else:
            from src.training.job import run_job  # torch and Lightning load in the job, not before Hydra starts
        from src.training.devices import own_gpu

        CtrlC.check()  # a Ctrl-C lost in an earlier job or these imports (src/util/cli.py): stop before training
        with job_marked(sweep_dir(cfg), cfg.seed, cfg.get("seeds"), keep_failure=multirun), own_gpu(cfg):
            run_job(cfg)
        if multirun and not runs_remotely(str(HydraConfig.get().launcher.get("_target_", ""))):
            print_progress(sweep_dir(cfg))
    except (MeminfError, OSError) as err:
        remove_failed_job_dir(Path(HydraConfig.get().runtime.output_dir))
        log.error("seed=%s: %s", cfg.get("seed"), err)
        print(f"error: {one_line(str(err)) if isinstance(err, MeminfError) else os_error_line(err)}",
              file=sys.stderr)
        sys.exit(USER_ERROR)
    except KeyboardInterrupt:
        remove_failed_job_dir(Path(HydraConfig.get().runtime.output_dir))
        raise


def print_progress(sweep: Path) -> None:
    """The sweep's progress line as a job on this machine ends (a SLURM launcher prints it as it waits)."""
    from src.sweep.status import progress_line, sweep_status

    print(progress_line(sweep_status(sweep)), file=sys.stderr, flush=True)


def remove_failed_job_dir(job_dir: Path) -> None:
    """A failed job leaves no directory that holds no record (its log goes with it: the error was printed), and
    a sweep directory left holding no record, only Hydra's multirun.yaml and the launch's files (its launch file,
    job files), goes too."""
    from src.sweep.jobstate import JOBS_DIR, LAUNCH_FILE

    if job_dir.is_dir() and not any(job_dir.rglob(RECORD_NAME)):
        shutil.rmtree(job_dir, ignore_errors=True)
    sweep = job_dir.parent
    if sweep.is_dir() and {path.name for path in sweep.iterdir()} <= {MULTIRUN_FILE, LAUNCH_FILE, JOBS_DIR} \
            and not any(sweep.rglob(RECORD_NAME)):
        shutil.rmtree(sweep, ignore_errors=True)


# Hydra's flags that print instead of run: one at a time, and never with -m.
PRINT_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc")


def _plan_and_launch() -> None:
    flags = [arg for arg in sys.argv[1:] if arg in PRINT_FLAGS]
    if flags and any(arg in MULTIRUN_FLAGS for arg in sys.argv[1:]):
        raise ConfigError(f"{flags[0]} prints for one job and does not combine with -m: drop -m "
                          f"(python -m src.run {flags[0]} ... shows one job's config)")
    if DRY_RUN_FLAG in sys.argv[1:]:
        from src.sweep.dryrun import print_dry_run

        print_dry_run([arg for arg in sys.argv[1:] if arg != DRY_RUN_FLAG])
        return
    args = plan_command_line(sys.argv[1:])
    # -m first: Hydra's argparse takes the overrides as one positional list, so a flag between them splits it.
    sys.argv = [sys.argv[0], *sorted(args, key=lambda arg: arg not in MULTIRUN_FLAGS)]
    hydra_entry()


def interrupted() -> str:
    sweep = LAUNCHED.get("sweep")
    if sweep is None:
        return "nothing was launched"
    done = len(find_records(sweep)) if sweep.is_dir() else 0
    return f"{done} record(s) in {sweep}; relaunch the same command to train the rest"


def main() -> None:
    """Plan the command line and hand it to Hydra; with --dry-run, print the plan and launch nothing."""
    code = cli_exit_code(_plan_and_launch, interrupted)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
