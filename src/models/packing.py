"""P subset models trained as one: one vectorised forward, nothing shared.

`Members` holds P copies of one architecture, each built after seeding torch with its own seed (so
member k starts exactly where seed k trained alone starts). The forward maps (P, B, ...) inputs to
(P, B, classes) logits, by one of these mechanisms (`MECHANISMS`; the model's own is chosen before launch,
`src.sweep.plan.pack_mechanism`):
- P = 1: the plain module (no packing), so unpacked training costs what it did before;
- `baddbmm`, the MLP of src/models/zoo.py: weights stacked as (P, in, out), one `baddbmm` per layer, because
  batched linear layers under `vmap` over `functional_call` run well below baddbmm's GEMM rate
  (benchmarks/train_throughput.py; the figures are in docs/PERFORMANCE.md);
- `grouped`, convnets: one network whose convolutions have groups=P, BatchNorm over P·C channels and Linear
  layers as one baddbmm (src/models/grouped.py); channels_last applies;
- `vmap`: `torch.func.functional_call` under `vmap` over the stacked parameters and buffers; BatchNorm
  running statistics are stacked buffers updated in place per member.
tests/test_packing.py checks each mechanism against single runs.
Gradients cannot mix: the training loss is a sum of per-member losses, every parameter belongs to one member
(a slice of a stacked or concatenated tensor), and SGD/AdamW update every parameter element by element, so
one optimizer over the pack is P independent ones. vmap runs with randomness="error": a model that draws
random numbers in its forward (dropout) cannot be packed by vmap and says so.

With `compile` (a mode of torch.compile; None: eager), the forward is a functional call of a data-free template
of the network, compiled once per process, template key and mode. The template of the plain or grouped network
is taken at its first compiled forward, so it holds the layers the Trainer's strategy put there (DDP's
SyncBatchNorm), and its key says whether it has SyncBatchNorm.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from src.models.grouped import GroupedPack

MECHANISMS = ("baddbmm", "grouped", "vmap")
SINGLE = "single"  # the mechanism of P = 1: the plain module
CHANNELS_LAST_MECHANISMS = (SINGLE, "grouped")  # those whose convolutions keep NHWC (vmap's stacking does not)

_TEMPLATES: dict[str, nn.Module] = {}


def _template(key: str, model: nn.Module) -> nn.Module:
    """A data-free (meta device) copy of the architecture, one per process and template key."""
    if key not in _TEMPLATES:
        _TEMPLATES[key] = copy.deepcopy(model).to("meta")
    return _TEMPLATES[key]


def _functional(template: nn.Module, x_dim: int | None, vmapped: bool) -> Callable[..., torch.Tensor]:
    def call(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (params, buffers), (x,))

    return vmap(call, in_dims=(0, 0, x_dim), randomness="error") if vmapped else call


@lru_cache(maxsize=16)
def _compiled(key: str, x_dim: int | None, vmapped: bool, mode: str) -> Callable[..., torch.Tensor]:
    # Cached per process: later jobs of a sweep in the same process reuse the compiled graphs.
    return torch.compile(_functional(_TEMPLATES[key], x_dim, vmapped), mode=mode)


def mlp_forward(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """P MLPs at once: x (P, B, in) through weights (P, in, out) and biases (P, 1, out), ReLU between."""
    for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        x = torch.baddbmm(bias, x, weight)
        if layer < len(weights) - 1:
            x = torch.relu_(x)
    return x


@lru_cache(maxsize=4)
def _compiled_mlp_forward(mode: str) -> Callable[..., torch.Tensor]:
    return torch.compile(mlp_forward, mode=mode)


class PackedMLP(nn.Module):
    """P copies of `src.models.archs.MLP` with stacked, pre-transposed weights (one baddbmm per layer)."""

    def __init__(self, models: list[nn.Module], compile: str | None) -> None:
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
        forward = mlp_forward if self.compile is None else _compiled_mlp_forward(self.compile)
        return forward(list(self.weights), list(self.biases), x)

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        state = {}
        for name, weight, bias in zip(self.names, self.weights, self.biases, strict=True):
            state[f"{name}.weight"] = weight[k].detach().t().contiguous()
            state[f"{name}.bias"] = bias[k, 0].detach().clone()
        return state


class StackedMembers(nn.Module):
    """P models as stacked parameters and buffers, run by `functional_call` under `vmap`."""

    def __init__(self, models: list[nn.Module], arch_key: str, compile: str | None) -> None:
        super().__init__()
        self.key, self.compile = f"{arch_key}|vmap", compile
        params, buffers = stack_module_state(models)
        self.names, self.buffer_names = list(params), list(buffers)
        self.stacked = nn.ParameterList([nn.Parameter(params[name]) for name in self.names])
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer_{i}", buffers[name])
        _template(self.key, models[0])

    def train(self, mode: bool = True) -> StackedMembers:
        super().train(mode)
        _TEMPLATES[self.key].train(mode)
        return self

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        buffers = {name: getattr(self, f"buffer_{i}") for i, name in enumerate(self.buffer_names)}
        return dict(zip(self.names, self.stacked, strict=True)), buffers

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        x_dim = None if shared_input else 0
        call = _functional(_TEMPLATES[self.key], x_dim, True) if self.compile is None else \
            _compiled(self.key, x_dim, True, self.compile)
        return call(*self.state(), x)

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        params, buffers = self.state()
        return {name: value[k].detach().clone() for name, value in {**params, **buffers}.items()}


class Members(nn.Module):
    """P models of one architecture: forward (P, B, ...) → (P, B, classes).

    `arch_key` names the architecture (model config, input shape, classes, layout); `mechanism` (one of
    `MECHANISMS`) how P > 1 models run as one; with `compile` (torch.compile's mode) the forward is a functional
    call of a per-process template, compiled once per process, template key and mode.
    """

    def __init__(self, models: list[nn.Module], arch_key: str, mechanism: str = SINGLE, compile: str | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.pack, self.arch_key, self.compile, self.channels_last = len(models), arch_key, compile, channels_last
        self.template_key: str | None = None  # of the compiled forward's template (`_compiled_call`)
        if (mechanism == SINGLE) != (self.pack == 1) or mechanism not in (SINGLE, *MECHANISMS):
            raise ValueError(f"packing mechanism {mechanism!r} for {self.pack} models: {SINGLE} for one, else one "
                             f"of {MECHANISMS}")
        # Registered under the mechanism's name: `single` (P = 1, the plain model), `baddbmm`, `grouped`, `vmap`.
        self.mechanism = mechanism
        builders: dict[str, Callable[[], nn.Module]] = {
            SINGLE: lambda: models[0], "baddbmm": lambda: PackedMLP(models, compile),
            "grouped": lambda: GroupedPack(models, channels_last),
            "vmap": lambda: StackedMembers(models, arch_key, compile)}
        self.add_module(self.mechanism, builders[self.mechanism]())

    @property
    def network(self) -> nn.Module:
        return getattr(self, self.mechanism)

    def _traced(self) -> nn.Module | None:
        """The module whose template the compiled forward calls (the plain or grouped network), else None."""
        if self.compile is None:
            return None
        return {SINGLE: self.network, "grouped": getattr(self.network, "body", None)}.get(self.mechanism)

    def _compiled_call(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The compiled functional call of `module`'s template. The template key is taken at the first compiled
        forward (after DDP's strategy swapped BatchNorm for SyncBatchNorm, the template has them too: a key of its
        own) and kept, rather than found again by a walk over the network's modules at every step."""
        if self.template_key is None:
            sync = any(isinstance(layer, nn.SyncBatchNorm) for layer in module.modules())
            self.template_key = f"{self.arch_key}|{self.mechanism}|pack={self.pack}|sync_batchnorm={sync}"
        key = self.template_key
        _template(key, module).train(self.training)
        state = (dict(module.named_parameters()), dict(module.named_buffers()))
        return lambda x: _compiled(key, None, False, self.compile)(*state, x)

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """x: (P, B, ...) per-member inputs, or (B, ...) given to every member when shared_input."""
        traced = self._traced()
        if self.mechanism == SINGLE:
            x = x if shared_input else x[0]
            return (self.network(x) if traced is None else self._compiled_call(traced)(x)).unsqueeze(0)
        if self.mechanism == "grouped":
            return self.network(x, shared_input, None if traced is None else self._compiled_call(traced))
        return self.network(x, shared_input)

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as the plain state dict of a single model (for model.pt and tests)."""
        if self.mechanism == SINGLE:
            return {name: value.detach().clone() for name, value in self.network.state_dict().items()}
        return self.network.member_state_dict(k)
