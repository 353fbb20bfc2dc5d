"""meminf's own architectures, plain torch modules: the MLP, the small convnet and the small Inception.

src/models/zoo.py registers them in timm's registry (`meminf_mlp`, `meminf_cnn_small`, `meminf_inception_small`);
src/models/build.py builds them from here without importing timm, whose import (every timm model module, and
wandb through timm.utils) is about a second of every job's start-up (docs/PERFORMANCE.md, End to end). Their
architecture numbers are not defaulted in code: they come from the ``kwargs`` of the YAML files in ``conf/model/``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, one Linear + ReLU per width in ``hidden``, then Linear to the classes."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        widths = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's interface: everything before the last Linear (the input, flattened, when hidden is empty)."""
        return self.layers[:-1](x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.layers[-1](x)


class SmallCNN(nn.Module):
    """Plain convnet without BatchNorm.

    One 3x3 conv + ReLU + 2x2 max-pool per width in ``channels``, adaptive average pooling to a
    ``pool_grid`` x ``pool_grid`` grid (so the head does not depend on the input size), Linear ``hidden`` +
    ReLU, Linear to the classes.
    """

    def __init__(
        self, in_chans: int, channels: Sequence[int], pool_grid: int, hidden: int, num_classes: int
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        widths = [in_chans, *channels]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(width_in, width_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool_grid), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(widths[-1] * pool_grid**2, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's interface: with pre_logits, the hidden layer's activations (the input of the last Linear)."""
        return self.head[:-1](x) if pre_logits else self.head(x)


class ConvModule(nn.Sequential):
    """k x k conv (no bias, 'same' padding) + BatchNorm + ReLU."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True),
        )
        self.out_chans = out_chans


class InceptionModule(nn.Module):
    """Concatenation of a 1x1 ConvModule (``c1`` channels) and a 3x3 ConvModule (``c3`` channels)."""

    def __init__(self, in_chans: int, c1: int, c3: int) -> None:
        super().__init__()
        self.branch1x1 = ConvModule(in_chans, c1, 1)
        self.branch3x3 = ConvModule(in_chans, c3, 3)
        self.out_chans = c1 + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(x)], dim=1)


class DownsampleModule(nn.Module):
    """Concatenation of a 3x3 stride-2 ConvModule (``c3`` channels) and a 3x3 stride-2 max-pool.

    Both branches pad by 1, so both give ceil(H / 2) x ceil(W / 2) and the pool keeps ``in_chans`` channels.
    """

    def __init__(self, in_chans: int, c3: int) -> None:
        super().__init__()
        self.conv = ConvModule(in_chans, c3, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_chans = c3 + in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


class SmallInception(nn.Module):
    """Small Inception of Zhang et al. 2017, "Understanding deep learning requires rethinking generalization".

    3x3 ConvModule with ``stem_channels``, then stages of InceptionModules (``[c1, c3]`` pairs in
    ``inception_stages``) with a DownsampleModule (``downsample_channels``) after every stage but the last,
    global average pooling, Linear to the classes.
    """

    def __init__(
        self,
        in_chans: int,
        stem_channels: int,
        inception_stages: Sequence[Sequence[Sequence[int]]],
        downsample_channels: Sequence[int],
        num_classes: int,
    ) -> None:
        super().__init__()
        if len(downsample_channels) != len(inception_stages) - 1:
            raise ValueError(
                f"inception_stages has {len(inception_stages)} stages, so downsample_channels needs "
                f"{len(inception_stages) - 1} entries, got {len(downsample_channels)}"
            )
        self.num_classes = num_classes
        layers: list[nn.Module] = [ConvModule(in_chans, stem_channels, 3)]
        width = stem_channels
        for stage, downsample_c3 in itertools.zip_longest(inception_stages, downsample_channels):
            for c1, c3 in stage:
                layers.append(InceptionModule(width, c1, c3))
                width = layers[-1].out_chans
            if downsample_c3 is not None:
                layers.append(DownsampleModule(width, downsample_c3))
                width = layers[-1].out_chans
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)
