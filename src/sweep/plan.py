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

from src.config.checks import validate_config
from src.config.compose import compose_config
from src.config.paths import check_creatable, sweep_dir
from src.contracts.records import find_records, record_path
from src.data.subsets import check_seed
from src.errors import ConfigError
from src.estimators.registry import get_estimator, record_scores
from src.sweep.done import State, Wanted, record_state, refuse_foreign
from src.sweep.seeds import MULTIRUN_FLAGS, SEED_ARG, seeds_of

# Families whose packed members equal single runs: exactly the timm names tests/test_packing.py checks.
PACKABLE_TIMM_NAMES = ("meminf_mlp", "meminf_cnn_small", "resnet18")


def packable(timm_name: str) -> bool:
    return timm_name in PACKABLE_TIMM_NAMES


def resolve_pack(requested: int | str | None, model_cfg: Any, n_seeds: int, ddp: bool = False) -> tuple[int, str]:
    """The pack size for `n_seeds` seeds and why: `auto` takes the model's measured default (1 under DDP)."""
    if requested in (None, "auto") and ddp:
        return 1, "DDP trains one model per job"
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


def pending_seeds(cfg: DictConfig, seeds: list[int], notes: list[str] | None = None) -> list[int]:
    """Validate config, output directory and data once; then the seeds that still need a record.

    Every record already in the sweep directory must be of this experiment (else the sweep would mix two
    experiments): one of another is an error unless overwrite=true, and with overwrite=true the records of
    another experiment that this launch does not replace get a line in `notes`. Nothing is created: the sweep
    directory, or its nearest existing ancestor, must be writable.
    """
    from src.data.dataset import load_dataset

    for seed in seeds:
        check_seed(seed)
    validate_config(cfg)
    sweep = sweep_dir(cfg)  # once: each lookup resolves the config's interpolations (docs/PERFORMANCE.md)
    check_creatable(sweep)  # nothing is created before the checks pass: Hydra makes it at launch
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    wanted = Wanted.of(cfg, dataset.fingerprint)
    done, kept_foreign, asked = set(), [], set(seeds)
    for path in find_records(sweep):
        state = record_state(path, wanted)
        refuse_foreign(path, state, wanted)
        if state.state is State.DONE and path == record_path(sweep, state.meta["seed"]):
            done.add(int(state.meta["seed"]))
        if state.state is State.FOREIGN and int(state.meta.get("seed", -1)) not in asked:
            kept_foreign.append((int(state.meta["seed"]), state.reason))
    if kept_foreign and notes is not None:
        shown = ", ".join(str(seed) for seed, _ in sorted(kept_foreign)[:MAX_LISTED])
        notes.append(f"warning: {len(kept_foreign)} record(s) in {sweep} stay of another experiment (seeds "
                     f"{shown}{', ...' if len(kept_foreign) > MAX_LISTED else ''}; each {kept_foreign[0][1]}); "
                     "src.estimate keeps the larger group: delete them, retrain them too, or use another name=")
    pending = [seed for seed in seeds if seed not in done]
    existing = {path.name for path in sweep.iterdir()} if sweep.is_dir() else set()
    for seed in pending:  # a job writes its log and record into an existing seed directory
        directory = record_path(sweep, seed).parent
        if directory.name in existing and not os.access(directory, os.W_OK | os.X_OK):
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
    notes: tuple[str, ...] = ()  # warnings for the user, printed before launching

    @property
    def jobs(self) -> int:
        return math.ceil(len(self.pending) / self.pack)


def _is_hydra_override(arg: str) -> bool:
    return arg.lstrip("+~").startswith(("hydra.", "hydra/"))


MAX_LISTED = 8  # seeds named in a message

# Launchers whose jobs run on other machines: the pre-flight cannot know their devices.
REMOTE_LAUNCHERS = ("slurm", "submitit_slurm")


def launcher_name(args: list[str]) -> str:
    return next((arg.split("=", 1)[1] for arg in args if arg.lstrip("+~").startswith("hydra/launcher=")), "basic")


def check_launch(cfg: DictConfig, pack: int, local: bool) -> None:
    """What a job would refuse and a config check cannot see: devices (for jobs on this machine), DDP with packing,
    a model that cannot take the data (built once on the CPU)."""
    from src.data.dataset import load_dataset
    from src.models.build import build_model

    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if local and accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator} needs a GPU and this machine has none; use "
                              "trainer=cpu, or launch on GPU nodes (hydra/launcher=slurm)")
    if pack > 1 and str(cfg.trainer.get("strategy", "auto")).startswith("ddp"):
        raise ConfigError(f"pack={pack} with trainer.strategy={cfg.trainer.strategy}: packing and DDP do not combine; "
                          "add pack=1")
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    build_model(cfg.model, dataset.input_shape, dataset.num_classes)


def plan_sweep(args: list[str]) -> SweepPlan | None:
    """The pre-flight of a command line with expanded seed ranges; None when it is Hydra's business alone
    (--cfg, --help, sweeps over other keys)."""
    if any(arg.startswith("-") and arg not in MULTIRUN_FLAGS for arg in args):
        return None
    multirun = any(arg in MULTIRUN_FLAGS for arg in args)
    overrides = [arg for arg in args if arg not in MULTIRUN_FLAGS]
    seed_args = [arg for arg in overrides if SEED_ARG.match(arg)]
    seeds = seeds_of(SEED_ARG.match(seed_args[-1])["value"]) if seed_args else None
    fixed = [arg for arg in overrides if arg not in seed_args]
    if seed_args and any(arg.lstrip("+~").startswith("seeds=") for arg in fixed):
        raise ConfigError("seed=... and seeds=[...] both given: seeds= is the launcher's own (the seeds of a packed "
                          "job); give the sweep's seeds with seed= only")
    parsed = OverridesParser.create().parse_overrides([arg for arg in fixed if not _is_hydra_override(arg)])
    if (seed_args and seeds is None) or any(o.is_sweep_override() for o in parsed) or (multirun and not seeds):
        return None
    cfg = compose_config([*fixed, f"seed={seeds[0]}"] if seeds else fixed)
    estimator = get_estimator(str(cfg.estimator.name))
    local = launcher_name(fixed) not in REMOTE_LAUNCHERS
    if estimator.trains != "subsets":  # its own job per seed, never packed; no records to look up
        estimator.check_config(cfg)
        check_launch(cfg, 1, local)
        runs = seeds or [cfg.seed]
        return SweepPlan(cfg, multirun, runs, runs, 1, f"estimator={estimator.name}: one run per seed")
    record_scores(cfg.record.scores, cfg.record)  # the job builds them at its end; a bad name is known now
    notes: list[str] = []
    if float(cfg.subset.ratio) == 1.0:
        notes.append("warning: subset.ratio=1.0 trains every model on every example, so no example is ever left out "
                     "and src.estimate finds no memorization; it is for removal experiments (src.removal)")
    if not multirun:
        pending = pending_seeds(cfg, [cfg.seed], notes)
        check_launch(cfg, 1, local)
        return SweepPlan(cfg, False, [cfg.seed], pending, 1, "one run", tuple(notes))
    pending = pending_seeds(cfg, seeds, notes)
    pack, why = resolve_pack(cfg.pack, cfg.model, len(pending), ddp=str(cfg.trainer.get("strategy", "")).startswith(
        "ddp"))
    check_launch(cfg, pack, local)
    return SweepPlan(cfg, True, seeds, pending, pack, why, tuple(notes))
