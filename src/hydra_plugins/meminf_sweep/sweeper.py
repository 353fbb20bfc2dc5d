"""meminf's sweeper: a -m sweep planned once per combination of its keys' values and handed to the launcher whole
(to a launcher that can take it: the SLURM launcher of slurm.py) or in batches, with no per-job re-composition.

Hydra's basic sweeper composes and validates every job config of a batch before the batch starts
(`validate_batch_is_legal`, ~0.22 s a job: docs/PERFORMANCE.md) and hands the launcher one batch of
`max_batch_size` jobs at a time, waiting for its results before the next: on SLURM that caps a sweep at one array
of 16 tasks at a time. This one takes the cartesian product of the overrides other than `seed`, and for each
combination composes the config once (the command line's own config when nothing but seeds is swept), checks it
and the data, drops the seeds that are done and groups the rest into packs (src/sweep/plan.py `plan_jobs`): a bad
sweep is one `error:` line and exit 2 before anything launches. Every job composes its own config as it starts.
A launcher with `takes_whole_sweep` gets every job at once; others get batches of `max_batch_size`, in order.
Before launching, each combination's sweep directory gets its launch file (src/sweep/jobstate.py: what the
progress lines, `python -m src.status` and `--dry-run` read); when the launcher returns, or a job's error stops
the sweep, each prints its closing summary (src/sweep/status.py `closing_lines`).

Hydra imports every module under `hydra_plugins` when it starts (without `sys.modules`, so no `from __future__
import annotations` here: dataclasses would not find the module), so this one imports only Hydra at the top and
meminf's planning when it sweeps.
"""


import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

SEED_KEY = "seed"  # the key whose values are planned and packed; every other swept key is a combination


@dataclass
class MeminfSweeperConf:
    _target_: str = "hydra_plugins.meminf_sweep.sweeper.MeminfSweeper"
    max_batch_size: int = 16  # jobs handed at once to a launcher that runs them on this machine


ConfigStore.instance().store(group="hydra/sweeper", name="meminf", node=MeminfSweeperConf, provider="meminf")


class MeminfSweeper(Sweeper):
    def __init__(self, max_batch_size: int) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                 task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        from src.config.paths import MULTIRUN_FILE
        from src.sweep.status import begin_launches, end_launches

        assert self.config is not None and self.launcher is not None
        planned = self.plan(arguments)
        if not planned:
            return []  # every seed is done: nothing launches, nothing is written
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN_FILE)
        jobs = [job.overrides for job in planned]
        self.launcher.planned_jobs = planned  # the SLURM launcher records its array tasks' seeds (slurm.py)
        sweeps = begin_launches(planned, type(self.launcher).__name__)
        size = len(jobs) if getattr(self.launcher, "takes_whole_sweep", False) else self.max_batch_size
        returns: list[JobReturn] = []
        try:
            for start in range(0, len(jobs), size):
                returns.extend(self.launcher.launch(jobs[start:start + size], initial_job_idx=start))
        except KeyboardInterrupt:
            raise
        except BaseException:
            end_launches(sweeps)  # a job's error stopped the sweep: what it did
            raise
        if not getattr(self.launcher, "submit_only", False):  # else the jobs go on: src.status follows them
            end_launches(sweeps)
        for job_return in returns:
            _ = job_return.return_value  # raises the job's error, as Hydra's basic sweeper does
        return returns

    def plan(self, arguments: list[str]) -> list[Any]:
        """Every job (src/sweep/plan.py `PlannedJob`); a bad sweep prints one `error:` line and exits 2 (Hydra
        would print a traceback for an exception raised here)."""
        import sys

        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        from src.sweep.plan import plan_jobs, runs_remotely
        from src.util.cli import cli_exit_code

        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(arguments)
        seed_sweeps = [o for o in overrides if o.key_or_group == SEED_KEY and o.is_sweep_override()]
        others = [o for o in overrides if o not in seed_sweeps]
        [combinations] = BasicSweeper.split_arguments(others, None)
        seeds = [int(job[0].split("=", 1)[1]) for job in BasicSweeper.split_arguments(seed_sweeps, None)[0]] \
            if seed_sweeps else None
        swept = any(o.is_sweep_override() for o in others)
        launcher = str(self.config.hydra.launcher.get("_target_", ""))
        jobs: list[Any] = []
        code = cli_exit_code(lambda: jobs.extend(plan_jobs(
            combinations, seeds, self.compose if swept else lambda _: without_hydra(self.config),
            local=not runs_remotely(launcher))))
        if code:
            sys.exit(code)
        return jobs

    def compose(self, overrides: list[str]) -> DictConfig:
        """One combination's job config, composed the way the launcher will compose its jobs."""
        from hydra.errors import HydraException

        from src.config.compose import hydra_message
        from src.errors import ConfigError

        assert self.config is not None and self.hydra_context is not None
        try:
            return without_hydra(self.hydra_context.config_loader.load_sweep_config(self.config, overrides))
        except HydraException as err:
            raise ConfigError(hydra_message(err, overrides)) from err


def without_hydra(cfg: DictConfig) -> DictConfig:
    """A composed config without its `hydra` node: the job's config as the task function sees it."""
    from omegaconf import open_dict, read_write

    job = copy.deepcopy(cfg)
    with read_write(job), open_dict(job):
        del job["hydra"]
    return job
