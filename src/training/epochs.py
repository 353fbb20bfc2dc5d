"""Each epoch's batches, for P members at once: order and augmentation draws from (seed, epoch) alone.

Data stay in memory as tensors. Each epoch's order and augmentation draws come from (seed, epoch) alone
(`EpochPlan`), so a job is reproducible and member k of a pack gets exactly the data seed k sees when trained
alone. Batches are gathered by index (`x[idx]`): no per-sample Python work and no worker processes.
Augmentation (pad-crop, horizontal flip) runs on the training device (`pad_crop_flip`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler


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
