"""What identifies an experiment: the hash of everything that changes the trained model, and where
its records live.

The experiment hash covers the data (content fingerprint, which includes the label noise), the data
set, model, optimizer and trainer settings, the batch size and the subset ratio and salt. It leaves out
what does not change the trained model: the seed (each record has its own), launcher, logger, device,
paths, progress bars, checkpointing and evaluation batch size. A record is reused only when its hash
equals the job's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError
from src.records import record_path
from src.subsets import check_seed, subset_size

# Keys that do not change the trained model, per config group.
NON_MODEL_KEYS = {
    "dataset": {"data_dir", "download", "verify_checksums", "eval_batch_size", "num_workers"},
    "trainer": {
        "accelerator", "devices", "num_nodes", "strategy", "enable_progress_bar", "enable_model_summary",
        "log_every_n_steps", "enable_checkpointing", "default_root_dir", "deterministic", "benchmark",
    },
}
MODEL_GROUPS = ("dataset", "model", "optim", "trainer", "subset")
MODEL_KEYS = ("batch_size",)
HASH_CHARS = 16


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def experiment_hash(cfg: DictConfig, data_fingerprint: str) -> str:
    payload: dict[str, Any] = {"data_fingerprint": data_fingerprint}
    for group in MODEL_GROUPS:
        values = _plain(cfg[group])
        payload[group] = {k: v for k, v in values.items() if k not in NON_MODEL_KEYS.get(group, set())}
    for key in MODEL_KEYS:
        payload[key] = _plain(cfg[key])
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:HASH_CHARS]


def sweep_dir(cfg: DictConfig) -> Path:
    """`<paths.output_dir>/<name>`: depends only on the config, not on the launcher."""
    return Path(cfg.paths.output_dir) / str(cfg.name)


def seed_record_path(cfg: DictConfig, seed: int | None = None) -> Path:
    return record_path(sweep_dir(cfg), cfg.seed if seed is None else seed)


def validate_config(cfg: DictConfig) -> None:
    """Checks that need no data: raise ConfigError with what is wrong and what to do."""
    check_seed(cfg.seed)
    subset_size(1, float(cfg.subset.ratio))
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size!r} must be a positive integer")
    if not isinstance(cfg.subset.salt, int) or cfg.subset.salt < 0:
        raise ConfigError(f"subset.salt={cfg.subset.salt!r} must be a non-negative integer")
    epochs = cfg.trainer.max_epochs
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"trainer.max_epochs={epochs!r} must be a positive integer")
    if str(cfg.name) in ("", ".", "..") or "/" in str(cfg.name):
        raise ConfigError(f"name={cfg.name!r} must be a plain directory name")
