"""The half-masked network: forward hooks that multiply every mask point's output by per-example masks, and the
Lightning module whose training step gives every example its own half (on the training device, from the batch's
indices: a step copies nothing to the host, issue 21)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from src.errors import ConfigError
from src.estimators.turnover.masks import TRAIN_DOMAIN, half_masks
from src.models.archs import MLP, SmallCNN
from src.training.module import SubsetClassifier

SUPPORTED_TEXT = "model=mlp, model=cnn_small or a timm ResNet (model=resnet18, model=resnet50)"
KEEP = 0.5  # fraction of units in a half; kept units are scaled by 1 / KEEP as in dropout with p = 0.5
# The training examples' halves (one byte a unit) are computed once and kept on the device up to this size
# (CIFAR with a ResNet-18: 195 MB), so that a step only gathers its batch's rows; above it (ImageNet-sized
# runs) every step computes its batch's halves, which costs ~100 small kernels a step.
HALVES_TABLE_BYTES = 1 << 30


MaskPoint = tuple[nn.Module, int]  # a module whose output is masked, and its width (features or channels)


def relu_points(model: nn.Module) -> list[MaskPoint]:
    """Every ReLU of a plain feed-forward net, its width that of the Linear or Conv2d before it."""
    points, width = [], 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            width = module.out_features
        elif isinstance(module, nn.Conv2d):
            width = module.out_channels
        elif isinstance(module, nn.ReLU):
            points.append((module, width))
    return points


def resnet_points(model: ResNet) -> list[MaskPoint]:
    """The stem activation, then per block the inner activations and the block's output."""
    points: list[MaskPoint] = [(model.act1, model.bn1.num_features)]
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            if isinstance(block, BasicBlock):
                points += [(block.act1, block.bn1.num_features), (block, block.bn2.num_features)]
            elif isinstance(block, Bottleneck):
                points += [(block.act1, block.bn1.num_features), (block.act2, block.bn2.num_features),
                           (block, block.bn3.num_features)]
            else:
                raise ConfigError(f"estimator=turnover does not know ResNet blocks of type {type(block).__name__}; "
                                  f"use {SUPPORTED_TEXT}")
    return points


MASK_POINTS: dict[type[nn.Module], Callable[[Any], list[MaskPoint]]] = {
    MLP: relu_points, SmallCNN: relu_points, ResNet: resnet_points}


class HalfMaskedNetwork(nn.Module):
    """A classifier whose mask points multiply their output by per-example masks (forward hooks).

    `use(masks, rows_per_mask)` sets the masks for the next forward passes: masks[p] is (G, width) bool.
    The input has G * rows_per_mask rows (rows g*r .. g*r + r-1 use mask g), or only rows_per_mask rows: the
    first mask point then repeats them for every mask, so the layers before it run once per input row.
    """

    def __init__(self, model: nn.Module, seed: int) -> None:
        super().__init__()
        builder = next((points for cls, points in MASK_POINTS.items() if isinstance(model, cls)), None)
        if builder is None:
            raise ConfigError(f"estimator=turnover supports {SUPPORTED_TEXT}, not {type(model).__name__}")
        self.model, self.seed = model, seed
        points = builder(model)
        self.widths = [width for _, width in points]
        self._masks: list[torch.Tensor] | None = None
        self._rows_per_mask = 1
        for point, (module, _) in enumerate(points):
            module.register_forward_hook(partial(self._mask_output, point))

    def halves(self, indices: torch.Tensor, domain: int) -> list[torch.Tensor]:
        """The halves of examples `indices` at every mask point, on the indices' device."""
        return half_masks(self.seed, domain, indices, self.widths)

    def use(self, masks: list[torch.Tensor], rows_per_mask: int = 1) -> None:
        self._masks = [mask.float() / KEEP for mask in masks]
        self._rows_per_mask = rows_per_mask

    def _mask_output(self, point: int, module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
        mask, rows = self._masks[point], self._rows_per_mask
        groups = mask.shape[0]
        if out.shape[0] == rows and groups > 1:
            out = out.unsqueeze(0).expand(groups, *out.shape).reshape(groups * rows, *out.shape[1:])
        if out.shape[0] != groups * rows or out.shape[1] != mask.shape[1]:
            raise RuntimeError(f"mask point {point} got output {tuple(out.shape)} for masks {tuple(mask.shape)} "
                               f"x {rows} rows")
        grouped = out.reshape(groups, rows, *out.shape[1:])
        return (grouped * mask.view(groups, 1, mask.shape[1], *([1] * (out.ndim - 2)))).reshape(out.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._masks is None:
            raise RuntimeError("HalfMaskedNetwork.use(masks) must come before the first forward")
        return self.model(x)


class TurnoverClassifier(SubsetClassifier):
    """SubsetClassifier (one member, the masked network) whose training step sets every example's half, on the
    device from the batch's indices: the table of every training example's halves where it fits
    HALVES_TABLE_BYTES, else computed for the batch."""

    train_halves: list[torch.Tensor] | None = None  # per mask point, (n_train, width) bool; set at fit start

    @property
    def network(self) -> HalfMaskedNetwork:
        return self.members.single

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.n_train * sum(self.network.widths) <= HALVES_TABLE_BYTES:
            chunks = [self.network.halves(rows, TRAIN_DOMAIN) for rows in
                      torch.arange(self.n_train, device=self.device).split(self.eval_batch_size)]
            self.train_halves = [torch.cat(point) for point in zip(*chunks, strict=True)]

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        idx = batch[0][0]
        halves = self.network.halves(idx, TRAIN_DOMAIN) if self.train_halves is None else \
            [table[idx] for table in self.train_halves]
        self.network.use(halves)
        return super().training_step(batch, batch_idx)
