"""Progress: whether bars show (`progress=auto|true|false`; auto: a single run attached to a terminal), the tqdm
bar of the aggregator's record loading and influence blocks, and which job lines reach the console in a sweep
(the sweep's own progress line: src/sweep/status.py)."""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

from src.errors import MeminfError


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def per_seed_lines_to_job_log(quiet: bool) -> None:
    """In a -m sweep (`quiet`), a job's informational lines (one per seed, one per job) go to its run.log only:
    the console's handlers (those that are not files) pass warnings and errors. Hydra configures a job's logging
    afresh as each job starts, so this holds for the job that calls it; `hydra.verbose=...` shows them again."""
    if not quiet:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, logging.WARNING))


def progress_enabled(setting: bool | str, stream: IO[str], multirun: bool) -> bool:
    """`progress`: true/false as given; `auto` shows bars for a single run whose `stream` is a terminal."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise MeminfError(f"progress={setting!r} must be auto, true or false")
    return not multirun and stream.isatty()


class ProgressBar:
    """A `(done, total)` callback drawing a tqdm bar on stderr, or nothing when disabled: the aggregator's
    record loading (`load_sweep(progress=...)`) and influence blocks (`estimate(progress=...)`)."""

    def __init__(self, enabled: bool, desc: str, unit: str) -> None:
        self.enabled, self.desc, self.unit = enabled, desc, unit
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr)
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()
