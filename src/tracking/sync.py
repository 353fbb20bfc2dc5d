"""Every offline wandb run below some directories, uploaded by one `wandb sync` (the command: src/sync.py).

wandb writes each offline run to a folder `offline-run-<time>-<id>` holding its `.wandb` log: a training job's
under the job's directory (`seed=<k>/wandb/`, `pack=<a>-<b>/wandb/`), the aggregator's under its estimates
directory, the comparison's under its `--out`. `wandb sync DIR` looks only at DIR and DIR's children, so the runs
are found here by that shape, at any depth (whatever the job layout), and handed to `wandb sync` by name.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from src.errors import ConfigError, MeminfError

OFFLINE_RUN = "offline-run-*"  # wandb's name for an offline run's folder (online runs: run-*)
RUN_LOG = "*.wandb"


def is_offline_run(folder: Path) -> bool:
    return fnmatch.fnmatch(folder.name, OFFLINE_RUN) and any(folder.glob(RUN_LOG))


def runs_below(root: Path) -> Iterator[Path]:
    """The offline run folders at or below `root`; a run's own folder holds no further runs, and links (wandb's
    `latest-run`) are not followed."""
    for folder, subfolders, _ in os.walk(root):
        if is_offline_run(Path(folder)):
            subfolders.clear()
            yield Path(folder)


def find_offline_runs(paths: Sequence[Path]) -> dict[Path, list[Path]]:
    """Each path's offline runs (sorted); a path that is not a directory, or none with a run, is an error."""
    for path in paths:
        if not path.is_dir():
            raise ConfigError(f"{path} is not a directory; give sweep, estimates or compare directories")
    found = {path: sorted(runs_below(path)) for path in paths}
    if not any(found.values()):
        raise ConfigError(f"no offline wandb runs (folders {OFFLINE_RUN} with a {RUN_LOG} file) under "
                          f"{', '.join(map(str, paths))}; runs are written with logger=wandb or --wandb")
    return found


def unique_runs(found: dict[Path, list[Path]]) -> list[Path]:
    """The runs of all paths, each once (paths may overlap: a sweep and its compare directory)."""
    runs: dict[Path, Path] = {}
    for run in (run for path_runs in found.values() for run in path_runs):
        runs.setdefault(run.resolve(), run)
    return sorted(runs.values())


def wandb_sync(runs: Sequence[Path], dry_run: bool) -> None:
    """One `wandb sync` of `runs` (its own output on the terminal). The dry run lists every run it would upload
    (`--verbose`: wandb shows 20 otherwise). wandb skips runs it has synced already and says so."""
    options = ["--dry-run", "--verbose"] if dry_run else []
    sys.stdout.flush()
    returncode = subprocess.run([sys.executable, "-m", "wandb", "sync", *options, *map(str, runs)]).returncode
    if returncode:
        raise MeminfError(f"wandb sync exited with status {returncode} (its messages are above)")
