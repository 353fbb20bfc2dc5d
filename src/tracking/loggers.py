"""The loggers of training jobs, named by the `logger` config's `_target_` (conf/logger/*.yaml, `_partial_`) and
called by src/training/trainer.py with the job's directory and a `JobInfo`.

- csv_logger: Lightning's CSVLogger, `metrics.csv` in the job's directory;
- wandb_logger: one wandb run per job (a packed job is one run for its P members), job_type train, grouped by
  experiment name, tagged dataset/model/ratio/pack/estimator plus `tags`, saved under the job's directory;
  offline automatically without credentials (src/tracking/wandb.py `wandb_mode`). Its id is the job's
  (`JobInfo.run_id`), so a relaunched or requeued job continues its run; the epoch metrics are charted over
  `epoch`; the members' final metrics arrive once, after the evaluation pass (`log_members`); silent in a
  `-m` sweep but for warnings and errors;
- no_logger: none (Lightning's `logger=False`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_ID_CHARS = 16  # hex digits of a training run's id (64 bits; wandb allows any id without :;,#?/')
MEMBER_COLUMNS = ("seed", "test_acc", "train_in_acc", "train_out_acc")  # a member's final metrics (record meta)
MEMBERS_TABLE = "final/members"
EPOCH_STEP = "epoch"  # the x-axis of the epoch metrics (Lightning adds `epoch` to every row it logs)


@dataclass(frozen=True)
class JobInfo:
    experiment: str  # the experiment's name: the sweep directory, and the wandb group
    job: str  # the job's directory name: seed=<k> or pack=<first>-<last>
    seeds: list[int]  # the seeds the job trains
    experiment_hash: str  # the experiment's identity (src/contracts/identity.py)
    tags: list[str]
    config: dict[str, Any]  # the resolved job config with the job's `seeds` (no `seed`)
    epoch_metrics: list[str]  # the names the module logs once per epoch

    @property
    def run_id(self) -> str:
        """The same for every launch of this job (a relaunch, a SLURM requeue): its experiment's name and
        identity and its seeds. The name too, so that two sweeps of one experiment under two names (the wandb
        groups) stay two sets of runs."""
        blob = json.dumps([self.experiment, self.experiment_hash, self.seeds])
        return hashlib.sha256(blob.encode()).hexdigest()[:RUN_ID_CHARS]


def csv_logger(save_dir: Path, job: JobInfo) -> Any:
    from pytorch_lightning.loggers import CSVLogger

    return CSVLogger(save_dir=str(save_dir), name="", version="")


def no_logger(save_dir: Path, job: JobInfo) -> bool:
    return False


def wandb_logger(save_dir: Path, job: JobInfo, project: str, entity: str | None, mode: str,
                 tags: list[str]) -> Any:
    """The job's one run (named after its directory), saved under it, resumed when its id has one already."""
    import wandb
    from pytorch_lightning.loggers import WandbLogger
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from src.tracking.progress import in_multirun
    from src.tracking.wandb import keep_wandb_files_in, stage_artifacts_in_run, wandb_mode

    if rank_zero_only.rank != 0:  # DDP (the rank from torchrun's or srun's environment): rank 0 logs, and
        return WandbLogger(save_dir=str(save_dir))  # Lightning's logger starts no run on the other ranks
    save_dir.mkdir(parents=True, exist_ok=True)
    keep_wandb_files_in(save_dir.parent)
    # Started here rather than by WandbLogger, which passes wandb.init `anonymous=None` and so has wandb warn
    # "The anonymous setting has no effect" once per process. silent: a sweep's jobs print wandb's warnings and
    # errors only, not its ~20 lines a run (where the run is saved, its history and summary).
    run = wandb.init(project=project, entity=entity, group=job.experiment, job_type="train",
                     name=f"{job.experiment}/{job.job}", tags=[*job.tags, *map(str, tags)], mode=wandb_mode(mode),
                     dir=str(save_dir), config=job.config, id=job.run_id, resume="allow",
                     settings=wandb.Settings(silent=in_multirun()))
    stage_artifacts_in_run(run)  # its tables are staged in its own folder, nothing beside it in the sweep
    # Lightning adds trainer/global_step to every row; its own definitions (made only when it starts the run)
    # would chart everything over the step.
    run.define_metric(EPOCH_STEP)
    for name in job.epoch_metrics:
        run.define_metric(name, step_metric=EPOCH_STEP)
    return WandbLogger(experiment=run, save_dir=str(save_dir))


def log_members(logger: Any, metas: Sequence[Mapping[str, Any]]) -> None:
    """A wandb run's final metrics of the job's members (their records' meta): a table, one row per member, and
    their means as `final/<metric>` in the summary (the same keys in every run: with pack=1, each seed's own).
    Other loggers: nothing (the records hold them)."""
    from pytorch_lightning.loggers import WandbLogger

    if not isinstance(logger, WandbLogger) or not metas:
        return
    import wandb

    rows = [[meta[column] for column in MEMBER_COLUMNS] for meta in metas]
    run = logger.experiment
    run.log({MEMBERS_TABLE: wandb.Table(columns=list(MEMBER_COLUMNS), data=rows)})
    for k, column in enumerate(MEMBER_COLUMNS[1:], start=1):
        values = [row[k] for row in rows if row[k] is not None]  # train_out_acc: None at subset.ratio 1
        if values:
            run.summary[f"final/{column}"] = sum(values) / len(values)


def finish_logger(logger: Any) -> None:
    """At most one wandb run per job: close it whatever happened."""
    from pytorch_lightning.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        import wandb

        if wandb.run is not None:
            wandb.finish()
