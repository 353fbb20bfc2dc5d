"""The Trainer of a job: Lightning's Trainer from the `trainer` config, the logger from the `logger` config's
`_target_`, the cluster environment, and the DDP checks."""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.config.checks import CUDA_GRAPH_MODES, GPU_ACCELERATORS, MIXED
from src.errors import ConfigError
from src.util.cli import CtrlC

log = logging.getLogger(__name__)
# Notices that do not apply here, once per job in thousands of jobs: we train from in-memory tensors
# without workers on purpose, log per epoch only, and keep run.log beside metrics.csv in the seed dir.
# SRUN_HINT: the cluster environment is chosen here (cluster_plugins), so Lightning's advice to prepend srun,
# printed on every machine that has srun, is moot; Trainer.fit still asks SLURMEnvironment.detect() (whether
# to resume from an hpc checkpoint, which only Lightning's auto-requeue writes, off here) and so prints it.
SRUN_HINT = "The `srun` command is available on your system but is not used"
for noisy_logger in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
    logging.getLogger(noisy_logger).setLevel(logging.WARNING)
for notice in ("does not have many workers", "smaller than the logging interval",
               "exists and is not empty", "isinstance.treespec, LeafSpec", re.escape(SRUN_HINT)):
    warnings.filterwarnings("ignore", message=f".*{notice}.*")


@contextmanager
def job_logger(cfg: DictConfig, job_dir: Path, seeds: list[int], experiment_hash: str) -> Iterator[Any]:
    """The `logger` config's `_target_` (src/tracking/loggers.py) called for this job's directory, open from
    training to the members' final metrics; the job's wandb run (if any) is finished whatever happens, so that
    a job has at most one."""
    from src.tracking.loggers import JobInfo, finish_logger
    from src.training.module import epoch_logged

    info = JobInfo(experiment=str(cfg.name), job=job_dir.name, seeds=seeds, experiment_hash=experiment_hash,
                   tags=run_tags(cfg, len(seeds)), config=run_config(cfg, seeds), epoch_metrics=epoch_logged(seeds))
    logger = instantiate(cfg.logger)(save_dir=job_dir, job=info)
    try:
        yield logger
    finally:
        finish_logger(logger)


def run_config(cfg: DictConfig, seeds: list[int]) -> dict[str, Any]:
    """The resolved config with the job's seeds and pack in place of `seed` (the default 0 beside a packed job's
    seeds), `seeds` and `pack` (auto): a single-seed job's `seeds` is a list too."""
    config = OmegaConf.to_container(cfg, resolve=True)
    del config["seed"]
    return {**config, "seeds": seeds, "pack": len(seeds)}


def run_tags(cfg: DictConfig, pack: int) -> list[str]:
    return [f"dataset={cfg.dataset.name}", f"model={cfg.model.name}", f"ratio={cfg.subset.ratio}",
            f"pack={pack}", f"estimator={cfg.estimator.name}"]


def make_trainer(cfg: DictConfig, seed_dir: Path, logger: Any) -> pl.Trainer:
    """Lightning's Trainer; its progress bar follows `progress` (auto: a single run on a terminal)."""
    from src.tracking.progress import in_multirun, progress_enabled

    if str(cfg.trainer.get("accelerator", "cpu")) in GPU_ACCELERATORS:
        set_tf32(str(cfg.trainer.get("precision")))
    trainer_kwargs = {**OmegaConf.to_container(cfg.trainer, resolve=True),
                      "enable_progress_bar": progress_enabled(cfg.progress, sys.stdout, in_multirun())}
    # EpochPlan gives each DDP rank its share of every batch, so Lightning must not wrap it in a sampler.
    return pl.Trainer(**trainer_kwargs, logger=logger, default_root_dir=str(seed_dir), plugins=cluster_plugins(),
                      use_distributed_sampler=False)


def set_tf32(precision: str) -> None:
    """TensorFloat-32 (float32 range, 10-bit mantissa) for the float32 matmuls and convolutions of a GPU, set for
    every job rather than left to whatever a library imported on the way set (docs/PERFORMANCE.md, GPU defaults).

    Mixed precision: on; the layers already run in bf16 or fp16 under autocast, and what stays in float32 may
    round as TF32 too. 32-true: torch's defaults (matmuls in IEEE float32, cuDNN convolutions in TF32), with
    which every float32 GPU record so far was trained, so that a 32-true sweep goes on as it was trained (TF32
    matmuls would change its records at the rounding level without a new identity). The legacy `allow_tf32`
    flags, not torch's `fp32_precision`: after the latter, torch raises when Lightning reads the matmul
    precision (torch.get_float32_matmul_precision, in its CUDA accelerator's set-up; torch 2.14)."""
    torch.backends.cuda.matmul.allow_tf32 = precision in MIXED
    torch.backends.cudnn.allow_tf32 = True


INTERACTIVE_SLURM_JOB_NAMES = ("bash", "interactive")  # Lightning's names for "not a SLURM task" (SLURMEnvironment)


def cluster_plugins() -> list[Any]:
    """Lightning's cluster environment, chosen here instead of by Lightning's detection (docs/CLUSTER.md).

    - torchrun: its ranks (also when torchrun runs inside a SLURM task, `srun -n1 torchrun ...`);
    - a task of a SLURM job step (srun started this process: submitit's one task of an array job, or one DDP
      rank per task): SLURM's ranks, `SLURMEnvironment(auto_requeue=False)`. submitit (the launcher) requeues
      preempted and timed-out jobs; Lightning's own auto-requeue (an hpc checkpoint and `scontrol requeue` on
      its signal) stays off so that only one of them requeues, and a requeued job starts its seeds afresh;
    - anywhere else (a local sweep, a batch script or an allocation's shell without srun): one process, rank 0.

    Lightning's own detection asks SLURMEnvironment first, which warns on every machine that has `srun`
    (every login and compute node) that srun "is not used", and which reads a batch script's or allocation's
    `SLURM_NTASKS` as this process's world size (a 1-process job believing it is one of N ranks)."""
    from pytorch_lightning.plugins.environments import (
        LightningEnvironment,
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if TorchElasticEnvironment.detect():
        return [TorchElasticEnvironment()]
    if in_slurm_task():
        return [SLURMEnvironment(auto_requeue=False)]
    for environment in (LSFEnvironment, MPIEnvironment):  # the rest of Lightning's detection, in its order
        if environment.detect():
            return [environment()]
    return [LightningEnvironment()]


def in_slurm_task() -> bool:
    """This process is a task of a SLURM job step, as srun (and so submitit) starts it: srun sets SLURM_STEP_ID
    and the step's SLURM_NTASKS; a batch script or an allocation's shell has no step id. An interactive step
    (`srun --pty bash`, job name bash or interactive) is not one, as in Lightning."""
    return ("SLURM_STEP_ID" in os.environ and "SLURM_NTASKS" in os.environ
            and os.environ.get("SLURM_JOB_NAME") not in INTERACTIVE_SLURM_JOB_NAMES)


def train_module(cfg: DictConfig, module: pl.LightningModule, datamodule: pl.LightningDataModule,
                 directory: Path, logger: Any, pack: int) -> None:
    """Trainer.fit in `directory` with the job's logger (`job_logger`)."""
    trainer = make_trainer(cfg, directory, logger)
    check_ddp(trainer, pack)
    if trainer.world_size > 1:  # for the process group fit starts; once however many jobs this process runs
        atexit.unregister(end_process_group)
        atexit.register(end_process_group)
    with cuda_graph_skips_reported(compile_mode(cfg)):
        fit_interruptibly(trainer, module, datamodule)


def compile_mode(cfg: DictConfig) -> str | None:
    """torch.compile's mode for the members' forward (perf.compile, perf.compile_mode), or None: eager."""
    return str(cfg.perf.compile_mode) if cfg.perf.compile else None


@contextmanager
def cuda_graph_skips_reported(mode: str | None) -> Iterator[None]:
    """A warning when a CUDA-graph mode of torch.compile ran some graph without CUDA graphs: inductor then runs
    the compiled kernels one launch at a time (a graph whose inputs it saw mutated, such as BatchNorm statistics
    passed in, or one on several devices) and says so only to its `cudagraphs` log artifact."""
    if mode not in CUDA_GRAPH_MODES:
        yield
        return
    from torch._dynamo.utils import counters

    before = counters["inductor"]["cudagraph_skips"]
    yield
    skipped = counters["inductor"]["cudagraph_skips"] - before
    if skipped:
        log.warning("perf.compile_mode=%s: inductor ran %d compiled graph(s) of this job without CUDA graphs; "
                    "TORCH_LOGS=cudagraphs says why", mode, skipped)


def fit_interruptibly(trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule) -> None:
    """Trainer.fit, with Ctrl-C still a KeyboardInterrupt: Lightning answers one by ignoring SIGINT and calling
    sys.exit(1) (pytorch_lightning/trainer/call.py), which would end a sweep with no word and exit code 1; the
    entry point (src/run.py) instead removes the unfinished job's directory, says what finished and exits 130."""
    try:
        trainer.fit(module, datamodule=datamodule)
    except SystemExit as exited:
        if not trainer.interrupted:
            raise
        # Lightning ignores SIGINT now, and puts the handler back only if fit had got as far as saving it.
        signal.signal(signal.SIGINT, CtrlC.handle)
        raise KeyboardInterrupt from exited


def end_process_group() -> None:
    """The process group Lightning started for DDP is destroyed before the interpreter exits, as torch asks,
    rather than by its destructors during interpreter shutdown, where gloo could abort a rank ("terminate called
    without an active exception": docs/CLUSTER.md). Lightning registers the same for NCCL only."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_ddp(trainer: pl.Trainer, pack: int) -> None:
    """DDP (world size > 1) trains one model whose ranks were started outside Lightning (torchrun, SLURM tasks):
    ranks that Lightning starts itself would re-run the whole command line (a sweep) or, when spawned, hand
    back only the weights, without the per-example counts the record needs."""
    if trainer.world_size == 1:
        return
    if pack > 1:
        raise ConfigError(f"this job packs {pack} models but trains on {trainer.world_size} devices (DDP); "
                          "packing and DDP do not combine: add pack=1")
    from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher) or \
            not trainer.strategy.cluster_environment.creates_processes_externally:
        raise ConfigError(f"{type(trainer.strategy).__name__} would start the DDP ranks itself here; start "
                          "them with torchrun --nproc_per_node=N -m src.run ... or as SLURM tasks, with strategy=ddp")
