"""Weight initialisations a model config asks for by name (`model.init`), the way timm's `weight_init` does.

`default` keeps what the model's own constructor draws (PyTorch's and timm's initialisations). `stax` is the
initialisation of JAX's stax layers, which the authors' MNIST demo (heldout-influence-estimation,
mnist_infl_mem.py) trains with: every Linear and Conv2d weight from `glorot_normal`, i.e.
`variance_scaling(1.0, "fan_avg", "truncated_normal")` (a standard normal truncated to (-2, 2), rescaled so that
its standard deviation is sqrt(2 / (fan_in + fan_out)), the fans of a conv including its receptive field), Dense
biases from normal(0.01) and Conv biases from normal(1e-6) (stax.Dense and stax.GeneralConv defaults). Other
modules (BatchNorm, embeddings) keep their own. The draws come from torch's global generator, which the job seeds
per model (src/training/job.py), so a seed fixes the initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from src.errors import ModelError

TRUNCATION = 2.0  # jax.random.truncated_normal(key, -2, 2) in variance_scaling
DENSE_BIAS_STD = 1e-2  # stax.Dense: b_init=normal() (stddev 1e-2)
CONV_BIAS_STD = 1e-6  # stax.GeneralConv: b_init=normal(1e-6)


def truncated_normal_std(bound: float) -> float:
    """Standard deviation of a standard normal truncated to (-bound, bound) (JAX's .87962566103423978 at 2)."""
    mass = math.erf(bound / math.sqrt(2))
    density = math.exp(-bound * bound / 2) / math.sqrt(2 * math.pi)
    return math.sqrt(1 - 2 * bound * density / mass)


def glorot_truncated_normal_(weight: torch.Tensor) -> None:
    """variance_scaling(1.0, "fan_avg", "truncated_normal") in place: (out, in, *kernel) as PyTorch lays it out."""
    receptive = math.prod(weight.shape[2:])
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    std = math.sqrt(2 / (fan_in + fan_out)) / truncated_normal_std(TRUNCATION)
    nn.init.trunc_normal_(weight, 0.0, std, -TRUNCATION * std, TRUNCATION * std)


@torch.no_grad()
def stax_init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            glorot_truncated_normal_(module.weight)
            if module.bias is not None:
                module.bias.normal_(0.0, DENSE_BIAS_STD if isinstance(module, nn.Linear) else CONV_BIAS_STD)


INITS: dict[str, Callable[[nn.Module], None] | None] = {"default": None, "stax": stax_init}


def apply_init(model: nn.Module, name: str, model_name: str) -> None:
    if name not in INITS:
        raise ModelError(f"model '{model_name}': init={name!r} is unknown; use one of {', '.join(INITS)}")
    init = INITS[name]
    if init is not None:
        init(model)
