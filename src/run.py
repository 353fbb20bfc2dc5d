"""The Hydra entry point: command line → subset-training jobs, one record per seed.

    python -m src.run                                   # one job, seed 0
    python -m src.run -m seed=0..1999                   # 2,000 jobs (a..b is inclusive)
    python -m src.run -m experiment=fz_mnist seed=0..63 hydra/launcher=joblib

Before Hydra sees the command line, `a..b` seed ranges become `range(a, b+1)` (plain Hydra reads
`0..1999` as one string). For a sweep over seeds only, a pre-flight then composes the config once,
checks it and the data, and drops the seeds whose valid record already exists, so a relaunched sweep
trains only what is missing and a bad sweep fails once, not once per job. Each job checks its own
record again, so the pre-flight is an optimisation, never the only guard. `--dry-run` stops after the
pre-flight and prints the plan (seeds done/missing, jobs, storage, compute: src/dryrun.py).
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError, MeminfError
from src.experiment import job_subdir

# The job directory resolver of conf/hydra/default.yaml; every process that runs a job imports this module.
OmegaConf.register_new_resolver("meminf_job_dir", job_subdir, replace=True)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
MULTIRUN_FLAGS = ("-m", "--multirun")
DRY_RUN_FLAG = "--dry-run"
SEED_RANGE = re.compile(r"^(?P<key>[+~]{0,2}seed)=(?P<first>-?\d+)\.\.(?P<last>-?\d+)$")
log = logging.getLogger("src.run")


def expand_seed_ranges(args: list[str]) -> list[str]:
    """`seed=a..b` (inclusive) → `seed=range(a,b+1)`; needs -m, refuses empty or reversed ranges."""
    multirun = any(arg in MULTIRUN_FLAGS for arg in args)
    expanded = []
    for arg in args:
        match = SEED_RANGE.match(arg)
        if match is None:
            expanded.append(arg)
            continue
        first, last = int(match["first"]), int(match["last"])
        if not multirun:
            raise ConfigError(f"{arg} is a sweep: add -m (python -m src.run -m {arg})")
        if last < first:
            raise ConfigError(f"{arg} is empty: the range is inclusive and must go up, e.g. seed={last}..{first}")
        expanded.append(f"{match['key']}=range({first},{last + 1})")
    return expanded


def _is_hydra_override(arg: str) -> bool:
    return arg.lstrip("+~").startswith(("hydra.", "hydra/"))


def compose_config(overrides: list[str]) -> DictConfig:
    """conf/ composed with command-line overrides (no Hydra job); a bad override is a one-line ConfigError."""
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=overrides)
    except HydraException as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ConfigError("; ".join([*lines[:1], ", ".join(lines[2:])] if len(lines) > 2 else lines)) from err


def pending_seeds(cfg: DictConfig, seeds: list[int], create_dir: bool = True) -> list[int]:
    """Validate config, output directory and data once; then the seeds that still need a record.

    Every record already in the sweep directory must be of this experiment (else the sweep would mix
    two experiments): one of another is an error unless overwrite=true. Without `create_dir` (a dry run)
    the sweep directory is not created: its nearest existing ancestor must be writable.
    """
    from src.data import load_dataset
    from src.experiment import check_writable, experiment_hash, seed_record_path, sweep_dir, validate_config
    from src.records import RecordError, find_records, read_meta
    from src.subsets import check_seed

    for seed in seeds:
        check_seed(seed)
    validate_config(cfg)
    if create_dir:
        check_writable(sweep_dir(cfg))
    else:
        check_creatable(sweep_dir(cfg))
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    exp_hash = experiment_hash(cfg, dataset.fingerprint)
    done = set()
    for path in find_records(sweep_dir(cfg)):
        try:
            meta = read_meta(path)
        except RecordError:
            continue  # unreadable: its seed is retrained and the file replaced
        if meta["experiment_hash"] != exp_hash and not cfg.overwrite:
            raise ConfigError(f"{path} holds experiment {meta['experiment_hash']}, not {exp_hash}: "
                              "choose another name=..., or overwrite=true to replace it")
        if meta["experiment_hash"] == exp_hash and path == seed_record_path(cfg, meta["seed"]):
            done.add(int(meta["seed"]))
    return [seed for seed in seeds if cfg.overwrite or seed not in done]


def check_creatable(directory: Path) -> None:
    """Without writing anything: the directory, or its nearest existing ancestor, is a writable directory."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {directory} ({existing} is not a writable directory); "
                          "set paths.output_dir to a writable directory")


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
    if cfg.estimator.name == "turnover":  # one unpacked run per seed; it writes estimates, no records to look up
        from src.turnover import check_turnover_config

        check_turnover_config(cfg)
        runs = seeds or [cfg.seed]
        return SweepPlan(cfg, bool(seeds), runs, runs, 1, "estimator=turnover: one run per seed")
    if not seeds:
        return SweepPlan(cfg, False, [cfg.seed], pending_seeds(cfg, [cfg.seed], create_dir), 1, "one run")
    from src.experiment import resolve_pack

    pending = pending_seeds(cfg, seeds, create_dir)
    return SweepPlan(cfg, True, seeds, pending, *resolve_pack(cfg.pack, cfg.model, len(pending)))


def seed_override(seeds: list[int]) -> str:
    contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return f"seed=range({seeds[0]},{seeds[-1] + 1})" if contiguous else "seed=" + ",".join(map(str, seeds))


def plan_command_line(args: list[str]) -> list[str] | None:
    """The arguments Hydra gets, or None when every requested seed is already done."""
    args = expand_seed_ranges(args)
    plan = plan_sweep(args)
    if plan is None or not plan.sweep:
        return args
    from src.experiment import sweep_dir

    print(f"sweep {sweep_dir(plan.cfg)}: {len(plan.seeds)} seeds, {len(plan.seeds) - len(plan.pending)} done, "
          f"{len(plan.pending)} to train in {plan.jobs} job(s) of up to {plan.pack} model(s) ({plan.why})",
          file=sys.stderr)
    if not plan.pending:
        return None
    pending = plan.pending
    grouped = seed_override(pending) if plan.pack == 1 else packed_override(pending, plan.pack)
    return [grouped if arg.lstrip("+~").startswith("seed=") else arg for arg in args]


def packed_override(seeds: list[int], pack: int) -> str:
    """`seeds=[a,b,..],[..]`: a Hydra sweep over groups of up to `pack` seeds, one packed job each."""
    groups = [seeds[start:start + pack] for start in range(0, len(seeds), pack)]
    return "seeds=" + ",".join("[" + ",".join(map(str, group)) + "]" for group in groups)


def limit_threads_under_joblib() -> None:
    """Parallel jobs on one machine: give each job cores // jobs threads, so jobs × threads <= cores."""
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return
    import torch

    cores = os.cpu_count() or 1
    n_jobs = int(launcher.get("n_jobs") or -1)
    jobs = min(cores, n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs))
    torch.set_num_threads(max(1, cores // jobs))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_entry(cfg: DictConfig) -> None:
    from src.training import run_job  # torch and Lightning load in the job, not before Hydra starts

    limit_threads_under_joblib()
    try:
        if cfg.estimator.name == "turnover":
            from src.turnover import run_turnover_job

            run_turnover_job(cfg)
        else:
            run_job(cfg)
    except MeminfError as err:
        log.error("seed=%s: %s", cfg.get("seed"), err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Plan the command line and hand it to Hydra; with --dry-run, print the plan and launch nothing."""
    try:
        if DRY_RUN_FLAG in sys.argv[1:]:
            from src.dryrun import print_dry_run

            print_dry_run([arg for arg in sys.argv[1:] if arg != DRY_RUN_FLAG])
            return
        args = plan_command_line(sys.argv[1:])
    except MeminfError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if args is None:
        return
    sys.argv = [sys.argv[0], *args]
    hydra_entry()


if __name__ == "__main__":
    main()
