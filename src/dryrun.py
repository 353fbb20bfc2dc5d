"""`python -m src.run [-m] ... --dry-run`: what a launch would do, without launching or writing anything.

The command line goes through the launcher's own pre-flight (`src.run.plan_sweep`: config composed and
checked once, data loaded, the output directory's nearest existing ancestor writable, records of another
experiment refused); then one table: seeds done and missing, jobs at the resolved pack, storage and compute.

Storage of a record follows the layout of `src/records.py` written by `np.savez` (an uncompressed zip, one
`<key>.npy` member per array): each member costs its data, a 128-byte npy header, a zip local header (30
bytes + name + the 20-byte zip64 extra np.savez asks for) and a central directory entry (46 bytes + name);
the archive ends with a 22-byte end record. `meta` is a 0-d numpy unicode string: 4 bytes per character.
Compute is the mean `wall_time_s` (per model) of the records already written, times the seeds missing.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError
from src.records import PROXIES, PROXY_PREFIX

NPY_HEADER_BYTES = 128  # every member of a record: numpy pads the format-1.0 header to a multiple of 64 bytes
ZIP_LOCAL_BYTES = 30 + 20  # local file header + zip64 extra field (np.savez opens members with force_zip64)
ZIP_CENTRAL_BYTES = 46  # central directory entry, without its name
ZIP_END_BYTES = 22
UNICODE_BYTES = 4  # numpy stores '<U' strings as UTF-32
PROB_BYTES = 4  # float32: probabilities and proxies
FLIPPED_IDX_BYTES = 8  # int64
# Characters of a record's meta JSON besides its config and the strings counted separately (sweep dir, name,
# dataset, model, host): 714 in outputs/fz_mnist/seed=0/record.npz (2026-11-22: meta 1,875 characters,
# config 1,125 plus 12 for its key, sweep dir/name/dataset/model/host 16+8+7+3+2), with a 40-character git commit.
META_OTHER_CHARS = 714
SUBSET_ESTIMATOR = "subsample"  # conf/estimator/subsample.yaml: one record per seed
SECONDS_PER_MINUTE = 60
SECONDS_PER_HOUR = 3600


def label_bytes(num_classes: int) -> int:
    """Bytes per stored label or prediction: int16 up to 32,767 classes, else int32 (records.record_arrays)."""
    return 2 if num_classes <= np.iinfo(np.int16).max else 4


def record_members(n_train: int, n_test: int, num_classes: int, n_flipped: int, meta_chars: int,
                   extras: dict[str, int] | None = None, record_epochs: int = 0) -> dict[str, int]:
    """Data bytes of every member of one record (extras: name -> bytes; record_epochs: len(record.epochs)),
    with every proxy of src.records.PROXIES (training writes them all)."""
    labels = label_bytes(num_classes)
    members = {"meta": UNICODE_BYTES * meta_chars, "subset_mask": math.ceil(n_train / 8),
               "flipped_idx": FLIPPED_IDX_BYTES * n_flipped, "flipped_orig_label": labels * n_flipped}
    for split, n in (("train", n_train), ("test", n_test)):
        members.update({f"{split}_label": labels * n, f"{split}_pred": labels * n,
                        f"{split}_correct": math.ceil(n / 8), f"{split}_prob": PROB_BYTES * n})
        if record_epochs:
            members[f"epoch_{split}_correct"] = record_epochs * math.ceil(n / 8)
    if record_epochs:
        members["epoch_list"] = 4 * record_epochs  # int32
    members.update({f"extra_{name}": size for name, size in (extras or {}).items()})
    members.update({f"{PROXY_PREFIX}{name}": PROB_BYTES * n_train for name in PROXIES})
    return members


def archive_bytes(members: dict[str, int]) -> int:
    """Size of the .npz holding members of these data sizes."""
    overhead = sum(NPY_HEADER_BYTES + ZIP_LOCAL_BYTES + ZIP_CENTRAL_BYTES + 2 * len(f"{name}.npy") for name in members)
    return sum(members.values()) + overhead + ZIP_END_BYTES


def meta_chars(cfg: DictConfig, seed: int, sweep: Path) -> int:
    """Characters of a record's meta JSON for this config (training.member_record writes it)."""
    config = {**OmegaConf.to_container(cfg, resolve=True), "seed": seed, "seeds": None}
    counted = (str(sweep), str(cfg.name), str(cfg.dataset.name), str(cfg.model.name), platform.node())
    return META_OTHER_CHARS + len(json.dumps(config, sort_keys=True)) + sum(map(len, counted))


def _size(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    if seconds < SECONDS_PER_MINUTE:
        return f"{seconds:.1f} s"
    if seconds < SECONDS_PER_HOUR:
        return f"{seconds:.0f} s ({seconds / SECONDS_PER_MINUTE:.1f} min)"
    return f"{seconds:.0f} s ({seconds / SECONDS_PER_HOUR:.2f} h)"


def dry_run_report(args: list[str]) -> list[tuple[str, str]]:
    """The rows of the dry-run table for this command line (as `python -m src.run` gets it)."""
    from src.data import load_dataset, record_extras
    from src.experiment import experiment_hash, seed_record_path, sweep_dir
    from src.records import read_meta
    from src.run import expand_seed_ranges, plan_sweep

    plan = plan_sweep(expand_seed_ranges(args), create_dir=False)
    if plan is None:
        raise ConfigError("--dry-run plans a sweep over seeds (or one run); drop --cfg/--help and sweeps over "
                          "other keys, or dry-run each value separately")
    cfg, sweep = plan.cfg, sweep_dir(plan.cfg)
    if cfg.estimator.name != SUBSET_ESTIMATOR:
        raise ConfigError(f"--dry-run plans subset-training sweeps (estimator={SUBSET_ESTIMATOR}); "
                          f"estimator={cfg.estimator.name} trains one run: launch it without --dry-run")
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    done = [seed for seed in plan.seeds if seed not in set(plan.pending)]
    done_paths = [seed_record_path(cfg, seed) for seed in done]
    wall_times = [float(read_meta(path)["wall_time_s"]) for path in done_paths]
    members = record_members(len(dataset.y_train), len(dataset.y_test), dataset.num_classes, dataset.flipped_idx.size,
                             meta_chars(cfg, plan.seeds[0], sweep),
                             {name: np.asarray(values).nbytes for name, values in record_extras(dataset).items()},
                             len(cfg.record.get("epochs") or []))
    per_record = archive_bytes(members)
    storage = f"{_size(per_record)} per record (layout formula)"
    if done_paths:
        storage += f", measured {_size(np.mean([path.stat().st_size for path in done_paths]))} ({len(done)} records)"
    missing = len(plan.pending)
    compute = "unknown: no finished record"
    if wall_times:
        mean = float(np.mean(wall_times))
        compute = (f"{mean:.2f} s/model (mean wall_time_s of {len(wall_times)} records) x {missing} = "
                   f"{_duration(mean * missing)} of training, one job at a time")
    return [
        ("dry run", "nothing launched, nothing written"),
        ("sweep", f"{sweep}" + ("" if sweep.exists() else " (not created yet)")),
        ("experiment", f"{cfg.name} {experiment_hash(cfg, dataset.fingerprint)}: {dataset.name}, {cfg.model.name}, "
                       f"ratio {cfg.subset.ratio}, {len(dataset.y_train)} train x {len(dataset.y_test)} test"),
        ("seeds", f"{len(plan.seeds)} requested: {len(done)} done, {missing} to train"),
        ("jobs", f"{plan.jobs} job(s) of up to {plan.pack} model(s) ({plan.why})"),
        ("storage", f"{storage}; {_size(per_record * missing)} for the {missing} missing"),
        ("compute", compute),
    ]


def print_dry_run(args: list[str]) -> None:
    rows = dry_run_report(args)
    width = max(len(key) for key, _ in rows)
    print("\n".join(f"{key.ljust(width)}  {value}" for key, value in rows))
