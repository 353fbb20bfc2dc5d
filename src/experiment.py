"""What identifies an experiment: the hash of everything that changes the trained model, and where
its records live.

The experiment hash covers the data (content fingerprint, which includes the label noise), the data
set, model, optimizer and trainer settings, the batch size and the subset ratio and salt. It leaves out
what does not change the trained model: the seed (each record has its own), launcher, logger, device,
paths, progress bars, checkpointing, evaluation batch size and what a record holds (`record.*`). A record
is reused only when its hash equals the job's.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
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
OPTIMIZERS = ("sgd", "adamw")
# Every true/false setting of conf/ (tests/test_config.py checks that no boolean default is missing): each takes
# a boolean only, so that `overwrite=flase` or `record.save_model=no` is refused instead of reading as true.
BOOLEAN_KEYS = (
    "overwrite", "perf.channels_last", "perf.compile", "record.save_model", "optim.nesterov", "dataset.download",
    "dataset.verify_checksums", "dataset.augment.hflip", "trainer.deterministic", "trainer.enable_checkpointing",
    "trainer.enable_model_summary", "trainer.benchmark", "trainer.sync_batchnorm",
)
# Settings that take a boolean or `auto`.
BOOLEAN_OR_AUTO_KEYS = ("progress", "model.small_input_stem")
SCHEDULES = ("constant", "cosine", "linear", "step")


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


def job_subdir(seed: int, seeds: Any = None) -> str:
    """A job's directory under the sweep: `seed=<k>`, or `pack=<first>-<last>` for a packed job."""
    seeds = list(seeds) if seeds else [seed]
    return f"seed={seeds[0]}" if len(seeds) == 1 else f"pack={seeds[0]}-{seeds[-1]}"


def seed_record_path(cfg: DictConfig, seed: int | None = None) -> Path:
    return record_path(sweep_dir(cfg), cfg.seed if seed is None else seed)


def check_writable(directory: Path) -> None:
    """Create the directory and a probe file in it, or say which directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to {directory} ({err.strerror or err}); "
                          "set paths.output_dir to a writable directory") from err


def check_booleans(cfg: DictConfig) -> None:
    """A true/false setting holds a boolean (Hydra parses true/false; any other word arrives as a string)."""
    for key in (*BOOLEAN_KEYS, *BOOLEAN_OR_AUTO_KEYS):
        value = OmegaConf.select(cfg, key, default=None)
        allowed = (True, False, "auto") if key in BOOLEAN_OR_AUTO_KEYS else (True, False)
        if value is not None and not any(value is choice or (value == choice and isinstance(value, str))
                                         for choice in allowed):
            words = " or ".join(f"{key}={str(choice).lower()}" for choice in allowed)
            raise ConfigError(f"{key}={value!r} is not a boolean; use {words}")


def validate_config(cfg: DictConfig) -> None:
    """Checks that need no data: raise ConfigError with what is wrong and what to do."""
    check_booleans(cfg)
    check_seed(cfg.seed)
    subset_size(1, float(cfg.subset.ratio))
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size!r} must be a positive integer")
    if not isinstance(cfg.subset.salt, int) or cfg.subset.salt < 0:
        raise ConfigError(f"subset.salt={cfg.subset.salt!r} must be a non-negative integer")
    epochs = cfg.trainer.max_epochs
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"trainer.max_epochs={epochs!r} must be a positive integer")
    record_epochs = list(cfg.record.get("epochs") or [])
    if (any(not isinstance(e, int) or isinstance(e, bool) or not 1 <= e <= epochs for e in record_epochs)
            or len(set(record_epochs)) != len(record_epochs)):
        raise ConfigError(f"record.epochs={record_epochs} must be distinct epochs in 1..{epochs} "
                          f"(trainer.max_epochs), e.g. record.epochs=[1,{epochs}]")
    if str(cfg.name) in ("", ".", "..") or "/" in str(cfg.name):
        raise ConfigError(f"name={cfg.name!r} must be a plain directory name")
    if cfg.optim.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name={cfg.optim.name!r} is unknown; use optim=sgd or optim=adamw")
    if cfg.optim.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={cfg.optim.schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")


# Families whose packed members equal single runs (tests/test_packing.py), as timm name prefixes.
PACKABLE_TIMM_NAMES = ("meminf_mlp", "meminf_cnn_small", "resnet")


def packable(timm_name: str) -> bool:
    return timm_name.startswith(PACKABLE_TIMM_NAMES)


def resolve_pack(requested: int | str | None, model_cfg: Any, n_seeds: int) -> tuple[int, str]:
    """The pack size for `n_seeds` seeds and why: `auto` takes the model's measured default."""
    if requested in (None, "auto"):
        pack, why = int(model_cfg.get("pack_default", 1)), f"model {model_cfg.name} default"
    elif isinstance(requested, int) and not isinstance(requested, bool):
        pack, why = requested, f"pack={requested}"
    else:
        raise ConfigError(f"pack={requested!r} must be a positive integer or auto")
    if pack < 1:
        raise ConfigError(f"pack={requested} must be a positive integer or auto")
    if pack > 1 and not packable(str(model_cfg.timm_name)):
        return 1, f"model {model_cfg.name} is not in the packing whitelist (no equivalence test): pack=1"
    if pack > n_seeds:
        return max(1, n_seeds), f"pack={pack} clamped to the {n_seeds} seeds of this sweep"
    return pack, why
