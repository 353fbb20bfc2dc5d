"""P convnets of one architecture as one grouped network: member k's channels are block k of every layer.

Each Conv2d becomes one convolution with groups=P·g (group k·g + i reads member k's input block i and writes
its output block i; a depthwise conv, g = C, becomes groups=P·C), each BatchNorm one over P·C channels (per
channel, so per member: statistics never mix), each Linear one `baddbmm` over the members' (B, in) blocks.
Parameters are concatenated along their first dimension, so each member owns its slice and an elementwise
optimizer (SGD, AdamW) over them is P independent optimizers; the packed loss sums per-member losses.

Every other operation of the model must act per channel or per (B, features) block: ReLU, pooling, residual
sums, flatten of (P·C, h, w) (member-major). A model that concatenates channels (DenseNet, Inception) or mixes
them otherwise would interleave members: it is not in the packing whitelist (src/sweep/plan.py), and the
equivalence test (tests/test_packing.py, member k against seed k alone) is what admits a family. A model that
draws random numbers in its forward (dropout) is refused (`draws_random_numbers`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GroupedLinear(nn.Module):
    """P Linear layers as one batched matmul on (B, P·in) inputs laid out member after member."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        first = linears[0]
        self.pack, self.in_features, self.out_features = len(linears), first.in_features, first.out_features
        self.weight = nn.Parameter(torch.stack([lin.weight.detach().t() for lin in linears]).contiguous())
        self.bias = (None if first.bias is None else
                     nn.Parameter(torch.stack([lin.bias.detach() for lin in linears])[:, None, :].contiguous()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.pack * self.in_features:
            raise ValueError(f"GroupedLinear takes (B, {self.pack}·{self.in_features}) inputs, got {tuple(x.shape)}")
        members = x.view(x.shape[0], self.pack, self.in_features).transpose(0, 1)  # (P, B, in)
        out = members @ self.weight if self.bias is None else torch.baddbmm(self.bias, members, self.weight)
        return out.transpose(0, 1).reshape(x.shape[0], self.pack * self.out_features)

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        state = {"weight": self.weight[k].detach().t()}
        if self.bias is not None:
            state["bias"] = self.bias[k, 0].detach()
        return state


def _concatenated(module: nn.Module, modules: Sequence[nn.Module]) -> nn.Module:
    """A copy of `module` (its class kept: timm's BatchNormAct2d, padded convs) whose own parameters and
    buffers are the members' concatenated along the first dimension; a scalar buffer (num_batches_tracked:
    every member takes the same steps) is kept once."""
    fused = copy.deepcopy(module)
    with torch.no_grad():
        for name, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if value.dim() == 0:
                continue
            joined = torch.cat([getattr(member, name).detach() for member in modules])
            if isinstance(value, nn.Parameter):
                setattr(fused, name, nn.Parameter(joined))
            else:
                setattr(fused, name, joined)
    return fused


def _grouped_conv(convs: Sequence[nn.Conv2d]) -> nn.Module:
    fused, pack = _concatenated(convs[0], convs), len(convs)
    fused.in_channels, fused.out_channels = pack * fused.in_channels, pack * fused.out_channels
    fused.groups = pack * fused.groups
    return fused


def _grouped_batchnorm(norms: Sequence[_BatchNorm]) -> nn.Module:
    fused = _concatenated(norms[0], norms)
    fused.num_features = len(norms) * fused.num_features  # what SyncBatchNorm's conversion reads
    return fused


def _grouper(module: nn.Module) -> Callable[[Sequence[nn.Module]], nn.Module] | None:
    if isinstance(module, nn.Conv2d):
        return _grouped_conv
    if isinstance(module, _BatchNorm):
        return _grouped_batchnorm
    if type(module) is nn.Linear:
        return GroupedLinear
    return None


def groupable(model: nn.Module) -> str | None:
    """None when every module with parameters or buffers of its own is one the grouping fuses; else why not."""
    for path, module in model.named_modules():
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        if own and _grouper(module) is None:
            return f"{type(module).__name__} at '{path}' holds {[name for name, _ in own]}"
    return None


def draws_random_numbers(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    """Whether a training-mode forward of `model` (a copy: its BatchNorm statistics stay) on zeros of
    `input_shape` draws from torch's CPU generator (dropout, drop-path). A grouped pack would draw for all its
    members at once, so member k would no longer see seed k's draws."""
    probe = copy.deepcopy(model).cpu().train()
    before = torch.get_rng_state()
    with torch.no_grad():
        probe(torch.zeros(2, *input_shape))
    return not torch.equal(before, torch.get_rng_state())


class GroupedPack(nn.Module):
    """P models of one architecture fused channel-wise: forward (P, B, C, H, W) → (P, B, classes).

    `body` sees (B, P·C, H, W), member k's channels in block k; with channels_last the input goes straight into
    (B, H, W, P·C) memory and the body's weights are NHWC. `forward_body` (the plain body, or a compiled
    functional call of it: src/models/packing.py) runs it.
    """

    def __init__(self, models: Sequence[nn.Module], channels_last: bool = False) -> None:
        super().__init__()
        why_not = groupable(models[0])
        if why_not:
            raise ValueError(f"cannot group {why_not}")
        self.pack, self.channels_last = len(models), channels_last
        self.body = copy.deepcopy(models[0])
        self.fused: list[str] = []
        for path, module in models[0].named_modules():
            grouper = _grouper(module)
            if grouper is None:
                continue
            parent, _, name = path.rpartition(".")
            setattr(self.body.get_submodule(parent), name, grouper([model.get_submodule(path) for model in models]))
            self.fused.append(path)
        if channels_last:
            self.body = self.body.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, shared_input: bool = False,
                forward_body: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        if shared_input:
            x = x.expand(self.pack, *x.shape)
        pack, batch, channels, height, width = x.shape
        if self.channels_last:  # one copy straight into (B, H, W, P·C) memory
            x = x.permute(1, 3, 4, 0, 2).reshape(batch, height, width, pack * channels).permute(0, 3, 1, 2)
        else:
            x = x.transpose(0, 1).reshape(batch, pack * channels, height, width)
        out = (forward_body or self.body)(x)
        return out.reshape(batch, pack, -1).transpose(0, 1)

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights and buffers under the names of the single model's state dict."""
        state = {}
        for path in self.fused:
            module = self.body.get_submodule(path)
            if isinstance(module, GroupedLinear):
                own = module.member_state(k)
            else:
                own = {name: value.detach() if value.dim() == 0 else value.detach().chunk(self.pack)[k]
                       for name, value in [*module.named_parameters(recurse=False),
                                           *module.named_buffers(recurse=False)]}
            for name, value in own.items():
                state[f"{path}.{name}" if path else name] = value.clone().contiguous()
        return state
