"""One subset-training job: seed → subset → Lightning fit → evaluate every example → record.

Data stay in memory as tensors. Each epoch's order and augmentation draws come from
(seed, epoch) alone (`EpochPlan`), so a job is reproducible and a later packed trainer can give each
member the same data a single run sees. Batches are gathered by index (`x[idx]`): no per-sample Python
work and no worker processes. Augmentation (pad-crop, horizontal flip) runs on the training device.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import subprocess
import time
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler

from src.data import Dataset, load_dataset, record_extras
from src.errors import ConfigError, TrainingError
from src.experiment import experiment_hash, seed_record_path, sweep_dir, validate_config
from src.models import build_model
from src.records import FORMAT_VERSION, Record, RecordError, read_meta, remove_stale_temps, write_record
from src.subsets import subset_mask

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Notices that do not apply here, once per job in thousands of jobs: we train from in-memory tensors
# without workers on purpose, log per epoch only, and keep run.log beside metrics.csv in the seed dir.
for noisy_logger in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
    logging.getLogger(noisy_logger).setLevel(logging.WARNING)
for notice in ("does not have many workers", "smaller than the logging interval",
               "exists and is not empty", "isinstance.treespec, LeafSpec"):
    warnings.filterwarnings("ignore", message=f".*{notice}.*")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class EpochPlan(Sampler):
    """Yields, per batch, (indices, crop shifts, flips) drawn from (seed, epoch) only."""

    def __init__(self, n: int, batch_size: int, seed: int, crop_padding: int, hflip: bool) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.crop_padding, self.hflip = crop_padding, hflip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        gen = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(self.n, generator=gen)
        shifts = torch.randint(0, 2 * self.crop_padding + 1, (self.n, 2), generator=gen)
        flips = torch.rand(self.n, generator=gen) < 0.5 if self.hflip else torch.zeros(self.n, dtype=torch.bool)
        for idx in order.split(self.batch_size):
            yield idx, shifts[idx], flips[idx]


class BatchGather(torch.utils.data.Dataset):
    """`dataset[(idx, shifts, flips)]` → the whole batch by tensor indexing."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __getitem__(self, plan: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        idx, shifts, flips = plan
        return self.x[idx], self.y[idx], shifts, flips

    def __len__(self) -> int:
        return len(self.y)


class SubsetDataModule(pl.LightningDataModule):
    def __init__(self, dataset: Dataset, subset_mask: np.ndarray, seed: int, batch_size: int,
                 crop_padding: int, hflip: bool) -> None:
        super().__init__()
        subset_idx = np.flatnonzero(subset_mask)
        self.x = torch.from_numpy(dataset.x_train[subset_idx])
        self.y = torch.from_numpy(dataset.y_train[subset_idx])
        self.plan = EpochPlan(len(subset_idx), batch_size, seed, crop_padding, hflip)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(BatchGather(self.x, self.y), sampler=self.plan, batch_size=None, num_workers=0)


def pad_crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Random-crop with zero padding (torchvision's RandomCrop(size, padding)) and flip, per example."""
    if padding:
        batch, _, height, width = x.shape
        padded = F.pad(x, (padding,) * 4).permute(0, 2, 3, 1)
        rows = shifts[:, 0, None] + torch.arange(height, device=x.device)
        cols = shifts[:, 1, None] + torch.arange(width, device=x.device)
        batch_idx = torch.arange(batch, device=x.device)[:, None, None]
        x = padded[batch_idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return torch.where(flips[:, None, None, None], x.flip(3), x)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, milestones: list[int],
              gamma: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    raise ConfigError(f"optim.schedule={schedule!r} is unknown; use constant, cosine, linear or step")


class SubsetClassifier(pl.LightningModule):
    """Cross-entropy classifier on raw stored inputs: scaling, augmentation and normalisation inside."""

    def __init__(self, model: torch.nn.Module, optim_cfg: DictConfig, pixel_scale: float,
                 mean: list[float], std: list[float], crop_padding: int, input_ndim: int) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg = optim_cfg
        self.pixel_scale, self.crop_padding = pixel_scale, crop_padding
        stats_shape = (1, -1, 1, 1) if input_ndim == 3 else (1, -1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(stats_shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(stats_shape), persistent=False)
        self.epoch_loss_sum: torch.Tensor | None = None

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.pixel_scale

    def forward(self, x_scaled: torch.Tensor) -> torch.Tensor:
        return self.model((x_scaled - self.mean) / self.std)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y, shifts, flips = batch
        x = self.scale(x)
        if x.ndim == 4:
            x = pad_crop_flip(x, shifts, flips, self.crop_padding)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        # Summed on the device: divergence is checked once per epoch, not with a host sync per step.
        detached = loss.detach()
        self.epoch_loss_sum = detached if self.epoch_loss_sum is None else self.epoch_loss_sum + detached
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_end(self) -> None:
        if self.epoch_loss_sum is not None and not torch.isfinite(self.epoch_loss_sum):
            raise TrainingError(f"training loss became {self.epoch_loss_sum.item()} in epoch "
                                f"{self.current_epoch}; lower optim.lr or check the data")
        self.epoch_loss_sum = None

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        if cfg.name == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                        nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        elif cfg.name == "adamw":
            optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                          weight_decay=cfg.weight_decay)
        else:
            raise ConfigError(f"optim.name={cfg.name!r} is unknown; use optim=sgd or optim=adamw")
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        milestones = [int(e * steps_per_epoch) for e in cfg.step_milestones]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
            step, total, warmup, cfg.schedule, milestones, cfg.step_gamma))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@torch.inference_mode()
def evaluate(module: SubsetClassifier, x: np.ndarray, labels: np.ndarray,
             batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and probability of `labels` for every example, no augmentation."""
    module.eval()
    device = module.device
    preds, probs = [], []
    labels_t = torch.from_numpy(labels)
    for start in range(0, len(labels), batch_size):
        xb = torch.from_numpy(x[start:start + batch_size]).to(device)
        yb = labels_t[start:start + batch_size].to(device)
        prob = torch.softmax(module(module.scale(xb)).float(), dim=1)
        preds.append(prob.argmax(1).cpu())
        probs.append(prob.gather(1, yb[:, None])[:, 0].cpu())
    return torch.cat(preds).numpy(), torch.cat(probs).numpy()


def make_logger(cfg: DictConfig, seed_dir: Path) -> Any:
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger
        return CSVLogger(save_dir=str(seed_dir), name="", version="")
    if kind == "wandb":
        from src.tracking import wandb_logger
        return wandb_logger(cfg, seed_dir)
    raise ConfigError(f"logger.kind={kind!r} is unknown; use logger=csv, logger=wandb or logger=none")


def make_trainer(cfg: DictConfig, seed_dir: Path, logger: Any) -> pl.Trainer:
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    return pl.Trainer(**trainer_kwargs, logger=logger, default_root_dir=str(seed_dir))


@lru_cache(maxsize=1)
def environment_meta() -> dict[str, Any]:
    import timm

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "pytorch_lightning": pl.__version__, "timm": timm.__version__, "numpy": np.__version__},
        "git": {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))},
        "host": platform.node(),
    }


def existing_record_action(path: Path, exp_hash: str, overwrite: bool) -> str:
    """'train' or 'skip' for an existing record; a record of another experiment is an error."""
    if not path.exists():
        return "train"
    try:
        meta = read_meta(path)
    except RecordError as err:
        log.warning("replacing unreadable record %s (%s)", path, err.reason)
        return "train"
    if meta["experiment_hash"] == exp_hash:
        return "train" if overwrite else "skip"
    if overwrite:
        return "train"
    raise ConfigError(f"{path} holds experiment {meta['experiment_hash']} ({meta.get('experiment_name')}), "
                      f"not {exp_hash}: choose another name=..., or overwrite=true to replace it")


def run_job(cfg: DictConfig) -> Path | None:
    """Train one seed's subset model and write its record; None when a valid record already exists."""
    started = time.perf_counter()
    validate_config(cfg)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    exp_hash = experiment_hash(cfg, dataset.fingerprint)
    path = seed_record_path(cfg)
    if existing_record_action(path, exp_hash, cfg.overwrite) == "skip":
        log.info("seed=%d: record exists, skipped (%s)", cfg.seed, path)
        return None
    remove_stale_temps(path)
    mask = subset_mask(cfg.seed, len(dataset.y_train), cfg.subset.ratio, cfg.subset.salt)
    module = fit(cfg, dataset, mask, path.parent)
    record = evaluate_record(cfg, dataset, mask, module, exp_hash)
    record.meta["wall_time_s"] = round(time.perf_counter() - started, 3)
    write_record(path, record)
    if cfg.record.save_model:
        torch.save(module.model.state_dict(), path.parent / "model.pt")
    log.info("seed=%d in-subset acc %.4f out acc %.4f test acc %.4f (%.1f s)", cfg.seed,
             record.meta["train_in_acc"], record.meta["train_out_acc"], record.meta["test_acc"],
             record.meta["wall_time_s"])
    return path


def fit(cfg: DictConfig, dataset: Dataset, mask: np.ndarray, seed_dir: Path) -> SubsetClassifier:
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    model = build_model(cfg.model, dataset.input_shape, dataset.num_classes)
    augment = cfg.dataset.augment
    module = SubsetClassifier(model, cfg.optim, dataset.pixel_scale, list(cfg.dataset.normalize.mean),
                              list(cfg.dataset.normalize.std), augment.crop_padding, len(dataset.input_shape))
    datamodule = SubsetDataModule(dataset, mask, cfg.seed, cfg.batch_size, augment.crop_padding, augment.hflip)
    logger = make_logger(cfg, seed_dir)
    trainer = make_trainer(cfg, seed_dir, logger)
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        if cfg.logger.kind == "wandb":
            from src.tracking import finish_wandb
            finish_wandb()
    return module


def evaluate_record(cfg: DictConfig, dataset: Dataset, mask: np.ndarray, module: SubsetClassifier,
                    exp_hash: str) -> Record:
    batch = int(cfg.dataset.eval_batch_size)
    train_pred, train_prob = evaluate(module, dataset.x_train, dataset.y_train, batch)
    test_pred, test_prob = evaluate(module, dataset.x_test, dataset.y_test, batch)
    train_correct = train_pred == dataset.y_train
    meta = {
        "format_version": FORMAT_VERSION, "dataset": dataset.name, "n_train": len(dataset.y_train),
        "n_test": len(dataset.y_test), "num_classes": dataset.num_classes,
        "data_fingerprint": dataset.fingerprint, "model": str(cfg.model.name),
        "ratio": float(cfg.subset.ratio), "salt": int(cfg.subset.salt), "epochs": int(cfg.trainer.max_epochs),
        "seed": int(cfg.seed), "experiment_hash": exp_hash, "experiment_name": str(cfg.name),
        "sweep_dir": str(sweep_dir(cfg)),
        "test_acc": float((test_pred == dataset.y_test).mean()),
        "train_in_acc": float(train_correct[mask].mean()),
        "train_out_acc": float(train_correct[~mask].mean()) if (~mask).any() else None,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid(),
        "config": OmegaConf.to_container(cfg, resolve=True), "wall_time_s": 0.0,
        **environment_meta(),
    }
    return Record(
        meta=meta, subset_mask=mask, train_label=dataset.y_train, train_pred=train_pred, train_prob=train_prob,
        test_label=dataset.y_test, test_pred=test_pred, test_prob=test_prob, flipped_idx=dataset.flipped_idx,
        flipped_orig_label=dataset.y_train_orig[dataset.flipped_idx], extras=record_extras(dataset),
    )
