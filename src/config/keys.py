"""Which keys a config node may hold, and the one-line refusal of one it may not (with the closest valid name).

Shared by the composer (src/config/compose.py: Hydra's own "key not in struct" errors) and the pre-flight checks
(src/config/checks.py: keys added with `+key=value`, which Hydra does not check).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import inspect
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError


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
