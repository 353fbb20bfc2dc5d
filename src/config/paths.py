"""Where an experiment's files go: the sweep directory, a job's directory, a seed's record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from src.contracts.records import record_path
from src.errors import ConfigError

MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of a sweep's config, written into its sweep directory at launch


def sweep_dir(cfg: Any) -> Path:
    """`<paths.output_dir>/<name>`: depends only on the config, not on the launcher."""
    return Path(cfg.paths.output_dir) / str(cfg.name)


def job_seed_list(seed: int, seeds: Any = None) -> list[int]:
    """A job's seeds from its config's `seed` and `seeds` (a packed job's, set by the launcher)."""
    return [int(k) for k in seeds] if seeds else [int(seed)]


def job_subdir(seed: int, seeds: Any = None) -> str:
    """A job's directory under the sweep: `seed=<k>`, or `pack=<first>-<last>` for a packed job."""
    seeds = job_seed_list(seed, seeds)
    return f"seed={seeds[0]}" if len(seeds) == 1 else f"pack={seeds[0]}-{seeds[-1]}"


def seed_record_path(cfg: Any, seed: int | None = None) -> Path:
    return record_path(sweep_dir(cfg), cfg.seed if seed is None else seed)


def check_creatable(directory: Path) -> None:
    """Without writing anything: the directory, or its nearest existing ancestor, is a writable directory."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {directory} ({existing} is not a writable directory); "
                          "set paths.output_dir to a writable directory")
