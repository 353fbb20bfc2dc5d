"""One subset-training job: seeds → subsets → one packed Lightning fit → evaluate every example → one record per
seed. Under DDP (trainer=ddp) each rank trains on its share of every batch and rank 0 writes the records
(docs/CLUSTER.md)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from src.config.checks import GPU_ACCELERATORS, check_device, check_pack, config_hash, validate_config
from src.config.paths import job_seed_list, job_subdir, seed_record_path, sweep_dir
from src.contracts.io import remove_stale_temps, write_atomic
from src.contracts.records import Record, write_record
from src.data.dataset import Dataset, load_dataset
from src.data.subsets import check_seed, subset_mask, subset_seed
from src.errors import ConfigError, TrainingError
from src.estimators.registry import record_scores
from src.models.build import build_model
from src.models.packing import CHANNELS_LAST_MECHANISMS, SINGLE, Members
from src.sweep.done import MODEL_FILE, Wanted, record_state, refuse_foreign
from src.sweep.plan import check_grouped_forward, check_packing, pack_mechanism
from src.tracking.loggers import log_members
from src.training.epochs import SubsetDataModule
from src.training.module import SubsetClassifier
from src.training.record import member_record
from src.training.trainer import compile_mode, job_logger, train_module

log = logging.getLogger(__name__)


def job_seeds(cfg: DictConfig) -> list[int]:
    """The seeds this job trains: `seeds` (a packed job, grouped at launch) or the single `seed`."""
    seeds = job_seed_list(cfg.seed, cfg.get("seeds"))
    for seed in seeds:
        check_seed(seed)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} repeats a seed; give each seed once")
    return seeds


def run_job(cfg: DictConfig) -> list[Path]:
    """Train this job's seeds (one model each, packed when several) and write one record per seed.

    Seeds that are done (src/sweep/done.py, the launcher's rule) are left out; returns the records written.
    """
    started = time.perf_counter()
    validate_config(cfg)
    check_device(cfg.trainer)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    wanted = Wanted.of(cfg, dataset.fingerprint)
    requested = job_seeds(cfg)
    seeds = [seed for seed in requested if _trains(seed_record_path(cfg, seed), wanted)]
    if len(seeds) < len(requested):
        log.info("%d record(s) exist, skipped; %d seed(s) to train", len(requested) - len(seeds), len(seeds))
    if not seeds:
        return []
    for seed in seeds:
        remove_stale_temps(seed_record_path(cfg, seed))
    masks = np.stack([subset_mask(subset_seed(seed, cfg.subset.repeats), len(dataset.y_train), cfg.subset.ratio,
                                  cfg.subset.salt, cfg.subset.size_rule) for seed in seeds])
    job_dir = sweep_dir(cfg) / job_subdir(seeds[0], seeds)
    with job_logger(cfg, job_dir, seeds, wanted.experiment_hash) as logger:
        module = fit(cfg, dataset, seeds, masks, job_dir, logger)
        # DDP: the ranks hold the same weights; rank 0 evaluates and writes while the others wait for it, so that
        # no rank runs ahead into the next job or out of the process (docs/CLUSTER.md). One device: the barrier is
        # a no-op.
        written = write_job(cfg, dataset, seeds, masks, module, wanted.experiment_hash, started, logger) \
            if module.global_rank == 0 else []
        module.trainer.strategy.barrier("job end")
    return written


def write_job(cfg: DictConfig, dataset: Dataset, seeds: list[int], masks: np.ndarray, module: SubsetClassifier,
              exp_hash: str, started: float, logger: Any) -> list[Path]:
    """Evaluate every example with the trained members; one record per member whose loss stayed finite, and
    their final metrics to the job's logger (src/tracking/loggers.py `log_members`)."""
    batch = int(cfg.dataset.eval_batch_size)
    train, test = (module.evaluate(split, batch) for split in ("train", "test"))
    wall_time = (time.perf_counter() - started) / len(seeds)
    written, metas = [], []
    for k in np.flatnonzero(module.alive.cpu().numpy()):
        record = member_record(cfg, dataset, seeds[k], masks[k], exp_hash, module.member_outputs(k, train, test),
                               pack=len(seeds), wall_time=wall_time, device=str(module.device),
                               torch_threads=torch.get_num_threads())
        written.append(write_record(seed_record_path(cfg, seeds[k]), record))
        if cfg.record.save_model:
            save_weights(module.members.member_state_dict(k), written[-1].parent / MODEL_FILE)
        log_record(record)
        metas.append(record.meta)
    log_job(metas, time.perf_counter() - started)
    log_members(logger, metas)
    dead = [seeds[k] for k in range(len(seeds)) if not module.alive[k]]
    if dead:
        raise TrainingError(f"seeds {dead} diverged (loss not finite) and wrote no record; the other "
                            f"{len(written)} did. Lower optim.lr, or rerun them alone with seed=<k>")
    return written


def _trains(path: Path, wanted: Wanted) -> bool:
    state = record_state(path, wanted)
    refuse_foreign(path, state, wanted)
    if state.reason and state.trains:
        log.info("%s %s: retrained", path, state.reason)
    return state.trains


def build_members(cfg: DictConfig, dataset: Dataset, seeds: list[int]) -> Members:
    check_packing(cfg, len(seeds))  # before anything is built
    models = []
    for seed in seeds:
        pl.seed_everything(seed, workers=False, verbose=False)  # seed k's initialisation, as if alone
        models.append(build_model(cfg.model, dataset.input_shape, dataset.num_classes, check_forward=not models))
    mechanism = pack_mechanism(cfg.model, str(cfg.perf.packing)) if len(seeds) > 1 else SINGLE
    if len(seeds) > 1:
        check_grouped_forward(cfg, models[0], dataset.input_shape)
    channels_last = uses_channels_last(cfg, dataset, mechanism)
    if channels_last:
        models = [model.to(memory_format=torch.channels_last) for model in models]
    arch_key = json.dumps([OmegaConf.to_container(cfg.model, resolve=True), dataset.input_shape,
                           dataset.num_classes, channels_last], sort_keys=True)
    return Members(models, arch_key, mechanism, compile=compile_mode(cfg), channels_last=channels_last)


def uses_channels_last(cfg: DictConfig, dataset: Dataset, mechanism: str) -> bool:
    """perf.channels_last: NHWC inputs and weights for an image model unpacked or in a grouped pack (a vmap pack
    cannot keep the layout); `auto` takes it on a GPU, where convolutions in bf16 and TF32 run in NHWC on the
    tensor cores (docs/PERFORMANCE.md, GPU defaults)."""
    setting = cfg.perf.channels_last
    applies = dataset.is_image and mechanism in CHANNELS_LAST_MECHANISMS
    if setting == "auto":
        return applies and str(cfg.trainer.get("accelerator", "cpu")) in GPU_ACCELERATORS
    if setting and not applies:
        raise ConfigError("perf.channels_last applies to image models unpacked or in a grouped pack: use pack=1, "
                          "perf.packing=grouped, or drop it")
    return bool(setting)


def fit(cfg: DictConfig, dataset: Dataset, seeds: list[int], masks: np.ndarray, job_dir: Path | None = None,
        logger: Any = None) -> SubsetClassifier:
    """The members of `seeds` trained on `masks`, in the job's directory (default: the sweep's for these seeds) with
    the job's logger (default: one opened and finished for this fit, as src.removal and src.lastlayer train)."""
    job_dir = job_dir if job_dir is not None else sweep_dir(cfg) / job_subdir(seeds[0], seeds)
    if logger is not None:
        return _fit(cfg, dataset, seeds, masks, job_dir, logger)
    with job_logger(cfg, job_dir, seeds, config_hash(cfg, dataset.fingerprint)) as opened:
        return _fit(cfg, dataset, seeds, masks, job_dir, opened)


def _fit(cfg: DictConfig, dataset: Dataset, seeds: list[int], masks: np.ndarray, job_dir: Path,
         logger: Any) -> SubsetClassifier:
    check_pack(cfg.trainer, len(seeds))
    augment = cfg.dataset.augment
    members = build_members(cfg, dataset, seeds)
    module = SubsetClassifier(members, cfg.optim, cfg.schedule, dataset,
                              list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std),
                              augment.crop_padding, augment.hflip, members.channels_last,
                              tuple(cfg.record.epochs), int(cfg.dataset.eval_batch_size),
                              tuple(record_scores(cfg.record.scores, cfg.record)))
    datamodule = SubsetDataModule(masks, seeds, cfg.batch_size, augment.crop_padding, augment.hflip)
    train_module(cfg, module, datamodule, job_dir, logger, pack=len(seeds))
    return module


def log_record(record: Record) -> None:
    meta = record.meta
    out_acc = "-" if meta["train_out_acc"] is None else f"{meta['train_out_acc']:.4f}"
    log.info("seed=%d in-subset acc %.4f out acc %s test acc %.4f (%.2f s/model, pack %d)", meta["seed"],
             meta["train_in_acc"], out_acc, meta["test_acc"], meta["wall_time_s"], meta["pack"])


def log_job(metas: list[dict[str, Any]], seconds: float) -> None:
    """The job's one summary line: its seeds, mean in-subset and test accuracy, wall time."""
    if not metas:
        return
    seeds = [meta["seed"] for meta in metas]
    log.info("job seeds %s: %d model(s), mean in-subset acc %.4f, mean test acc %.4f, %.1f s", job_subdir(
        seeds[0], seeds).split("=", 1)[1], len(metas), np.mean([meta["train_in_acc"] for meta in metas]),
        np.mean([meta["test_acc"] for meta in metas]), seconds)


def save_weights(state: dict[str, torch.Tensor], path: Path) -> Path:
    """A plain state dict (tensors only: loads with weights_only=True), written atomically."""
    return write_atomic(path, lambda handle: torch.save({k: v.cpu() for k, v in state.items()}, handle))
