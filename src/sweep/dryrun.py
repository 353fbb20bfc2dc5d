"""`python -m src.run [-m] ... --dry-run`: what a launch would do, without launching or writing anything.

The command line goes through the launcher's own pre-flight (src/sweep/plan.py: config composed and checked
once, data loaded, the output directory's nearest existing ancestor writable, records of another experiment
refused); then one table: seeds done and missing, jobs at the resolved pack, storage and compute.

Storage: a record of this sweep, zero-filled but of the real shapes and metadata, serialised by the record
contract's own writer (src/contracts/records.py `record_arrays`, `np.savez`) in memory. Compute: seconds per
model from recent, comparable jobs, times the seeds to train, with the basis stated (src/sweep/status.py
`planned_rate`): the wall-clock pace of the sweep's latest launch when it ran at the same pack and accelerator,
else the mean `wall_time_s` (training only) of the latest records at that pack and device. Seeds that a job of
another launch is training now (src/sweep/jobstate.py) are shown in flight, not as missing.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from src.config.checks import config_hash
from src.config.paths import sweep_dir
from src.contracts.records import read_meta, record_arrays, record_path
from src.data.dataset import Dataset, load_dataset
from src.errors import ConfigError
from src.estimators.registry import get_estimator
from src.sweep.plan import SweepPlan, plan_combinations
from src.sweep.seeds import expand_seed_ranges
from src.sweep.status import planned_rate, seeds_of, sweep_status
from src.training.record import MemberOutputs, member_record
from src.util.tables import duration_text, key_value_lines


def record_bytes(cfg: DictConfig, dataset: Dataset, seed: int) -> int:
    """Bytes of one record of this sweep: a zero-filled record of the real layout through the real writer."""
    n_train, n_test = len(dataset.y_train), len(dataset.y_test)
    epochs = np.asarray(sorted(cfg.record.epochs), dtype=np.int64)
    outputs = MemberOutputs(
        train_pred=dataset.y_train, train_prob=np.zeros(n_train, np.float32), test_pred=dataset.y_test,
        test_prob=np.zeros(n_test, np.float32),
        proxies={str(name): np.zeros(n_train, np.float32) for name in cfg.record.scores}, epoch_list=epochs,
        epoch_train_correct=np.zeros((epochs.size, n_train), bool) if epochs.size else None,
        epoch_test_correct=np.zeros((epochs.size, n_test), bool) if epochs.size else None)
    record = member_record(cfg, dataset, seed, np.ones(n_train, dtype=bool), "0" * 16, outputs, pack=1,
                           wall_time=0.0, device="cpu", torch_threads=os.cpu_count() or 1)
    buffer = io.BytesIO()
    np.savez(buffer, **record_arrays(record))
    return buffer.getbuffer().nbytes


def _size(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def dry_run_reports(args: list[str]) -> list[list[tuple[str, str]]]:
    """The rows of the dry-run table of each combination of the swept keys other than the seed (one table when
    only seeds are swept), for this command line (as `python -m src.run` gets it)."""
    plans = plan_combinations(expand_seed_ranges(args))
    if plans is None:
        raise ConfigError("--dry-run plans a sweep (or one run) and does not combine with --cfg/--help: drop them")
    return [([("combination", label)] if label else []) + dry_run_report(plan) for label, plan in plans]


def dry_run_report(plan: SweepPlan) -> list[tuple[str, str]]:
    """The rows of the dry-run table of one plan."""
    cfg, sweep = plan.cfg, sweep_dir(plan.cfg)
    estimator = get_estimator(str(cfg.estimator.name))
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    experiment = (f"{cfg.name} {config_hash(cfg, dataset.fingerprint)}: {dataset.name}, {cfg.model.name}, "
                  f"ratio {cfg.subset.ratio}, {len(dataset.y_train)} train x {len(dataset.y_test)} test")
    if estimator.trains != "subsets":
        return [("dry run", "nothing launched, nothing written"), ("sweep", str(sweep)),
                ("experiment", f"{experiment}; estimator {estimator.name}"),
                ("jobs", f"{len(plan.pending)} run(s), one per seed ({plan.why})")]
    pending = set(plan.pending)
    done_paths = [record_path(sweep, seed) for seed in plan.seeds if seed not in pending]
    per_record = record_bytes(cfg, dataset, plan.seeds[0])
    storage = f"{_size(per_record)} per record (the record writer on a zero-filled record)"
    if done_paths:
        storage += f", measured {_size(np.mean([path.stat().st_size for path in done_paths]))} " \
                   f"({len(done_paths)} records)"
    missing = len(plan.pending)
    status = sweep_status(sweep)
    flying = [job for job in status.in_flight if set(job.seeds) & pending]
    n_flying = len(seeds_of(flying) & pending)
    in_flight = f", {n_flying} in flight ({'; '.join(job.what for job in flying)})" if flying else ""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    rate = planned_rate(status, [(read_meta(path), path.stat().st_mtime) for path in done_paths], plan.pack,
                        accelerator)
    compute = f"unknown: no finished record at pack {plan.pack} on {accelerator}"
    if rate is not None:
        to_train = missing - n_flying
        compute = f"{rate.text()} x {to_train} = {duration_text(rate.seconds_per_model * to_train)}"
    return [
        ("dry run", "nothing launched, nothing written"),
        ("sweep", f"{sweep}" + ("" if Path(sweep).exists() else " (not created yet)")),
        ("experiment", experiment),
        ("seeds", f"{len(plan.seeds)} requested: {len(done_paths)} done{in_flight}, {missing - n_flying} to train"),
        ("jobs", (f"{plan.jobs} job(s) of up to {plan.pack} model(s) ({plan.why})" if missing else
                  "none: every seed is done")
                 + (f"; a launch now would train the {n_flying} in flight again" if flying else "")),
        ("storage", f"{storage}; {_size(per_record * missing)} for the {missing} missing"),
        ("compute", compute),
    ]


def print_dry_run(args: list[str]) -> None:
    tables = dry_run_reports(args)
    width = max(len(key) for rows in tables for key, _ in rows)
    print("\n\n".join("\n".join(key_value_lines(rows, width)) for rows in tables))
