"""Composing conf/ outside a Hydra job, with one-line errors; the resolvers conf/ uses.

Every process that composes or runs a job imports this module: it registers `meminf_job_dir`, the resolver of
conf/hydra/default.yaml that names a job's directory (`seed=<k>`, or `pack=<first>-<last>` for a packed job).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from src.config.paths import job_subdir
from src.contracts.identity import LEGACY_OPTIMIZERS
from src.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
OmegaConf.register_new_resolver("meminf_job_dir", job_subdir, replace=True)


def compose_config(overrides: list[str]) -> DictConfig:
    """conf/ composed with command-line overrides (no Hydra job); a bad override is a one-line ConfigError."""
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=overrides)
    except HydraException as err:
        raise ConfigError(hydra_message(str(err))) from err


def hydra_message(text: str) -> str:
    """One line of a Hydra composition error: an unknown option names the group's options; the config search
    path Hydra appends is left out."""
    lines = [line.strip() for line in text.split("Config search path")[0].splitlines() if line.strip()]
    missing = re.search(r"Could not find '([^']+)/([^']+)'", lines[0]) if lines else None
    if missing and len(lines) > 1 and lines[1].startswith("Available options"):
        group, option = missing.groups()
        return f"{group}={option} is unknown; choose one of {', '.join(lines[2:])} (conf/{group}/)"
    return "; ".join(lines)


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts and lists (what records store)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


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
