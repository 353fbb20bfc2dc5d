"""Progress: whether bars show (`progress=auto|true|false`; auto: a single run attached to a terminal), and the
tqdm bar of the aggregator's record loading and influence blocks."""

from __future__ import annotations

import sys
from typing import IO, Any

from src.errors import MeminfError


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


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
