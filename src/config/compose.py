"""Composing conf/ outside a Hydra job, with one-line errors; the resolvers conf/ uses.

Every process that composes or runs a job imports this module: it registers `meminf_job_dir`, the resolver of
conf/hydra/default.yaml that names a job's directory (`seed=<k>`, or `pack=<first>-<last>` for a packed job).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

import src.config.schema  # noqa: F401  (registers the structured configs of conf/)
from src.config.keys import closest_key, valid_keys
from src.config.paths import job_subdir
from src.contracts.identity import LEGACY_OPTIMIZERS
from src.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
OmegaConf.register_new_resolver("meminf_job_dir", job_subdir, replace=True)


def config_groups() -> str:
    """`group: option, ...` for each group of conf/ a user chooses from (conf/hydra/default.yaml's help)."""
    groups = sorted(path for path in CONFIG_DIR.iterdir() if path.is_dir() and path.name != "hydra")
    return "\n".join(f"{group.name}: {', '.join(sorted(option.stem for option in group.glob('*.yaml')))}"
                     for group in groups)


OmegaConf.register_new_resolver("meminf_config_groups", config_groups, replace=True)


def compose_config(overrides: list[str]) -> DictConfig:
    """conf/ composed with command-line overrides (no Hydra job); a bad override is a one-line ConfigError."""
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=overrides)
    except HydraException as err:
        raise ConfigError(hydra_message(err, overrides)) from err


CONVERSION = re.compile(r"Value '(?P<value>.*)' of type '\w+' could not be converted to (?P<type>\w+)")
NOT_IN_STRUCT = re.compile(r"Could not override '(?P<key>[^']+)'")


def hydra_message(err: Exception, overrides: list[str]) -> str:
    """One line of a Hydra composition error, saying what to do: a value of the wrong type names the type; a key
    that does not exist names the closest one; an unknown option lists the group's options. The config search
    path Hydra appends is left out."""
    text, cause = str(err), err.__cause__
    converted = CONVERSION.search(str(cause)) if cause is not None else None
    if converted:
        key = getattr(cause, "full_key", None) or "the value"
        kind = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false"}.get(converted["type"],
                                                                                            converted["type"])
        return f"{key}={converted['value']} must be {kind}"
    unknown = NOT_IN_STRUCT.search(text)
    if unknown:
        return unknown_key_message(unknown["key"], [o for o in overrides if not o.lstrip("+~").startswith(
            f"{unknown['key']}=")])
    lines = [line.strip() for line in text.split("Config search path")[0].splitlines() if line.strip()]
    missing = re.search(r"Could not find '([^']+)/([^']+)'", lines[0]) if lines else None
    if missing and len(lines) > 1 and lines[1].startswith("Available options"):
        group, option = missing.groups()
        options = [name for name in lines[2:] if not name.startswith(SCHEMA_PREFIX)]
        return f"{group}={option} is unknown; choose one of {', '.join(options)} (conf/{group}/)"
    return "; ".join(lines)


SCHEMA_PREFIX = "base_"  # the ConfigStore names of the schemas (src/config/schema.py), not options to choose


def unknown_key_message(key: str, other_overrides: list[str]) -> str:
    """`trainer.max_epoch is not a setting; did you mean trainer.max_epochs?`, from the keys the config has there."""

    parent, _, name = key.rpartition(".")
    try:
        cfg = compose_config(other_overrides)
    except ConfigError:
        return f"{key} is not a setting of conf/; check its spelling"
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return closest_key(key, name, valid_keys(parent, node))


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts and lists (what records store)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def stored_config(metas: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The resolved config stored by the first of these records that stores one, in today's layout (None when
    none does)."""
    return next((upgrade_config(meta["config"]) for meta in metas if isinstance(meta.get("config"), dict)), None)


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A record's stored config in today's layout. Records written before identity 2 name the optimizer by
    `optim.name`, keep the schedule in `optim` (schedule, warmup_epochs, step_milestones, step_gamma) and name the
    logger by `logger.kind`; today they are `_target_` configs and `schedule` is a group of its own."""
    config = copy.deepcopy(config)
    optim = config.get("optim")
    if isinstance(optim, dict) and "_target_" not in optim and "name" in optim:
        name = optim.pop("name")
        kind = optim.pop("schedule", "constant")
        warmup, milestones, gamma = (optim.pop(key, default) for key, default in
                                     (("warmup_epochs", 0), ("step_milestones", []), ("step_gamma", 0.1)))
        config["optim"] = {"_target_": LEGACY_OPTIMIZERS.get(name, name), "_partial_": True, "_convert_": "all",
                           **optim}
        config["schedule"] = {"_target_": f"src.training.schedules.{kind}", "_partial_": True,
                              "warmup_epochs": warmup, **({"milestones": milestones, "gamma": gamma}
                                                          if kind == "step" else {})}
    logger = config.get("logger")
    if isinstance(logger, dict) and "kind" in logger and "_target_" not in logger:
        kind = logger.pop("kind")
        factory = "no_logger" if kind == "none" else f"{kind}_logger"
        config["logger"] = {"_target_": f"src.tracking.loggers.{factory}", "_partial_": True, **logger}
    return config
