"""One subset-training job: seed → subset → Lightning fit → evaluate every example → record.

Data stay in memory as tensors. Each epoch's order and augmentation draws come from
(seed, epoch) alone (`EpochPlan`), so a job is reproducible and a later packed trainer can give each
member the same data a single run sees. Batches are gathered by index (`x[idx]`): no per-sample Python
work and no worker processes. Augmentation (pad-crop, horizontal flip) runs on the training device.
Under DDP (trainer=ddp) each rank trains on its share of every batch and rank 0 writes the records
(docs/CLUSTER.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler

from src.data import Dataset, load_dataset, record_extras
from src.errors import ConfigError, TrainingError
from src.experiment import experiment_hash, job_subdir, seed_record_path, sweep_dir, validate_config
from src.models import build_model
from src.packing import Members
from src.records import (
    FORMAT_VERSION,
    Record,
    RecordError,
    read_meta,
    remove_stale_temps,
    write_atomic,
    write_record,
)
from src.subsets import check_seed, subset_mask

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


def epoch_draws(seed: int, epoch: int, n: int, crop_padding: int,
                hflip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One member's epoch: order of its n subset positions, crop shift and flip of each position."""
    gen = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=gen)
    shifts = torch.randint(0, 2 * crop_padding + 1, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return order, shifts, flips


class EpochPlan(Sampler):
    """Per batch, for P members at once: (global example indices (P, B), crop shifts (P, B, 2), flips (P, B)).

    Member k's order and augmentation draws depend only on (seeds[k], epoch), so member k of a pack sees
    exactly the batches that seed k sees when trained alone. Under DDP (`shard`), rank r of W gets positions
    r, r + W, ... of every batch of `batch_size` (the global batch); see `loss_weight`.
    """

    def __init__(self, subset_idx: torch.Tensor, batch_size: int, seeds: list[int], crop_padding: int,
                 hflip: bool) -> None:
        self.subset_idx, self.batch_size, self.seeds = subset_idx, batch_size, seeds
        self.crop_padding, self.hflip = crop_padding, hflip
        self.epoch, self.rank, self.world_size = 0, 0, 1

    def shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def loss_weight(self, batch_idx: int) -> float:
        """W / (examples in global batch `batch_idx`): a rank's summed loss times this, averaged over the W
        ranks by DDP, is the mean loss of the global batch (with W = 1: this rank's batch mean)."""
        return self.world_size / min(self.batch_size, self.subset_idx.shape[1] - batch_idx * self.batch_size)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.subset_idx.shape[1] / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = self.subset_idx.shape[1]
        draws = [epoch_draws(seed, self.epoch, n, self.crop_padding, self.hflip) for seed in self.seeds]
        order = torch.stack([d[0] for d in draws])
        shifts, flips = torch.stack([d[1] for d in draws]), torch.stack([d[2] for d in draws])
        global_idx = torch.gather(self.subset_idx, 1, order)
        for start in range(0, n, self.batch_size):
            share = slice(start + self.rank, start + self.batch_size, self.world_size)
            positions = order[:, share]
            yield (global_idx[:, share], torch.gather(shifts, 1, positions[..., None].expand(-1, -1, 2)),
                   torch.gather(flips, 1, positions))


class PlanItems(torch.utils.data.Dataset):
    """The sampler's items pass through unchanged: the examples are gathered on the device."""

    def __getitem__(self, plan: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return plan

    def __len__(self) -> int:
        return 0


class SubsetDataModule(pl.LightningDataModule):
    def __init__(self, masks: np.ndarray, seeds: list[int], batch_size: int, crop_padding: int,
                 hflip: bool) -> None:
        super().__init__()
        subset_idx = torch.from_numpy(np.stack([np.flatnonzero(mask) for mask in masks]))
        self.plan = EpochPlan(subset_idx, batch_size, seeds, crop_padding, hflip)

    def train_dataloader(self) -> DataLoader:
        self.plan.shard(self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(PlanItems(), sampler=self.plan, batch_size=None, num_workers=0)


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


class Evaluation(NamedTuple):
    """Every member's outputs on one split, (P, n) each, no augmentation."""

    pred: np.ndarray  # predicted class
    prob: np.ndarray  # softmax probability of the split's label
    loss: np.ndarray  # cross-entropy of the label
    margin: np.ndarray  # logit of the label minus the largest other logit


class MemberOutputs(NamedTuple):
    """What one member's record holds beyond the data: final predictions, proxies, per-epoch correctness."""

    train_pred: np.ndarray
    train_prob: np.ndarray
    test_pred: np.ndarray
    test_prob: np.ndarray
    proxies: dict[str, np.ndarray]  # float32 (n_train,) each, see src.records.PROXIES
    epoch_list: np.ndarray  # int64 (E,)
    epoch_train_correct: np.ndarray | None  # bool (E, n_train); None when E = 0
    epoch_test_correct: np.ndarray | None


class SubsetClassifier(pl.LightningModule):
    """Cross-entropy training of P members on device-resident data.

    The training and test inputs are non-persistent buffers, so they move to the training device with
    the module once; a step gathers its (P, B) index batch there, scales, augments and normalises there.
    A member whose loss is not finite at the end of an epoch is stopped (its loss no longer counts);
    the others go on. Each step also counts, per member and example, the steps that saw the example and
    those in which it was predicted right (on the device, no host sync): the learn-speed proxy. At the end of
    each epoch in `record_epochs` (1-based) every member is evaluated on both splits and its correctness kept.
    """

    def __init__(self, members: Members, optim_cfg: DictConfig, dataset: Dataset, mean: list[float],
                 std: list[float], crop_padding: int, hflip: bool, channels_last: bool,
                 record_epochs: tuple[int, ...] = (), eval_batch_size: int = 1024) -> None:
        super().__init__()
        self.members, self.optim_cfg = members, optim_cfg
        self.pixel_scale, self.crop_padding = dataset.pixel_scale, crop_padding
        self.augment = dataset.is_image and (crop_padding > 0 or hflip)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        stats_shape = (1, -1, 1, 1) if dataset.is_image else (1, -1)
        for name, values in (("mean", mean), ("std", std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(stats_shape), persistent=False)
        for name, values in (("x_train", dataset.x_train), ("y_train", dataset.y_train),
                             ("x_test", dataset.x_test), ("y_test", dataset.y_test)):
            self.register_buffer(name, torch.from_numpy(values), persistent=False)
        self.register_buffer("alive", torch.ones(members.pack, dtype=torch.bool), persistent=False)
        self.epoch_loss_sum = torch.zeros(members.pack)
        for name in ("steps_seen", "steps_correct"):  # int32: exact up to 2**31 steps per example
            self.register_buffer(name, torch.zeros(members.pack, len(dataset.y_train), dtype=torch.int32),
                                 persistent=False)
        self.record_epochs, self.eval_batch_size = tuple(sorted(record_epochs)), eval_batch_size
        self.epoch_correct: dict[str, list[np.ndarray]] = {"train": [], "test": []}  # per recorded epoch: (P, n)
        # DDP would broadcast these from rank 0 at the start and before every step: the data are already on
        # every rank, and the counters are per rank until on_train_end sums them.
        self._ddp_params_and_buffers_to_ignore = [name for name, _ in self.named_buffers(recurse=False)]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Stored values (B, ...) → normalised float inputs."""
        return (x.float() * self.pixel_scale - self.mean) / self.std

    def normalize_batch(self, x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        pack, batch = x.shape[:2]
        flat = x.reshape(pack * batch, *x.shape[2:]).float() * self.pixel_scale
        if self.augment:
            flat = pad_crop_flip(flat, shifts.reshape(-1, 2), flips.reshape(-1), self.crop_padding)
        if flat.ndim == 4:
            flat = flat.contiguous(memory_format=self.memory_format)
        return ((flat - self.mean) / self.std).reshape(pack, batch, *flat.shape[1:])

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        idx, shifts, flips = batch
        y = self.y_train[idx]
        logits = self.members(self.normalize_batch(self.x_train[idx], shifts, flips))
        weight = self.trainer.datamodule.plan.loss_weight(batch_idx)
        member_loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).sum(1) * weight
        loss = torch.where(self.alive, member_loss, torch.zeros_like(member_loss)).sum()
        # Summed on the device: divergence is checked once per epoch, not with a host sync per step.
        self.epoch_loss_sum = self.epoch_loss_sum.to(loss.device) + member_loss.detach()
        alive = self.alive.float()
        self.log("train/loss", (member_loss.detach() * alive).sum() / alive.sum(), on_step=False, on_epoch=True)
        correct = logits.detach().argmax(2) == y
        self.steps_seen.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.int32))
        self.steps_correct.scatter_add_(1, idx, correct.int())
        accuracy = correct.float().mean(1)
        self.log("train/acc", (accuracy * alive).sum() / alive.sum(), on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_end(self) -> None:
        if self.trainer.world_size > 1:  # DDP: every rank must stop the same members
            torch.distributed.all_reduce(self.epoch_loss_sum)
        finite = torch.isfinite(self.epoch_loss_sum)
        newly_dead = self.alive & ~finite
        if newly_dead.any():
            log.error("members %s: training loss became %s in epoch %d; they stop and write no record",
                      newly_dead.nonzero().flatten().tolist(), self.epoch_loss_sum[newly_dead].tolist(),
                      self.current_epoch)
            self.alive &= finite
        if not self.alive.any():
            raise TrainingError(f"training loss became {self.epoch_loss_sum.tolist()} in epoch "
                                f"{self.current_epoch}; lower optim.lr or check the data")
        self.epoch_loss_sum = torch.zeros_like(self.epoch_loss_sum)
        if self.current_epoch + 1 in self.record_epochs:
            was_training = self.training
            for split, correct in self.epoch_correct.items():
                evaluation = self.evaluate(split, self.eval_batch_size)
                correct.append(evaluation.pred == getattr(self, f"y_{split}").cpu().numpy())
            self.train(was_training)

    def on_train_end(self) -> None:
        if self.trainer.world_size > 1:  # DDP: each rank counted its share of every batch
            for counts in (self.steps_seen, self.steps_correct):
                torch.distributed.all_reduce(counts)

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
    def evaluate(self, split: str, batch_size: int) -> Evaluation:
        """Every member's prediction, probability, loss and margin of the split's labels; no augmentation."""
        self.eval()
        x, labels = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        parts: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, len(labels), batch_size):
            xb = self.prepare(x[start:start + batch_size])
            if xb.ndim == 4:
                xb = xb.contiguous(memory_format=self.memory_format)
            logits = self.members(xb, shared_input=True).float()
            yb = labels[start:start + batch_size].expand(self.members.pack, -1)[..., None]
            prob = torch.softmax(logits, dim=2)
            loss = -torch.log_softmax(logits, dim=2).gather(2, yb)[..., 0]
            margin = logits.gather(2, yb)[..., 0] - logits.scatter(2, yb, -torch.inf).amax(2)
            parts.append(tuple(t.cpu() for t in (prob.argmax(2), prob.gather(2, yb)[..., 0], loss, margin)))
        return Evaluation(*(torch.cat(column, 1).numpy() for column in zip(*parts, strict=True)))

    def member_outputs(self, k: int, train: Evaluation, test: Evaluation) -> MemberOutputs:
        """Member k's final predictions (from `evaluate`), its proxies and its per-epoch correctness."""
        seen, hits = self.steps_seen[k].cpu().numpy(), self.steps_correct[k].cpu().numpy()
        learn_speed = np.full(seen.shape, np.nan, dtype=np.float32)
        np.divide(hits, seen, out=learn_speed, where=seen > 0)
        epochs = {split: np.stack([correct[k] for correct in rows]) if rows else None
                  for split, rows in self.epoch_correct.items()}
        return MemberOutputs(
            train_pred=train.pred[k], train_prob=train.prob[k], test_pred=test.pred[k], test_prob=test.prob[k],
            proxies={"learn_speed": learn_speed, "loss": train.loss[k], "margin": train.margin[k]},
            epoch_list=np.asarray(self.record_epochs, dtype=np.int64),
            epoch_train_correct=epochs["train"], epoch_test_correct=epochs["test"])


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
    """Lightning's Trainer; its progress bar follows `progress` (auto: a single run on a terminal)."""
    from src.tracking import in_multirun, progress_enabled

    trainer_kwargs = {**OmegaConf.to_container(cfg.trainer, resolve=True),
                      "enable_progress_bar": progress_enabled(cfg.progress, sys.stdout, in_multirun())}
    # EpochPlan gives each DDP rank its share of every batch, so Lightning must not wrap it in a sampler.
    return pl.Trainer(**trainer_kwargs, logger=logger, default_root_dir=str(seed_dir), plugins=cluster_plugins(),
                      use_distributed_sampler=False)


def cluster_plugins() -> list[Any]:
    """Under SLURM, the launcher (submitit) requeues preempted and timed-out jobs; Lightning's own SLURM
    auto-requeue (an hpc checkpoint and `scontrol requeue` on its signal) is turned off so that only one
    of them requeues, and a requeued job starts its seeds afresh (docs/CLUSTER.md)."""
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


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


def existing_record_action(path: Path, exp_hash: str, overwrite: bool, record_epochs: tuple[int, ...] = ()) -> str:
    """'train' or 'skip' for an existing record; a record of another experiment is an error. A record of
    this experiment that holds other per-epoch results than `record_epochs` asks for is retrained."""
    if not path.exists():
        return "train"
    try:
        meta = read_meta(path)
    except RecordError as err:
        log.warning("replacing unreadable record %s (%s)", path, err.reason)
        return "train"
    if meta["experiment_hash"] == exp_hash:
        if meta.get("record_epochs", []) != list(record_epochs):
            log.info("%s records epochs %s, not %s: retrained", path, meta.get("record_epochs", []),
                     list(record_epochs))
            return "train"
        return "train" if overwrite else "skip"
    if overwrite:
        return "train"
    raise ConfigError(f"{path} holds experiment {meta['experiment_hash']} ({meta.get('experiment_name')}), "
                      f"not {exp_hash}: choose another name=..., or overwrite=true to replace it")


def job_seeds(cfg: DictConfig) -> list[int]:
    """The seeds this job trains: `seeds` (a packed job, grouped at launch) or the single `seed`."""
    seeds = [int(seed) for seed in cfg.seeds] if cfg.get("seeds") else [int(cfg.seed)]
    for seed in seeds:
        check_seed(seed)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} repeats a seed; give each seed once")
    return seeds


def run_job(cfg: DictConfig) -> list[Path]:
    """Train this job's seeds (one model each, packed when several) and write one record per seed.

    Seeds whose valid record exists are left out; returns the records written.
    """
    started = time.perf_counter()
    validate_config(cfg)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    exp_hash = experiment_hash(cfg, dataset.fingerprint)
    requested = job_seeds(cfg)
    record_epochs = tuple(sorted(cfg.record.epochs))
    seeds = [seed for seed in requested if existing_record_action(seed_record_path(cfg, seed), exp_hash,
                                                                   cfg.overwrite, record_epochs) == "train"]
    if len(seeds) < len(requested):
        log.info("%d record(s) exist, skipped; %d seed(s) to train", len(requested) - len(seeds), len(seeds))
    if not seeds:
        return []
    for seed in seeds:
        remove_stale_temps(seed_record_path(cfg, seed))
    masks = np.stack([subset_mask(seed, len(dataset.y_train), cfg.subset.ratio, cfg.subset.salt) for seed in seeds])
    module = fit(cfg, dataset, seeds, masks)
    if module.global_rank != 0:  # DDP: the ranks hold the same weights; rank 0 evaluates and writes
        return []
    batch = int(cfg.dataset.eval_batch_size)
    train, test = (module.evaluate(split, batch) for split in ("train", "test"))
    wall_time = (time.perf_counter() - started) / len(seeds)
    written, metas = [], []
    for k in np.flatnonzero(module.alive.cpu().numpy()):
        record = member_record(cfg, dataset, seeds[k], masks[k], exp_hash, module.member_outputs(k, train, test),
                               pack=len(seeds), wall_time=wall_time, device=module.device)
        written.append(write_record(seed_record_path(cfg, seeds[k]), record))
        if cfg.record.save_model:
            save_weights(module.members.member_state_dict(k), written[-1].parent / "model.pt")
        log_record(record)
        metas.append(record.meta)
    log_job(metas, time.perf_counter() - started)
    dead = [seeds[k] for k in range(len(seeds)) if not module.alive[k]]
    if dead:
        raise TrainingError(f"seeds {dead} diverged (loss not finite) and wrote no record; the other "
                            f"{len(written)} did. Lower optim.lr, or rerun them alone with seed=<k>")
    return written


def build_members(cfg: DictConfig, dataset: Dataset, seeds: list[int]) -> Members:
    models = []
    for seed in seeds:
        pl.seed_everything(seed, workers=False, verbose=False)  # seed k's initialisation, as if alone
        models.append(build_model(cfg.model, dataset.input_shape, dataset.num_classes))
    channels_last = bool(cfg.perf.channels_last)
    if channels_last and (len(seeds) > 1 or not dataset.is_image):
        raise ConfigError("perf.channels_last applies to unpacked image models: use pack=1 or drop it")
    if channels_last:
        models[0] = models[0].to(memory_format=torch.channels_last)
    arch_key = json.dumps([OmegaConf.to_container(cfg.model, resolve=True), dataset.input_shape,
                           dataset.num_classes, channels_last], sort_keys=True)
    return Members(models, arch_key, compile=bool(cfg.perf.compile))


def fit(cfg: DictConfig, dataset: Dataset, seeds: list[int], masks: np.ndarray) -> SubsetClassifier:
    if len(seeds) > 1 and cfg.trainer.get("gradient_clip_val"):
        raise ConfigError("trainer.gradient_clip_val clips the global norm, which would couple packed "
                          "members; use pack=1 with gradient clipping")
    augment = cfg.dataset.augment
    module = SubsetClassifier(build_members(cfg, dataset, seeds), cfg.optim, dataset,
                              list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std),
                              augment.crop_padding, augment.hflip, bool(cfg.perf.channels_last),
                              tuple(cfg.record.epochs), int(cfg.dataset.eval_batch_size))
    datamodule = SubsetDataModule(masks, seeds, cfg.batch_size, augment.crop_padding, augment.hflip)
    train_module(cfg, module, datamodule, sweep_dir(cfg) / job_subdir(seeds[0], seeds), pack=len(seeds))
    return module


def train_module(cfg: DictConfig, module: pl.LightningModule, datamodule: pl.LightningDataModule,
                 directory: Path, pack: int) -> None:
    """Trainer.fit with the job's logger in `directory`; the job's wandb run (if any) is finished whatever
    happens, so that a job has at most one."""
    trainer = make_trainer(cfg, directory, make_logger(cfg, directory))
    check_ddp(trainer, pack)
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        if cfg.logger.kind == "wandb":
            from src.tracking import finish_wandb
            finish_wandb()


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


def member_record(cfg: DictConfig, dataset: Dataset, seed: int, mask: np.ndarray, exp_hash: str,
                  outputs: MemberOutputs, pack: int, wall_time: float, device: torch.device) -> Record:
    train_pred, test_pred = outputs.train_pred, outputs.test_pred
    train_correct = train_pred == dataset.y_train
    meta = {
        "format_version": FORMAT_VERSION, "dataset": dataset.name, "n_train": len(dataset.y_train),
        "n_test": len(dataset.y_test), "num_classes": dataset.num_classes,
        "data_fingerprint": dataset.fingerprint, "model": str(cfg.model.name),
        "ratio": float(cfg.subset.ratio), "salt": int(cfg.subset.salt), "epochs": int(cfg.trainer.max_epochs),
        "seed": seed, "experiment_hash": exp_hash, "experiment_name": str(cfg.name),
        "record_epochs": outputs.epoch_list.tolist(),
        "sweep_dir": str(sweep_dir(cfg)), "pack": pack,
        "test_acc": float((test_pred == dataset.y_test).mean()),
        "train_in_acc": float(train_correct[mask].mean()),
        "train_out_acc": float(train_correct[~mask].mean()) if (~mask).any() else None,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(), "device": str(device),
        "config": {**OmegaConf.to_container(cfg, resolve=True), "seed": seed, "seeds": None},
        "wall_time_s": round(wall_time, 3), **environment_meta(),
    }
    return Record(
        meta=meta, subset_mask=mask, train_label=dataset.y_train, train_pred=train_pred,
        train_prob=outputs.train_prob, test_label=dataset.y_test, test_pred=test_pred, test_prob=outputs.test_prob,
        flipped_idx=dataset.flipped_idx, flipped_orig_label=dataset.y_train_orig[dataset.flipped_idx],
        extras=record_extras(dataset), epoch_list=outputs.epoch_list,
        epoch_train_correct=outputs.epoch_train_correct, epoch_test_correct=outputs.epoch_test_correct,
        proxies=outputs.proxies,
    )


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
