"""The checks every composed config passes before anything trains (the launcher's pre-flight and each job).

Checks that need no data: raise ConfigError saying what is wrong and what to do.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import inspect
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.config.compose import plain
from src.contracts.identity import experiment_hash, experiment_identity
from src.data.subsets import check_seed, subset_size
from src.errors import ConfigError

# Every true/false setting of conf/ (tests/test_config.py checks that no boolean default is missing): each takes
# a boolean only, so that `overwrite=flase` or `record.save_model=no` is refused instead of reading as true.
BOOLEAN_KEYS = (
    "overwrite", "perf.channels_last", "perf.compile", "record.save_model", "optim.nesterov", "dataset.download",
    "dataset.verify_checksums", "dataset.augment.hflip", "trainer.deterministic", "trainer.enable_checkpointing",
    "trainer.enable_model_summary", "trainer.benchmark", "trainer.sync_batchnorm",
)
# Settings that take a boolean or `auto`.
BOOLEAN_OR_AUTO_KEYS = ("progress", "model.small_input_stem")
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


@lru_cache(maxsize=1)
def trainer_arguments() -> frozenset[str]:
    """The keyword arguments of `pytorch_lightning.Trainer`, read from its source (Lightning is not imported)."""
    spec = importlib.util.find_spec("pytorch_lightning")
    if spec is None or spec.origin is None:
        raise ConfigError("pytorch_lightning is not installed; pip install -e . in the project")
    tree = ast.parse((Path(spec.origin).parent / "trainer" / "trainer.py").read_text())
    trainer = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Trainer")
    init = next(node for node in trainer.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    return frozenset(arg.arg for arg in init.args.args[1:] + init.args.kwonlyargs)


def target_arguments(target: str) -> frozenset[str]:
    """The keyword arguments of the callable a `_target_` names, with Hydra's own keys."""
    from hydra.utils import get_method

    parameters = inspect.signature(get_method(target)).parameters
    return frozenset(parameters) | HYDRA_KEYS


HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})


def valid_keys(path: str, node: Any) -> frozenset[str]:
    """The keys a config node may hold: its schema's fields (src/config/schema.py), the Trainer's arguments for
    `trainer`, the optimizer's for `optim`; a node without a schema takes any key."""
    if path == "trainer":
        return trainer_arguments()
    if path == "optim" and isinstance(node, DictConfig) and isinstance(node.get("_target_"), str):
        return target_arguments(node._target_) - {"params"}
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is not None and dataclasses.is_dataclass(schema):
        return frozenset(field.name for field in dataclasses.fields(schema))
    return frozenset(node.keys()) if isinstance(node, DictConfig) else frozenset()


def closest_key(key: str, name: str, valid: frozenset[str]) -> str:
    """One line refusing the unknown `key` (whose last part is `name`), naming the closest valid key."""
    parent = key.rpartition(".")[0]
    close = difflib.get_close_matches(name, sorted(valid), n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else \
        f"valid keys: {', '.join(sorted(k for k in valid if not k.startswith('_')))}"
    return f"{key} is not a setting; {hint}"


def check_keys(cfg: DictConfig) -> None:
    """Every key of the composed config is in its node's schema (a `+key=value` adds keys Hydra does not check)."""
    def walk(node: DictConfig, path: str) -> None:
        valid = valid_keys(path, node)
        for key in node:
            full = f"{path}.{key}" if path else str(key)
            if valid and key not in valid:
                raise ConfigError(closest_key(full, str(key), valid))
            child = node._get_node(key)
            if isinstance(child, DictConfig) and full not in FREE_NODES and not OmegaConf.is_missing(node, key):
                walk(child, full)

    walk(cfg, "")


# Nodes whose keys are whatever the model or data set takes (timm keyword arguments, per-channel statistics).
FREE_NODES = frozenset({"model.kwargs", "hydra"})
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
    check_keys(cfg)
    check_booleans(cfg)
    check_seed(cfg.seed)
    subset_size(1, float(cfg.subset.ratio))
    if not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size!r} must be a positive integer")
    if not isinstance(cfg.subset.salt, int) or cfg.subset.salt < 0:
        raise ConfigError(f"subset.salt={cfg.subset.salt!r} must be a non-negative integer")
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
    check_targets(cfg)
    check_optimizer(cfg.optim)


def config_identity(cfg: DictConfig, data_fingerprint: str) -> dict[str, Any]:
    """The experiment identity (src/contracts/identity.py) of a composed config."""
    return experiment_identity(plain(cfg), data_fingerprint)


def config_hash(cfg: DictConfig, data_fingerprint: str) -> str:
    return experiment_hash(plain(cfg), data_fingerprint)
