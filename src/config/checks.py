"""The checks every composed config passes before anything trains (the launcher's pre-flight and each job).

Checks that need no data: raise ConfigError saying what is wrong and what to do.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.config.compose import plain
from src.config.keys import check_keys
from src.contracts.identity import experiment_hash, experiment_identity
from src.data.subsets import check_repeats, check_seed, subset_size
from src.errors import ConfigError

# Every true/false setting of conf/ (tests/test_config.py checks that no boolean default is missing): each takes
# a boolean only, so that `overwrite=flase` or `record.save_model=no` is refused instead of reading as true.
BOOLEAN_KEYS = (
    "overwrite", "perf.compile", "record.save_model", "optim.nesterov", "dataset.download",
    "dataset.verify_checksums", "dataset.augment.hflip", "trainer.deterministic", "trainer.enable_checkpointing",
    "trainer.enable_model_summary", "trainer.benchmark", "trainer.sync_batchnorm",
)
# Settings that take a boolean or `auto`.
BOOLEAN_OR_AUTO_KEYS = ("progress", "model.small_input_stem", "perf.channels_last")
# The groups whose values define what a job trains (a retrained recipe takes them from a record's config).
TRAINING_GROUPS = ("dataset", "model", "optim", "schedule", "trainer", "subset")
TARGET_GROUPS = ("optim", "schedule", "logger")  # instantiated from their `_target_`


def check_booleans(cfg: DictConfig) -> None:
    """A true/false setting holds a boolean (Hydra parses true/false; any other word arrives as a string)."""
    for key in (*BOOLEAN_KEYS, *BOOLEAN_OR_AUTO_KEYS):
        value = OmegaConf.select(cfg, key, default=None)
        allowed = (True, False, "auto") if key in BOOLEAN_OR_AUTO_KEYS else (True, False)
        if value is not None and not any(value is choice or (value == choice and isinstance(value, str))
                                         for choice in allowed):
            words = " or ".join(f"{key}={str(choice).lower()}" for choice in allowed)
            raise ConfigError(f"{key}={value!r} is not a boolean; use {words}")


def check_targets(cfg: DictConfig) -> None:
    """`optim`, `schedule` and `logger` name an importable `_target_` (what hydra.utils.instantiate calls)."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_method

    for group in TARGET_GROUPS:
        target = OmegaConf.select(cfg, f"{group}._target_", default=None)
        if not isinstance(target, str) or not target:
            raise ConfigError(f"{group}._target_ is missing; choose a {group}= option from conf/{group}/")
        try:
            get_method(target)
        except (ImportError, InstantiationException, ValueError) as err:
            raise ConfigError(f"{group}._target_={target} cannot be imported; choose a {group}= option from "
                              f"conf/{group}/") from err


# Ranges of optimizer arguments: (low, high, low included, high included).
OPTIMIZER_RANGES = {"lr": (0.0, math.inf, False, False), "weight_decay": (0.0, math.inf, True, False),
                    "momentum": (0.0, 1.0, True, False), "dampening": (0.0, 1.0, True, True)}


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} must be a number")
    return float(value)


def check_optimizer(optim: DictConfig) -> None:
    """Types and ranges of the optimizer's arguments: lr > 0, weight decay >= 0, momentum and betas in [0, 1)."""
    for name, (low, high, with_low, with_high) in OPTIMIZER_RANGES.items():
        if name in optim:
            value = _number(f"optim.{name}", optim[name])
            if not ((low < value or (with_low and value == low)) and (value < high or (with_high and value == high))):
                brackets = ("[" if with_low else "(") + f"{low:g}, {high:g}" + ("]" if with_high else ")")
                raise ConfigError(f"optim.{name}={optim[name]} is outside {brackets}")
    if "betas" in optim:
        betas = list(optim.betas)
        if len(betas) != 2 or not all(0 <= _number("optim.betas", beta) < 1 for beta in betas):
            raise ConfigError(f"optim.betas={betas} must be two numbers in [0, 1), e.g. optim.betas=[0.9,0.999]")


def validate_config(cfg: DictConfig) -> None:
    """Checks that need no data (module docstring)."""
    check_targets(cfg)  # first: the optimizer's keys are those of the class its _target_ names
    check_keys(cfg)
    check_booleans(cfg)
    check_seed(cfg.seed)
    subset_size(1, float(cfg.subset.ratio), str(cfg.subset.size_rule))
    if not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size!r} must be a positive integer")
    if not isinstance(cfg.subset.salt, int) or cfg.subset.salt < 0:
        raise ConfigError(f"subset.salt={cfg.subset.salt!r} must be a non-negative integer")
    check_repeats(cfg.subset.repeats)
    epochs = cfg.trainer.max_epochs
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(f"trainer.max_epochs={epochs!r} must be a positive integer")
    record_epochs = list(cfg.record.get("epochs") or [])
    if (any(not isinstance(e, int) or isinstance(e, bool) or not 1 <= e <= epochs for e in record_epochs)
            or len(set(record_epochs)) != len(record_epochs)):
        raise ConfigError(f"record.epochs={record_epochs} must be distinct epochs in 1..{epochs} "
                          f"(trainer.max_epochs), e.g. record.epochs=[1,{epochs}]")
    if str(cfg.name) in ("", ".", "..") or "/" in str(cfg.name):
        raise ConfigError(f"name={cfg.name!r} must be a plain directory name")
    check_optimizer(cfg.optim)
    check_compile(cfg)


GPU_ACCELERATORS = ("gpu", "cuda")  # Lightning's names of a CUDA device
# Lightning's precision values that autocast to float16 behind a loss scaler ("16" is the older name of 16-mixed),
# and those that compute in bfloat16.
FP16_MIXED = ("16-mixed", "16")
BF16 = ("bf16-mixed", "bf16", "bf16-true")
MIXED = (*FP16_MIXED, "bf16-mixed", "bf16")  # autocast: the weights and the optimizer stay in float32


def check_pack(trainer: DictConfig, pack: int) -> None:
    """What packed members cannot share: DDP, a global gradient norm, fp16's loss scaler."""
    if pack == 1:
        return
    if str(trainer.get("strategy", "auto")).startswith("ddp"):
        raise ConfigError(f"pack={pack} with trainer.strategy={trainer.strategy}: packing and DDP do not combine; "
                          "add pack=1")
    if trainer.get("gradient_clip_val"):
        raise ConfigError("trainer.gradient_clip_val clips the global norm, which would couple packed "
                          "members; use pack=1 with gradient clipping")
    if str(trainer.get("precision")) in FP16_MIXED:
        raise ConfigError(f"trainer.precision={trainer.precision} at pack={pack}: its one loss scaler would skip "
                          "every member's step when one member's gradients overflow; use "
                          "trainer.precision=bf16-mixed (or 32-true), or pack=1")


# torch.compile's modes; the CUDA-graph ones record a graph per batch shape and replay it, which only a GPU does.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_compile(cfg: DictConfig) -> None:
    """perf.compile_mode: a mode of torch.compile that takes effect (with perf.compile) on this trainer's device."""
    mode = cfg.perf.compile_mode
    if mode not in COMPILE_MODES:
        raise ConfigError(f"perf.compile_mode={mode} is none of {', '.join(COMPILE_MODES)}")
    if mode != "default" and not cfg.perf.compile:
        raise ConfigError(f"perf.compile_mode={mode} takes effect with perf.compile=true: add it, or drop "
                          "perf.compile_mode")
    if mode in CUDA_GRAPH_MODES and str(cfg.trainer.get("accelerator", "cpu")) not in GPU_ACCELERATORS:
        raise ConfigError(f"perf.compile_mode={mode} records CUDA graphs, which need trainer=gpu; on "
                          f"trainer.accelerator={cfg.trainer.get('accelerator', 'cpu')} use default or "
                          "max-autotune-no-cudagraphs")


def check_device(trainer: DictConfig) -> None:
    """What this machine's device cannot do, known before anything trains: a GPU trainer without a GPU, bf16 on a
    GPU without bfloat16 arithmetic (torch would emulate it, slowly, or autocast would fail in the first step)."""
    accelerator = str(trainer.get("accelerator", "cpu"))
    if accelerator not in GPU_ACCELERATORS:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} needs a GPU and this machine has none; use "
                          "trainer=cpu, or launch on GPU nodes (hydra/launcher=slurm)")
    precision = str(trainer.get("precision"))
    if precision in BF16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(f"trainer.precision={precision}: this GPU ({torch.cuda.get_device_name()}) has no "
                          "bfloat16 arithmetic; add trainer.precision=16-mixed (pack=1 only) or "
                          "trainer.precision=32-true")


def config_identity(cfg: DictConfig, data_fingerprint: str) -> dict[str, Any]:
    """The experiment identity (src/contracts/identity.py) of a composed config."""
    return experiment_identity(plain(cfg), data_fingerprint)


def config_hash(cfg: DictConfig, data_fingerprint: str) -> str:
    return experiment_hash(plain(cfg), data_fingerprint)
