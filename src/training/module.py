"""The Lightning module of P packed members: cross-entropy training on device-resident data, the record scores
accumulated on the way (src/estimators/base.py), and the evaluation pass that gives every record's predictions."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.data.dataset import Dataset
from src.errors import TrainingError
from src.estimators.base import EpochEnd, RecordScore, TrainStep
from src.models.packing import Members
from src.training.epochs import pad_crop_flip
from src.training.record import MemberOutputs

log = logging.getLogger(__name__)


EPOCH_LOGGED = ("train/loss", "train/acc")  # the epoch means of the alive members' training loss and accuracy


def epoch_logged(seeds: list[int]) -> list[str]:
    """The names logged once per epoch: the pack's means, and each member's own (`train/acc/seed=<k>`) where a
    pack trains several (one member's are the means)."""
    members = [f"{name}/seed={seed}" for seed in seeds for name in EPOCH_LOGGED] if len(seeds) > 1 else []
    return [*EPOCH_LOGGED, *members]


class Evaluation(NamedTuple):
    """Every member's outputs on one split, (P, n) each, no augmentation."""

    pred: np.ndarray  # predicted class
    prob: np.ndarray  # softmax probability of the split's label
    loss: np.ndarray  # cross-entropy of the label
    margin: np.ndarray  # logit of the label minus the largest other logit


class SubsetClassifier(pl.LightningModule):
    """Cross-entropy training of P members on device-resident data.

    The training and test inputs are non-persistent buffers, so they move to the training device with
    the module once; a step gathers its (P, B) index batch there, scales, augments and normalises there.
    A member whose loss is not finite at the end of an epoch is stopped (its loss no longer counts);
    the others go on. Each step hands its batch to the record scores (src/estimators/base.py), which
    accumulate on the device. A step copies nothing to the host (no `.item()`, `.cpu()` or branch on a device
    value: each makes the host wait for the GPU; tests/test_sync_free.py counts them). At the end of each epoch
    in `record_epochs` (1-based) every member is evaluated on both splits and its correctness kept. The
    optimizer and the learning-rate schedule are instantiated from the `optim` and `schedule` configs' `_target_`.
    """

    def __init__(self, members: Members, optim_cfg: DictConfig, schedule_cfg: DictConfig, dataset: Dataset,
                 mean: list[float], std: list[float], crop_padding: int, hflip: bool, channels_last: bool,
                 record_epochs: tuple[int, ...] = (), eval_batch_size: int = 1024,
                 scores: tuple[RecordScore, ...] = ()) -> None:
        super().__init__()
        self.members, self.optim_cfg, self.schedule_cfg, self.scores = members, optim_cfg, schedule_cfg, scores
        self.n_train = len(dataset.y_train)
        self.pixel_scale, self.crop_padding = dataset.pixel_scale, crop_padding
        self.augment = dataset.is_image and (crop_padding > 0 or hflip)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        stats_shape = (1, -1, 1, 1) if dataset.is_image else (1, -1)
        for name, values in (("mean", mean), ("std", std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(stats_shape), persistent=False)
        for name, values in (("x_train", dataset.x_train), ("y_train", dataset.y_train),
                             ("x_test", dataset.x_test), ("y_test", dataset.y_test)):
            self.register_buffer(name, torch.from_numpy(values), persistent=False)
        # Without augmentation on the CPU a step's inputs are rows of the training set normalised once, at the start
        # of fit (`on_fit_start`); None: each batch is normalised from the stored values.
        self.register_buffer("train_inputs", None, persistent=False)
        self.register_buffer("alive", torch.ones(members.pack, dtype=torch.bool), persistent=False)
        # Per-epoch sums, buffers so that they live on the training device: a step adds to them there.
        self.register_buffer("epoch_loss_sum", torch.zeros(members.pack), persistent=False)
        self.register_buffer("epoch_acc_sum", torch.zeros(members.pack), persistent=False)  # of batch accuracies
        self.register_buffer("epoch_log_sums", torch.zeros(len(EPOCH_LOGGED)), persistent=False)
        self.epoch_log_steps = 0
        self.record_epochs, self.eval_batch_size = tuple(sorted(record_epochs)), eval_batch_size
        self.epoch_correct: dict[str, list[np.ndarray]] = {"train": [], "test": []}  # per recorded epoch: (P, n)
        # DDP would broadcast these from rank 0 at the start and before every step: the data are already on
        # every rank. (train_inputs is set at the start of fit.)
        self._ddp_params_and_buffers_to_ignore = [*(name for name, _ in self.named_buffers(recurse=False)),
                                                  "train_inputs"]

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
        inputs = self.train_inputs[idx] if self.train_inputs is not None else \
            self.normalize_batch(self.x_train[idx], shifts, flips)
        logits = self.members(inputs)
        weight = self.trainer.datamodule.plan.loss_weight(batch_idx)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        member_loss = losses.sum(1) * weight
        loss = torch.where(self.alive, member_loss, torch.zeros_like(member_loss)).sum()
        # Summed on the device: divergence is checked once per epoch, not with a host sync per step.
        self.epoch_loss_sum = self.epoch_loss_sum + member_loss.detach()
        correct = logits.detach().argmax(2) == y
        step = TrainStep(idx, logits.detach(), y, losses.detach(), correct)
        for score in self.scores:
            score.on_step(step)
        accuracy = correct.float().mean(1)
        self.epoch_acc_sum = self.epoch_acc_sum + accuracy
        alive = self.alive.float()
        alive_count = alive.sum()
        means = torch.stack([(member_loss.detach() * alive).sum(), (accuracy * alive).sum()]) / alive_count
        # Summed as Lightning's mean reduction sums a per-step self.log (value times its batch size, P here),
        # so that the epoch means logged in on_train_epoch_end are what a self.log per step gave, without its
        # per-step bookkeeping (docs/PERFORMANCE.md, Training at the machine's limit).
        self.epoch_log_sums = self.epoch_log_sums + means * self.members.pack
        self.epoch_log_steps += 1
        return loss

    def on_train_epoch_start(self) -> None:
        self.epoch_log_sums, self.epoch_log_steps = torch.zeros_like(self.epoch_log_sums), 0
        self.epoch_acc_sum = torch.zeros_like(self.epoch_acc_sum)

    def log_epoch_means(self) -> None:
        """The epoch's means over the pack and, in a pack of several, each member's: its mean batch loss (as
        train/loss counts it) and accuracy (`epoch_logged` names them), copied to the host once an epoch."""
        means = self.epoch_log_sums / (self.epoch_log_steps * self.members.pack)
        for name, mean in zip(EPOCH_LOGGED, means, strict=True):
            self.log(name, mean, on_step=False, on_epoch=True)
        names = epoch_logged(self.trainer.datamodule.plan.seeds)[len(EPOCH_LOGGED):]
        if names:
            members = torch.stack([self.epoch_loss_sum, self.epoch_acc_sum], 1).flatten() / self.epoch_log_steps
            for name, value in zip(names, members.tolist(), strict=True):
                self.log(name, value, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self.log_epoch_means()
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
        self.end_epoch_of_scores()
        if self.current_epoch + 1 in self.record_epochs:
            was_training = self.training
            for split, correct in self.epoch_correct.items():
                evaluation = self.evaluate(split, self.eval_batch_size)
                correct.append(evaluation.pred == getattr(self, f"y_{split}").cpu().numpy())
            self.train(was_training)

    def end_epoch_of_scores(self) -> None:
        """Hand the record scores that need it the epoch's model (eval mode, no augmentation), then train on."""
        wanting = [score for score in self.scores if type(score).on_epoch_end is not RecordScore.on_epoch_end]
        if not wanting:
            return
        was_training = self.training
        self.eval()
        epoch = EpochEnd(self.current_epoch, tuple(self.trainer.datamodule.plan.seeds),
                         self.trainer.datamodule.plan.subset_idx.to(self.device),
                         lambda idx: self.prepare_members(self.x_train[idx]), self.member_losses,
                         self.eval_batch_size)
        for score in wanting:
            score.on_epoch_end(epoch)
        self.train(was_training)

    def prepare_members(self, x: torch.Tensor) -> torch.Tensor:
        """Stored values (P, B, ...) → normalised float inputs, no augmentation."""
        flat = self.prepare(x.flatten(0, 1))
        if flat.ndim == 4:
            flat = flat.contiguous(memory_format=self.memory_format)
        return flat.view(*x.shape[:2], *flat.shape[1:])

    def member_losses(self, inputs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Per-example cross-entropy (P, B) of each member's inputs (P, B, ...) for the labels of `idx`."""
        logits = self.members(inputs).float()
        y = self.y_train[idx]
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)

    def on_fit_start(self) -> None:
        # The normalised copy (4 bytes a value, with the same elementwise operations as `prepare`: the same bits)
        # saves the CPU converting every batch (docs/PERFORMANCE.md, Per-step cuts); a GPU converts a batch in one
        # kernel and holds the data set in memory it needs for training, so there the data stay uint8 (1 byte).
        if not self.augment and self.memory_format == torch.contiguous_format and self.device.type == "cpu":
            self.train_inputs = self.prepare(self.x_train)
        for score in self.scores:
            score.start(self.members.pack, self.n_train, self.device)

    def on_train_end(self) -> None:
        if self.trainer.world_size > 1:  # DDP: each rank accumulated over its share of every batch
            for score in self.scores:
                score.synchronize(torch.distributed.all_reduce)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.optim_cfg)(self.parameters())
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        factor = instantiate(self.schedule_cfg)(total_steps=total, steps_per_epoch=steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @torch.inference_mode()
    def evaluate(self, split: str, batch_size: int) -> Evaluation:
        """Every member's prediction, probability, loss and margin of the split's labels; no augmentation. The
        members run in the layout and under the autocast of training (trainer.precision)."""
        self.eval()
        x, labels = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        parts: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, len(labels), batch_size):
            xb = self.prepare(x[start:start + batch_size])
            if xb.ndim == 4:
                xb = xb.contiguous(memory_format=self.memory_format)
            with self.trainer.precision_plugin.test_step_context():  # the training step's autocast
                logits = self.members(xb, shared_input=True).float()
            yb = labels[start:start + batch_size].expand(self.members.pack, -1)[..., None]
            prob = torch.softmax(logits, dim=2)
            loss = -torch.log_softmax(logits, dim=2).gather(2, yb)[..., 0]
            margin = logits.gather(2, yb)[..., 0] - logits.scatter(2, yb, -torch.inf).amax(2)
            parts.append(tuple(t.cpu() for t in (prob.argmax(2), prob.gather(2, yb)[..., 0], loss, margin)))
        return Evaluation(*(torch.cat(column, 1).numpy() for column in zip(*parts, strict=True)))

    def member_outputs(self, k: int, train: Evaluation, test: Evaluation) -> MemberOutputs:
        """Member k's final predictions (from `evaluate`), its record scores and its per-epoch correctness."""
        epochs = {split: np.stack([correct[k] for correct in rows]) if rows else None
                  for split, rows in self.epoch_correct.items()}
        return MemberOutputs(
            train_pred=train.pred[k], train_prob=train.prob[k], test_pred=test.pred[k], test_prob=test.prob[k],
            proxies={score.name: score.finish(k, train) for score in self.scores},
            epoch_list=np.asarray(self.record_epochs, dtype=np.int64),
            epoch_train_correct=epochs["train"], epoch_test_correct=epochs["test"])
