"""wandb for training jobs: offline automatically when there are no credentials (`wandb sync` later).

Imported only when `logger=wandb`, so no other job pays for importing wandb.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

WANDB_HOST = "api.wandb.ai"


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str) -> str:
    """`auto`: WANDB_MODE if set, online with credentials, offline without."""
    if requested != "auto":
        return requested
    return os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")


def run_tags(cfg: DictConfig) -> list[str]:
    return [f"dataset={cfg.dataset.name}", f"model={cfg.model.name}", f"ratio={cfg.subset.ratio}",
            *map(str, cfg.logger.tags)]


def wandb_logger(cfg: DictConfig, seed_dir: Path) -> Any:
    from pytorch_lightning.loggers import WandbLogger

    seed_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity, group=str(cfg.name), job_type="train",
        name=f"{cfg.name}/seed={cfg.seed}", tags=run_tags(cfg), mode=wandb_mode(cfg.logger.mode),
        save_dir=str(seed_dir), config=OmegaConf.to_container(cfg, resolve=True),
    )


def finish_wandb() -> None:
    """At most one wandb run per job: close it whatever happened."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
