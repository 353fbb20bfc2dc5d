"""Scanning a sweep directory: each record file's seed and identity (metadata and label arrays only), the
sweep's group (the largest), one file per seed, and every excluded file with its reason."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from src.contracts.records import ARCHIVE_ERRORS, Record, RecordError, read_meta, read_record
from src.estimators.subsample.stats import IDENTITY_ARRAYS, Problem, SweepIdentity, content_digest
from src.util.cli import one_line


class ProblemLog:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.problems: dict[Path, str] = {}

    def add(self, path: Path, reason: str) -> None:
        reason = one_line(reason)
        if self.strict:
            raise RecordError(path, f"{reason} (strict mode stops at the first problem)")
        self.problems.setdefault(path, reason)

    def sorted(self) -> list[Problem]:
        return [Problem(str(path), reason) for path, reason in sorted(self.problems.items())]


class FileInfo(NamedTuple):
    path: Path
    seed: int
    identity: SweepIdentity
    digest: str | None = None  # content digest, where already known (stats cache, duplicate check)


def read_file_info(path: Path) -> FileInfo:
    """Seed and identity of a record file, reading only its metadata and label arrays."""
    meta = read_meta(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in IDENTITY_ARRAYS}
        not_integer = [key for key, values in arrays.items() if values.dtype.kind not in "iu"]
        if not_integer:
            raise RecordError(path, f"{', '.join(not_integer)} must hold integers")
        return FileInfo(path, int(meta["seed"]), SweepIdentity.of(meta, arrays))
    except KeyError as err:
        raise RecordError(path, f"missing array {err}") from err
    except ARCHIVE_ERRORS as err:
        raise RecordError(path, f"unreadable label arrays or seed ({type(err).__name__}: {err})") from err


def reference_identity(infos: list[FileInfo]) -> SweepIdentity | None:
    """The identity of the largest group; ties go to the group of the first file (infos are sorted)."""
    counts = Counter(info.identity for info in infos)
    if not counts:
        return None
    largest = max(counts.values())
    return next(info.identity for info in infos if counts[info.identity] == largest)


def resolve_duplicate_seeds(infos: list[FileInfo],
                             log: ProblemLog) -> tuple[list[FileInfo], list[FileInfo]]:
    """Keep one file per seed: identical copies collapse to the first (the others come back second);
    differing copies all go."""
    by_seed: dict[int, list[FileInfo]] = {}
    for info in infos:
        by_seed.setdefault(info.seed, []).append(info)
    keep, identical = [], []
    for seed, copies in by_seed.items():
        # the copy nearest the sweep directory (its own seed=<k>/, not a backup's) is the one used
        copies.sort(key=lambda info: (len(info.path.parts), info.path))
        if len(copies) > 1:
            copies = _identical_copies(seed, copies, log)
            identical += copies[1:]
        keep += copies[:1]
    return sorted(keep, key=lambda info: info.path), identical


def read_checked(path: Path) -> Record:
    """read_record, with bad metadata values (int("four")) also a RecordError: records are untrusted input."""
    try:
        return read_record(path)
    except (ValueError, TypeError) as err:
        raise RecordError(path, f"invalid metadata value ({err})") from err


def _identical_copies(seed: int, copies: list[FileInfo], log: ProblemLog) -> list[FileInfo]:
    readable = []
    for info in copies:
        try:
            digest = info.digest if info.digest is not None else content_digest(read_checked(info.path))
        except RecordError as err:
            log.add(info.path, err.reason)
            continue
        readable.append(info._replace(digest=digest))
    if len({info.digest for info in readable}) <= 1:
        return readable
    for info in readable:
        others = ", ".join(str(other.path) for other in readable if other is not info)
        log.add(info.path, f"seed {seed} is also in {others} with different content; "
                           "delete the wrong copies and rerun that seed")
    return []
