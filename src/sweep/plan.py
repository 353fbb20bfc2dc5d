"""A command line's plan before anything launches: the config checked once, the data loaded once, the seeds
that still need a record (src/sweep/done.py), and how they pack into jobs.

A -m sweep is planned by meminf's sweeper (src/hydra_plugins/meminf_sweep/sweeper.py, `plan_jobs`): once per
combination of the values of the other swept keys (`model=a,b`, `subset.ratio=...`), it composes the config,
checks it and the data, drops the seeds whose record is done and groups the rest into packs (`seeds=[...]`); a bad
sweep fails once, before anything launches, not once per job. One run (no -m) and --dry-run are planned here
from the command line (`plan_sweep`). Each job applies the same done-rule to its own seeds again, so the plan is
an optimisation, never the only guard.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from src.config.checks import FP16_MIXED, check_device, check_pack, validate_config
from src.config.compose import compose_config
from src.config.paths import check_creatable, sweep_dir
from src.contracts.records import find_records, record_path
from src.data.subsets import check_seed
from src.errors import ConfigError
from src.estimators.registry import get_estimator, record_scores
from src.sweep.done import State, Wanted, record_state, refuse_foreign
from src.sweep.seeds import MULTIRUN_FLAGS, SEED_ARG, pack_groups, seeds_of

# Families whose packed members equal single runs, by timm name, with the mechanisms that pack them
# (src/models/packing.py), the default (perf.packing=auto) first: exactly what tests/test_packing.py checks.
PACKING = {"meminf_mlp": ("baddbmm",), "meminf_cnn_small": ("grouped", "vmap"), "resnet18": ("grouped", "vmap"),
           "resnet50": ("grouped",)}
# mobilenetv2 groups (tests/test_grouped.py) but is not listed: on the digits test its packed members end one
# epoch far beyond the tolerance from seed k alone (probabilities 0.37 apart). Not a packing error: in float64
# a grouped pack stays within 3e-7 of the single models over 6 SGD steps, while in float32 one model against
# itself on inputs scaled by 1 + 1e-6 goes from 4e-4 to 5 apart in its logits after one step (8x8 inputs, small
# stem), so no tolerance admits it on that data. Synthetic 3x32x32 images do not admit it either: after one SGD
# step at lr 1e-4, members 1 and 2 of a pack of 3 are 1.0e-3 and 1.65e-3 from seeds 4 and 5 alone in probability
# (tolerance 2e-4; 0 apart in float64): its float32 gradient at initialisation is already 0.5% off float64's.
# Families whose blocks concatenate channels: under grouping that interleaves the members' channels, so they
# train one model per job (docs/PERFORMANCE.md).
CONCATENATING_TIMM_PREFIXES = ("densenet", "meminf_densenet", "inception", "meminf_inception")
# Optimizers that update each parameter element from its own gradient and state only: one of them over a pack is
# P independent ones, since the packed loss sums the members' mean losses (tests/test_grouped.py steps both
# against P optimizers). Others are refused for packs: one with statistics over a whole tensor (Adafactor's
# factored moments, LAMB's norms) would couple the members it holds.
ELEMENTWISE_OPTIMIZERS = ("torch.optim.SGD", "torch.optim.AdamW")


def unpacked_reason(model_cfg: Any) -> str | None:
    """Why a model trains one per job whatever pack is asked, or None for the families of `PACKING`."""
    timm_name = str(model_cfg.timm_name)
    if timm_name.startswith(CONCATENATING_TIMM_PREFIXES):
        return f"model {model_cfg.name} concatenates channels, which would interleave the members of a grouped pack"
    if timm_name not in PACKING:
        return f"model {model_cfg.name} is not in the packing whitelist (no equivalence test)"
    return None


def pack_mechanism(model_cfg: Any, requested: str) -> str:
    """How a pack of `model_cfg` runs (`perf.packing`): `auto` is the model's tested default."""
    why_not = unpacked_reason(model_cfg)
    if why_not:
        raise ConfigError(f"{why_not}: train its seeds one per job (pack=1)")
    mechanisms = PACKING[str(model_cfg.timm_name)]
    if requested == "auto":
        return mechanisms[0]
    if requested not in mechanisms:
        tested = ", ".join(f"perf.packing={name}" for name in mechanisms)
        raise ConfigError(f"perf.packing={requested} is not tested for model {model_cfg.name} (tests/test_packing.py; "
                          f"tested: {tested}); use perf.packing=auto or pack=1")
    return requested


def check_packing(cfg: DictConfig, pack: int) -> None:
    """What a pack of `pack` models needs beyond the whitelist: a tested mechanism, an elementwise optimizer,
    channels_last only grouped."""
    from src.models.packing import MECHANISMS

    if cfg.perf.packing not in ("auto", *MECHANISMS):
        raise ConfigError(f"perf.packing={cfg.perf.packing} is none of auto, {', '.join(MECHANISMS)}")
    if pack == 1:
        return
    mechanism = pack_mechanism(cfg.model, str(cfg.perf.packing))
    if cfg.optim._target_ not in ELEMENTWISE_OPTIMIZERS:
        raise ConfigError(f"optim._target_={cfg.optim._target_} with pack={pack}: only an elementwise optimizer keeps "
                          f"packed members independent ({', '.join(ELEMENTWISE_OPTIMIZERS)}); use pack=1")
    if cfg.perf.channels_last is True and mechanism != "grouped":  # auto: only where it applies (job.py)
        raise ConfigError(f"perf.channels_last applies to unpacked or grouped image models, and pack={pack} of model "
                          f"{cfg.model.name} packs by {mechanism}: use pack=1 or drop perf.channels_last")


def check_grouped_forward(cfg: DictConfig, model: Any, input_shape: tuple[int, ...]) -> None:
    """A grouped pack's model must draw no random numbers in its forward (src/models/grouped.py)."""
    from src.models.grouped import draws_random_numbers

    if pack_mechanism(cfg.model, str(cfg.perf.packing)) == "grouped" and draws_random_numbers(model, input_shape):
        raise ConfigError(f"model {cfg.model.name} draws random numbers in its forward (dropout or drop-path), which "
                          "a grouped pack would draw for all members at once; set its drop rates to 0 or use pack=1")


def resolve_pack(requested: int | str | None, model_cfg: Any, n_seeds: int, ddp: bool = False,
                 precision: str = "32-true") -> tuple[int, str]:
    """The pack size for `n_seeds` seeds and why: `auto` takes the model's measured default (1 under DDP and with
    fp16's loss scaler, which one member's overflow would make skip every member's step: check_pack)."""
    if requested in (None, "auto") and ddp:
        return 1, "DDP trains one model per job"
    if requested in (None, "auto") and precision in FP16_MIXED:
        return 1, f"trainer.precision={precision}: one loss scaler per job"
    if requested in (None, "auto"):
        pack, why = int(model_cfg.get("pack_default", 1)), f"model {model_cfg.name} default"
    elif isinstance(requested, int) and not isinstance(requested, bool):
        pack, why = requested, f"pack={requested}"
    else:
        raise ConfigError(f"pack={requested!r} must be a positive integer or auto")
    if pack < 1:
        raise ConfigError(f"pack={requested} must be a positive integer or auto")
    why_not = unpacked_reason(model_cfg)
    if pack > 1 and why_not:
        return 1, f"{why_not}: pack=1"
    if 0 < n_seeds < pack:  # (no seed to train: no job, so nothing to clamp)
        return n_seeds, f"pack={pack} clamped to the {n_seeds} seed(s) to train"
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
    """One run's or one combination's plan: the seeds asked for, those still to train, how they pack."""

    cfg: DictConfig  # composed with the first seed
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

# Launchers whose jobs run on other machines, the plan cannot know their devices: every launcher whose name
# (`hydra/launcher=slurm`, `submitit_slurm`) or `_target_` (meminf's and submitit's SLURM launchers) says slurm.
REMOTE_LAUNCHER_MARK = "slurm"


def runs_remotely(launcher: str) -> bool:
    return REMOTE_LAUNCHER_MARK in launcher.lower()


def config_pack(cfg: DictConfig, n_seeds: int) -> tuple[int, str]:
    """`resolve_pack` of a composed config's pack, model, strategy and precision."""
    return resolve_pack(cfg.get("pack", "auto"), cfg.model, n_seeds,
                        ddp=str(cfg.trainer.get("strategy", "")).startswith("ddp"),
                        precision=str(cfg.trainer.get("precision")))


def launcher_name(args: list[str]) -> str:
    return next((arg.split("=", 1)[1] for arg in args if arg.lstrip("+~").startswith("hydra/launcher=")), "basic")


def check_launch(cfg: DictConfig, pack: int, local: bool) -> None:
    """What a job would refuse and a config check cannot see: devices (for jobs on this machine), what packed
    members cannot share, a model that cannot take the data (built once on the CPU)."""
    from src.data.dataset import load_dataset
    from src.models.build import build_model

    if local:
        check_device(cfg.trainer)
    check_pack(cfg.trainer, pack)
    check_packing(cfg, pack)
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    model = build_model(cfg.model, dataset.input_shape, dataset.num_classes)
    if pack > 1:
        check_grouped_forward(cfg, model, dataset.input_shape)


def plan_sweep(args: list[str]) -> SweepPlan | None:
    """The pre-flight of one run, or (for --dry-run) of a sweep over seeds, from a command line with expanded seed
    ranges; None when it is Hydra's business alone (--cfg, --help, sweeps over other keys). A -m sweep that
    launches is planned by meminf's sweeper instead (`plan_jobs`), once per combination of the other keys."""
    if any(arg.startswith("-") and arg not in MULTIRUN_FLAGS for arg in args):
        return None
    multirun = any(arg in MULTIRUN_FLAGS for arg in args)
    overrides = [arg for arg in args if arg not in MULTIRUN_FLAGS]
    seed_args = [arg for arg in overrides if SEED_ARG.match(arg)]
    seeds = seeds_of(SEED_ARG.match(seed_args[-1])["value"]) if seed_args else None
    fixed = [arg for arg in overrides if arg not in seed_args]
    check_seed_keys(bool(seed_args), [arg.lstrip("+~").split("=", 1)[0] for arg in fixed])
    if (seed_args and seeds is None) or _sweeps_other_keys(fixed) or (multirun and not seeds):
        return None
    cfg = compose_config([*fixed, f"seed={seeds[0]}"] if seeds else fixed)
    return plan_seeds(cfg, seeds if multirun and seeds else [cfg.seed], multirun,
                      local=not runs_remotely(launcher_name(fixed)))


def plan_combinations(args: list[str]) -> list[tuple[str, SweepPlan]] | None:
    """For --dry-run: the plan of each combination of the swept keys other than the seed, as meminf's sweeper
    plans them (`plan_jobs`), each with its overrides of swept keys as a label ("" when only seeds are swept);
    None when the command line is Hydra's business alone (--cfg, --help)."""
    if any(arg.startswith("-") and arg not in MULTIRUN_FLAGS for arg in args):
        return None
    overrides = [arg for arg in args if arg not in MULTIRUN_FLAGS]
    other = [arg for arg in overrides if not SEED_ARG.match(arg) and not _is_hydra_override(arg)]
    if not _sweeps_other_keys(other):
        plan = plan_sweep(args)
        return None if plan is None else [("", plan)]
    if not any(arg in MULTIRUN_FLAGS for arg in args):
        raise ConfigError(f"{' '.join(other)} sweeps over several values: add -m")
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(other)
    swept = {override.key_or_group for override in parsed if override.is_sweep_override()}
    seed_args = [arg for arg in overrides if SEED_ARG.match(arg)]
    seeds = seeds_of(SEED_ARG.match(seed_args[-1])["value"]) if seed_args else None
    if seed_args and not seeds:
        return None
    check_seed_keys(bool(seed_args), [override.key_or_group for override in parsed])
    hydra_args = [arg for arg in overrides if _is_hydra_override(arg)]
    local = not runs_remotely(launcher_name(hydra_args))
    plans = []
    for [combination] in BasicSweeper.split_arguments(parsed, 1):
        cfg = compose_config([*combination, *hydra_args, *([f"seed={seeds[0]}"] if seeds else [])])
        label = " ".join(override for override in combination if override.split("=", 1)[0].lstrip("+~") in swept)
        plans.append((label, plan_seeds(cfg, seeds or [int(cfg.seed)], True, local)))
    return plans


def _sweeps_other_keys(fixed: list[str]) -> bool:
    parsed = OverridesParser.create().parse_overrides([arg for arg in fixed if not _is_hydra_override(arg)])
    return any(override.is_sweep_override() for override in parsed)


def check_seed_keys(sweeps_seed: bool, keys: list[str]) -> None:
    if sweeps_seed and "seeds" in keys:
        raise ConfigError("seed=... and seeds=[...] both given: seeds= is the launcher's own (the seeds of a packed "
                          "job); give the sweep's seeds with seed= only")


def check_sweep_command(args: list[str]) -> DictConfig:
    """A -m command line composed once with its fixed overrides (the values of swept keys left out) before Hydra
    starts: a bad override is one line here, not Hydra's traceback. Returns the composed config."""
    overrides = [arg for arg in args if arg not in MULTIRUN_FLAGS]
    parsed = OverridesParser.create().parse_overrides([arg for arg in overrides if not _is_hydra_override(arg)])
    swept = {override.input_line for override in parsed if override.is_sweep_override()}
    keys = [override.key_or_group for override in parsed]
    check_seed_keys("seed" in keys, keys)
    return compose_config([arg for arg in overrides if arg not in swept])


def plan_seeds(cfg: DictConfig, seeds: list[int], multirun: bool, local: bool) -> SweepPlan:
    """The plan of one config (one combination of a sweep's other keys) over `seeds`: config, data and output
    directory checked, done seeds dropped, the rest packed."""
    estimator = get_estimator(str(cfg.estimator.name))
    if estimator.trains != "subsets":  # its own job per seed, never packed; no records to look up
        for seed in seeds:
            check_seed(seed)
        estimator.check_config(cfg)
        check_launch(cfg, 1, local)
        return SweepPlan(cfg, seeds, seeds, 1, f"estimator={estimator.name}: one run per seed")
    record_scores(cfg.record.scores, cfg.record)  # the job builds them at its end; a bad name is known now
    notes: list[str] = []
    if float(cfg.subset.ratio) == 1.0:
        notes.append("warning: subset.ratio=1.0 trains every model on every example, so no example is ever left out "
                     "and src.estimate finds no memorization; it is for removal experiments (src.removal)")
    pending = pending_seeds(cfg, seeds, notes)
    if not multirun:
        check_launch(cfg, 1, local)
        return SweepPlan(cfg, seeds, pending, 1, "one run", tuple(notes))
    pack, why = config_pack(cfg, len(pending))
    check_launch(cfg, pack, local)
    return SweepPlan(cfg, seeds, pending, pack, why, tuple(notes))


def plan_line(plan: SweepPlan) -> str:
    """The line a sweep prints per combination before it launches."""
    counts = f"sweep {sweep_dir(plan.cfg)}: {len(plan.seeds)} seeds, {len(plan.seeds) - len(plan.pending)} done"
    if not plan.pending:
        return f"{counts}, 0 to train: nothing launches"
    return f"{counts}, {len(plan.pending)} to train in {plan.jobs} job(s) of up to {plan.pack} model(s) ({plan.why})"


@dataclass(frozen=True)
class PlannedJob:
    """One job of a -m sweep: its combination's plan, its seeds and its overrides."""

    plan: SweepPlan
    seeds: list[int]
    overrides: list[str]


def job_override(seeds: list[int], pack: int) -> str:
    """A job's seeds as an override: `seed=<k>` at pack 1, else `seeds=[a,b,...]`."""
    return f"seed={seeds[0]}" if pack == 1 else "seeds=[" + ",".join(map(str, seeds)) + "]"


def plan_jobs(combinations: list[list[str]], seeds: list[int] | None, compose: Callable[[list[str]], DictConfig],
              local: bool) -> list[PlannedJob]:
    """Every job of a -m sweep: per combination of the other keys' values, its config composed and planned once
    (`plan_seeds`; `seeds` None: the config's own seed) and its pending seeds packed. Prints each combination's
    notes and line before anything launches."""
    jobs: list[PlannedJob] = []
    for combination in combinations:
        cfg = compose(combination)
        plan = plan_seeds(cfg, seeds if seeds else [int(cfg.seed)], True, local)
        for note in plan.notes:
            print(note, file=sys.stderr)
        print(plan_line(plan), file=sys.stderr)
        fixed = [override for override in combination if not SEED_ARG.match(override)]  # the job names its seeds
        jobs += [PlannedJob(plan, group, [*fixed, job_override(group, plan.pack)])
                 for group in pack_groups(plan.pending, plan.pack)]
    return jobs
