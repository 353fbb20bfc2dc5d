"""P subset models trained as one: stacked parameters, one vectorised forward, nothing shared.

`Members` holds P copies of one architecture, each built after seeding torch with its own seed (so
member k starts exactly where seed k trained alone starts). The forward maps (P, B, ...) inputs to
(P, B, classes) logits, by one of three mechanisms:
- P = 1: the plain module (no vmap), so unpacked training costs what it did before;
- the MLP of src/models/zoo.py at P > 1: weights stacked as (P, in, out), one `baddbmm` per layer, because
  batched linear layers under `vmap` over `functional_call` run well below baddbmm's GEMM rate
  (benchmarks/train_throughput.py; the figures are in docs/PERFORMANCE.md);
- any other packable model at P > 1: `torch.func.functional_call` under `vmap` over the stacked
  parameters and buffers; BatchNorm running statistics are stacked buffers updated in place per member.
tests/test_packing.py checks each mechanism against single runs.
Gradients cannot mix: the training loss is a sum of per-member losses, and SGD/AdamW update every
parameter element by element. vmap runs with randomness="error": a model that draws random numbers in
its forward (dropout) cannot be packed and says so.

Which models may be packed (`src.experiment.resolve_pack`) is a whitelist of families that pass the
equivalence test (member k of a pack equals seed k trained alone); any other model runs at pack=1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

_TEMPLATES: dict[str, nn.Module] = {}


def _template(arch_key: str, model: nn.Module) -> nn.Module:
    """A data-free (meta device) copy of the architecture, one per process and architecture key."""
    if arch_key not in _TEMPLATES:
        _TEMPLATES[arch_key] = copy.deepcopy(model).to("meta")
    return _TEMPLATES[arch_key]


def _functional(template: nn.Module, x_dim: int | None, vmapped: bool) -> Callable[..., torch.Tensor]:
    def call(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (params, buffers), (x,))

    return vmap(call, in_dims=(0, 0, x_dim), randomness="error") if vmapped else call


@lru_cache(maxsize=16)
def _compiled(arch_key: str, x_dim: int | None, vmapped: bool) -> Callable[..., torch.Tensor]:
    # Cached per process: later jobs of a sweep in the same process reuse the compiled graphs.
    return torch.compile(_functional(_TEMPLATES[arch_key], x_dim, vmapped))


def mlp_forward(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """P MLPs at once: x (P, B, in) through weights (P, in, out) and biases (P, 1, out), ReLU between."""
    for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        x = torch.baddbmm(bias, x, weight)
        if layer < len(weights) - 1:
            x = torch.relu_(x)
    return x


_compiled_mlp_forward = lru_cache(maxsize=1)(lambda: torch.compile(mlp_forward))


class PackedMLP(nn.Module):
    """P copies of `src.models.archs.MLP` with stacked, pre-transposed weights (one baddbmm per layer)."""

    def __init__(self, models: list[nn.Module], compile: bool) -> None:
        super().__init__()
        self.pack, self.compile = len(models), compile
        layers = [[module for module in model.modules() if isinstance(module, nn.Linear)] for model in models]
        self.names = [name for name, module in models[0].named_modules() if isinstance(module, nn.Linear)]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.stack([m[i].weight.detach().t() for m in layers]).contiguous())
             for i in range(len(self.names))])
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.stack([m[i].bias.detach() for m in layers])[:, None, :].contiguous())
             for i in range(len(self.names))])

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        x = x.flatten(1).expand(self.pack, -1, -1) if shared_input else x.flatten(2)
        forward = _compiled_mlp_forward() if self.compile else mlp_forward
        return forward(list(self.weights), list(self.biases), x)

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        state = {}
        for name, weight, bias in zip(self.names, self.weights, self.biases, strict=True):
            state[f"{name}.weight"] = weight[k].detach().t().contiguous()
            state[f"{name}.bias"] = bias[k, 0].detach().clone()
        return state


class Members(nn.Module):
    """P models of one architecture: forward (P, B, ...) → (P, B, classes).

    `arch_key` names the architecture (model config, input shape, classes); with `compile` the forward
    is a functional call of a per-process template, compiled once per process and key.
    """

    def __init__(self, models: list[nn.Module], arch_key: str, compile: bool = False) -> None:
        super().__init__()
        from src.models.archs import MLP

        self.pack, self.arch_key, self.compile = len(models), arch_key, compile
        self.mlp = PackedMLP(models, compile) if self.pack > 1 and isinstance(models[0], MLP) else None
        if self.pack == 1:
            self.single = models[0]
        elif self.mlp is None:
            params, buffers = stack_module_state(models)
            self.names, self.buffer_names = list(params), list(buffers)
            self.stacked = nn.ParameterList([nn.Parameter(params[name]) for name in self.names])
            for i, name in enumerate(self.buffer_names):
                self.register_buffer(f"buffer_{i}", buffers[name])
        if self.mlp is None and (self.pack > 1 or compile):
            _template(arch_key, models[0])

    @property
    def template(self) -> nn.Module:
        return _TEMPLATES[self.arch_key]

    def train(self, mode: bool = True) -> Members:
        super().train(mode)
        if self.mlp is None and (self.pack > 1 or self.compile):
            self.template.train(mode)
        return self

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self.pack == 1:
            return dict(self.single.named_parameters()), dict(self.single.named_buffers())
        params = dict(zip(self.names, self.stacked, strict=True))
        buffers = {name: getattr(self, f"buffer_{i}") for i, name in enumerate(self.buffer_names)}
        return params, buffers

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """x: (P, B, ...) per-member inputs, or (B, ...) given to every member when shared_input."""
        if self.mlp is not None:
            return self.mlp(x, shared_input)
        if self.pack == 1:
            x = x if shared_input else x[0]
            if not self.compile:
                return self.single(x).unsqueeze(0)
            return _compiled(self.arch_key, None, False)(*self._state(), x).unsqueeze(0)
        x_dim = None if shared_input else 0
        call = _compiled(self.arch_key, x_dim, True) if self.compile else _functional(self.template, x_dim, True)
        return call(*self._state(), x)

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as the plain state dict of a single model (for model.pt and tests)."""
        if self.mlp is not None:
            return self.mlp.member_state_dict(k)
        if self.pack == 1:
            return {name: value.detach().clone() for name, value in self.single.state_dict().items()}
        params, buffers = self._state()
        return {name: value[k].detach().clone() for name, value in {**params, **buffers}.items()}
