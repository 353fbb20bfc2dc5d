"""A command line's plan before anything launches: the config checked once, the data loaded once, the seeds
that still need a record (src/sweep/done.py), and how they pack into jobs.

For a sweep over seeds only, the launcher composes the config once, checks it and the data, drops the seeds
whose record is done and hands Hydra only the rest, grouped into packs; a bad sweep fails once, not once
per job. Each job applies the same done-rule to its own seeds again, so the pre-flight is an optimisation,
never the only guard. Sweeps over other keys (`model=a,b`) go to Hydra unplanned.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from src.config.checks import config_hash, validate_config
from src.config.compose import compose_config
from src.config.paths import check_creatable, check_writable, seed_record_path, sweep_dir
from src.contracts.records import find_records
from src.data.subsets import check_seed
from src.errors import ConfigError
from src.estimators.registry import get_estimator
from src.sweep.done import State, Wanted, record_state, refuse_foreign
from src.sweep.seeds import MULTIRUN_FLAGS

# Families whose packed members equal single runs: exactly the timm names tests/test_packing.py checks.
PACKABLE_TIMM_NAMES = ("meminf_mlp", "meminf_cnn_small", "resnet18")


def packable(timm_name: str) -> bool:
    return timm_name in PACKABLE_TIMM_NAMES


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


def pending_seeds(cfg: DictConfig, seeds: list[int], create_dir: bool = True) -> list[int]:
    """Validate config, output directory and data once; then the seeds that still need a record.

    Every record already in the sweep directory must be of this experiment (else the sweep would mix two
    experiments): one of another is an error unless overwrite=true. Without `create_dir` (a dry run) the
    sweep directory is not created: its nearest existing ancestor must be writable.
    """
    from src.data.dataset import load_dataset

    for seed in seeds:
        check_seed(seed)
    validate_config(cfg)
    (check_writable if create_dir else check_creatable)(sweep_dir(cfg))
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    wanted = Wanted.of(cfg, config_hash(cfg, dataset.fingerprint))
    done = set()
    for path in find_records(sweep_dir(cfg)):
        state = record_state(path, wanted)
        refuse_foreign(path, state, wanted)
        if state.state is State.DONE and path == seed_record_path(cfg, state.meta["seed"]):
            done.add(int(state.meta["seed"]))
    pending = [seed for seed in seeds if seed not in done]
    for seed in pending:  # a job writes its log and record into an existing seed directory
        directory = seed_record_path(cfg, seed).parent
        if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write to {directory}; fix permissions (or delete it), then relaunch")
    return pending


@dataclass(frozen=True)
class SweepPlan:
    """A command line after the pre-flight: the seeds asked for, those still to train, how they pack."""

    cfg: DictConfig  # composed with the first seed
    sweep: bool  # a -m sweep over seeds (else one run)
    seeds: list[int]
    pending: list[int]
    pack: int
    why: str

    @property
    def jobs(self) -> int:
        return math.ceil(len(self.pending) / self.pack)


def _is_hydra_override(arg: str) -> bool:
    return arg.lstrip("+~").startswith(("hydra.", "hydra/"))


def plan_sweep(args: list[str], create_dir: bool = True) -> SweepPlan | None:
    """The pre-flight of a command line with expanded seed ranges; None when it is Hydra's business alone
    (--cfg, --help, sweeps over other keys)."""
    if any(arg.startswith("-") and arg not in MULTIRUN_FLAGS for arg in args):
        return None
    overrides = [arg for arg in args if arg not in MULTIRUN_FLAGS and not _is_hydra_override(arg)]
    parsed = OverridesParser.create().parse_overrides(overrides)
    seed_parsed = [o for o in parsed if o.key_or_group == "seed"]
    multirun = any(arg in MULTIRUN_FLAGS for arg in args)
    other_sweeps = any(o.is_sweep_override() for o in parsed if o.key_or_group != "seed")
    seeds = [int(s) for s in seed_parsed[0].sweep_iterator()] if seed_parsed and \
        seed_parsed[0].is_sweep_override() else []
    fixed = [arg for arg, o in zip(overrides, parsed, strict=True) if o.key_or_group != "seed"]
    if other_sweeps or (multirun and not seeds):
        return None
    cfg = compose_config(fixed + ([f"seed={seeds[0]}"] if seeds else [o.input_line for o in seed_parsed]))
    estimator = get_estimator(str(cfg.estimator.name))
    if estimator.trains != "subsets":  # its own job per seed, never packed; no records to look up
        estimator.check_config(cfg)
        runs = seeds or [cfg.seed]
        return SweepPlan(cfg, bool(seeds), runs, runs, 1, f"estimator={estimator.name}: one run per seed")
    if not seeds:
        return SweepPlan(cfg, False, [cfg.seed], pending_seeds(cfg, [cfg.seed], create_dir), 1, "one run")
    pending = pending_seeds(cfg, seeds, create_dir)
    return SweepPlan(cfg, True, seeds, pending, *resolve_pack(cfg.pack, cfg.model, len(pending)))
