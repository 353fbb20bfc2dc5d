"""The loggers of training jobs, named by the `logger` config's `_target_` (conf/logger/*.yaml, `_partial_`) and
called by src/training/trainer.py with the job's directory and a `JobInfo`.

- csv_logger: Lightning's CSVLogger, `metrics.csv` in the job's directory;
- wandb_logger: one wandb run per job (a packed job is one run for its P members), job_type train, grouped by
  experiment name, tagged dataset/model/ratio/pack/estimator plus `tags`, saved under the job's directory;
  offline automatically without credentials (src/tracking/wandb.py `wandb_mode`);
- no_logger: none (Lightning's `logger=False`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class JobInfo:
    experiment: str  # the experiment's name: the sweep directory, and the wandb group
    job: str  # the job's directory name: seed=<k> or pack=<first>-<last>
    tags: list[str]
    config: dict[str, Any]  # the resolved job config


def csv_logger(save_dir: Path, job: JobInfo) -> Any:
    from pytorch_lightning.loggers import CSVLogger

    return CSVLogger(save_dir=str(save_dir), name="", version="")


def no_logger(save_dir: Path, job: JobInfo) -> bool:
    return False


def wandb_logger(save_dir: Path, job: JobInfo, project: str, entity: str | None, mode: str,
                 tags: list[str]) -> Any:
    """The job's one run (named after its directory), saved under it."""
    from pytorch_lightning.loggers import WandbLogger

    from src.tracking.wandb import keep_wandb_files_in, wandb_mode

    save_dir.mkdir(parents=True, exist_ok=True)
    keep_wandb_files_in(save_dir.parent)  # the sweep directory: one set of wandb folders for all its jobs
    return WandbLogger(project=project, entity=entity, group=job.experiment, job_type="train",
                       name=f"{job.experiment}/{job.job}", tags=[*job.tags, *map(str, tags)], mode=wandb_mode(mode),
                       save_dir=str(save_dir), config=job.config)


def finish_logger(logger: Any) -> None:
    """At most one wandb run per job: close it whatever happened."""
    from pytorch_lightning.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        import wandb

        if wandb.run is not None:
            wandb.finish()
