"""What identifies an experiment: a versioned, canonical form of the values that change what is trained.

`experiment_identity(config, data_fingerprint)` maps a plain resolved config (as `OmegaConf.to_container`
gives it, and as every record stores it in its metadata) to a canonical dict keyed by *what the value means*,
not by where the config files keep it:

- `data`: the data fingerprint (content, split and label noise: src/data/dataset.py) and, where a config sets
  it, `num_classes`; `normalize` and `augment` (applied during training, so not in the fingerprint);
- `model`: `timm_name`, `kwargs`, `small_input_stem`, `small_input_max_px`, `init`;
- `optimizer`: its class (`optim._target_`, or the pre-identity-2 `optim.name`) and its keyword arguments;
- `schedule`: its kind (the last part of `schedule._target_`, or the older `optim.schedule`), warm-up epochs
  and, for `step`, milestones and gamma;
- `trainer`: every Trainer argument except those that only choose devices, logging or speed (`NOT_TRAINING`);
- `batch_size`, `subset.ratio`, `subset.salt`, `subset.size_rule`, `subset.repeats` (which seeds share a
  subset: it changes what seed s trains on, so a record of another `repeats` is another experiment).

Canonical values: numbers become floats (`1` and `1.0` are one value), a key whose value is null or the
neutral value of `NEUTRAL` ("as before the key existed") is left out. So adding a config key whose default
keeps the old behaviour, moving a key to another config file (a new entry in `CANDIDATES`) or adding
`_target_`/`_partial_` keys leaves the identity unchanged. The identity's hash is the first HASH_CHARS hex
digits of SHA-256 over the canonical JSON with IDENTITY_VERSION.

Records written before identity 2 store an `experiment_hash` of the older scheme (hash of whole config groups)
and no `experiment_identity_version`: `record_experiment_hash(meta)` recomputes their identity from the config
they store, so they still match the experiments they belong to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

IDENTITY_VERSION = 2
VERSION_KEY = "experiment_identity_version"
HASH_CHARS = 16
# Trainer arguments that choose devices, logging, checkpoints or speed, not what is trained.
NOT_TRAINING = frozenset({
    "accelerator", "devices", "num_nodes", "strategy", "enable_progress_bar", "enable_model_summary",
    "log_every_n_steps", "enable_checkpointing", "default_root_dir", "deterministic", "benchmark", "logger",
    "callbacks", "plugins", "profiler", "detect_anomaly", "barebones", "fast_dev_run", "num_sanity_val_steps",
    "use_distributed_sampler", "max_time",
})
# Values that mean "as if the key were absent" (null always does).
NEUTRAL: dict[str, Any] = {
    "model.small_input_stem": "auto", "model.init": "default", "model.kwargs": {}, "data.augment.crop_padding": 0,
    "data.augment.hflip": False, "subset.salt": 0, "schedule.warmup_epochs": 0,
    "trainer.accumulate_grad_batches": 1, "trainer.sync_batchnorm": False, "trainer.max_steps": -1,
    "subset.size_rule": "round_half_up", "subset.repeats": 1,
}
# Where each value lives, newest layout first.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "data.normalize": ("dataset.normalize",), "data.augment": ("dataset.augment",),
    "data.num_classes": ("dataset.num_classes",),
    "model.timm_name": ("model.timm_name",), "model.kwargs": ("model.kwargs",),
    "model.small_input_stem": ("model.small_input_stem",), "model.small_input_max_px": ("model.small_input_max_px",),
    "model.init": ("model.init",),
    "batch_size": ("batch_size",), "subset.ratio": ("subset.ratio",), "subset.salt": ("subset.salt",),
    "subset.size_rule": ("subset.size_rule",), "subset.repeats": ("subset.repeats",),
    "schedule.warmup_epochs": ("schedule.warmup_epochs", "optim.warmup_epochs"),
    "schedule.milestones": ("schedule.milestones", "optim.step_milestones"),
    "schedule.gamma": ("schedule.gamma", "optim.step_gamma"),
}
# Optimizer classes of the configs before identity 2 (`optim.name`).
LEGACY_OPTIMIZERS = {"sgd": "torch.optim.SGD", "adamw": "torch.optim.AdamW"}
# Keys of the `optim` group that are not optimizer arguments (the schedule lived there before identity 2).
NOT_OPTIMIZER_ARGS = frozenset({"_target_", "_partial_", "_convert_", "name", "schedule", "warmup_epochs",
                                "step_milestones", "step_gamma"})


def _get(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _first(config: Mapping[str, Any], key: str) -> Any:
    return next((value for path in CANDIDATES[key] if (value := _get(config, path)) is not None), None)


def canonical(value: Any) -> Any:
    """Numbers as floats, mappings sorted, lists as lists; nulls dropped from mappings."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items()) if v is not None}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return str(value)


def _put(identity: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key unless the value is null or neutral; a neutral nested value is dropped leaf by leaf."""
    if isinstance(value, Mapping) and key in ("data.augment",):
        for sub, sub_value in value.items():
            _put(identity, f"{key}.{sub}", sub_value)
        return
    value = canonical(value)
    if value is None or (key in NEUTRAL and value == canonical(NEUTRAL[key])):
        return
    identity[key] = value


def _schedule(config: Mapping[str, Any]) -> str:
    target = _get(config, "schedule._target_")
    if target is not None:
        return str(target).rsplit(".", 1)[-1]
    return str(_get(config, "optim.schedule") or "constant")


def experiment_identity(config: Mapping[str, Any], data_fingerprint: str) -> dict[str, Any]:
    """The canonical identity (module docstring) of a plain resolved config."""
    identity: dict[str, Any] = {"data.fingerprint": str(data_fingerprint)}
    for key in CANDIDATES:
        if key.startswith("schedule.") and key != "schedule.warmup_epochs":
            continue
        _put(identity, key, _first(config, key))
    optim = _get(config, "optim") or {}
    target = optim.get("_target_") or LEGACY_OPTIMIZERS.get(str(optim.get("name")), optim.get("name"))
    _put(identity, "optimizer", target)
    for arg, value in optim.items():
        if arg not in NOT_OPTIMIZER_ARGS:
            _put(identity, f"optimizer.{arg}", value)
    schedule = _schedule(config)
    _put(identity, "schedule", schedule)
    if schedule == "step":
        _put(identity, "schedule.milestones", _first(config, "schedule.milestones"))
        _put(identity, "schedule.gamma", _first(config, "schedule.gamma"))
    for arg, value in (_get(config, "trainer") or {}).items():
        if arg not in NOT_TRAINING and not str(arg).startswith("_"):
            _put(identity, f"trainer.{arg}", value)
    return dict(sorted(identity.items()))


def identity_hash(identity: Mapping[str, Any]) -> str:
    blob = json.dumps({"version": IDENTITY_VERSION, "identity": identity}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:HASH_CHARS]


def experiment_hash(config: Mapping[str, Any], data_fingerprint: str) -> str:
    return identity_hash(experiment_identity(config, data_fingerprint))


def record_experiment_hash(meta: Mapping[str, Any]) -> str | None:
    """The identity-2 hash of the experiment a record belongs to: stored in records of identity 2, recomputed
    from the stored config for older ones; a record that stores no config keeps the hash it stores."""
    config = meta.get("config")
    if meta.get(VERSION_KEY) == IDENTITY_VERSION or not isinstance(config, Mapping):
        return None if meta.get("experiment_hash") is None else str(meta["experiment_hash"])
    return experiment_hash(config, str(meta.get("data_fingerprint")))


def identity_differences(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """`key: theirs → mine` for every value that differs (absent: `-`), e.g. `batch_size: 128 → 64`."""
    def show(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return json.dumps(value) if not isinstance(value, str) else value

    keys = sorted(set(mine) | set(theirs))
    return [f"{key}: {show(theirs.get(key))} → {show(mine.get(key))}" for key in keys
            if mine.get(key) != theirs.get(key)]
