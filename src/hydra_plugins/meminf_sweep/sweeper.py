"""meminf's sweeper: Hydra's cartesian product of the overrides, handed to the launcher without Hydra's per-batch
re-composition, and as one whole sweep to a launcher that can take it (the SLURM launcher of slurm.py).

Hydra's basic sweeper composes and validates every job config of a batch before the batch starts
(`validate_batch_is_legal`, ~0.22 s a job: docs/PERFORMANCE.md) and hands the launcher one batch of
`max_batch_size` jobs at a time, waiting for its results before the next: on SLURM that caps a sweep at one array
of 16 tasks at a time. The launcher's pre-flight (src/sweep/plan.py) has already composed and checked the config
once per sweep and grouped the seeds into packs (`seeds=[...],[...]`), and every job composes its own config as it
starts; so this sweeper validates nothing per job. A launcher with `takes_whole_sweep` gets every job at once;
others get batches of `max_batch_size`, in order.

Hydra imports every module under `hydra_plugins` when it starts (without `sys.modules`, so no `from __future__
import annotations` here: dataclasses would not find the module), so this one imports only Hydra.
"""


from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of the sweep's config, in the sweep directory


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
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        [jobs] = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN_FILE)
        size = len(jobs) if getattr(self.launcher, "takes_whole_sweep", False) else self.max_batch_size
        returns: list[JobReturn] = []
        for start in range(0, len(jobs), size):
            returns.extend(self.launcher.launch(jobs[start:start + size], initial_job_idx=start))
        for job_return in returns:
            _ = job_return.return_value  # raises the job's error, as Hydra's basic sweeper does
        return returns
