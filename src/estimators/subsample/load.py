"""`load_sweep`: every record under a sweep directory, checked and streamed into `SweepStats` (through the stats
cache when there is one, src/estimators/subsample/cache.py); damaged or foreign files, and records in another
seed's directory (`seed=1/record.npz` holding seed 2's), are reported and left out; identical copies of a seed's
record are used once and named (`SweepStats.identical_duplicates`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from src.contracts.records import RecordError, find_records, misplaced_reason
from src.errors import MeminfError
from src.estimators.subsample.cache import (
    CachedSweep,
    CacheUnusable,
    FileStat,
    file_stat,
    open_cache,
    write_stats_cache,
)
from src.estimators.subsample.scan import (
    FileInfo,
    ProblemLog,
    content_digest,
    read_checked,
    read_file_info,
    reference_identity,
    resolve_duplicate_seeds,
)
from src.estimators.subsample.stats import Problem, RecordFile, SweepStats


class _Scan(NamedTuple):
    log: ProblemLog
    keep: list[FileInfo]  # one file per seed of the sweep, by path
    identical: list[FileInfo]  # identical copies of a kept file


def _scan(files: list[Path], strict: bool, cached: CachedSweep | None, excluded_seeds: frozenset[int]) -> _Scan:
    """Identity and seed of every file (from the cache where it has them), the sweep's group, one file per
    seed but the excluded ones. CacheUnusable when a cached run would not be used (a full load would drop it)."""
    log = ProblemLog(strict)
    infos = []
    for path in files:
        info = cached.info(path) if cached is not None else None
        if info is None:
            try:
                info = read_file_info(path)
            except RecordError as err:
                log.add(path, err.reason)
                continue
        misplaced = misplaced_reason(path, info.seed)
        if misplaced is not None:
            log.add(path, misplaced)
            continue
        infos.append(info)
    reference = reference_identity(infos)
    if cached is not None and reference != cached.stats.identity:
        raise CacheUnusable("most record files now belong to another sweep than the cached ones")
    for info in infos:
        if info.identity != reference:
            diffs = "; ".join(info.identity.differences(reference))
            log.add(info.path, f"does not belong to this sweep: {diffs}")
    keep, identical = resolve_duplicate_seeds([info for info in infos if info.identity == reference], log)
    keep = [info for info in keep if info.seed not in excluded_seeds]
    identical = [info for info in identical if info.seed not in excluded_seeds]
    if cached is not None:
        lost = sorted(cached.used_paths - {info.path for info in keep})
        if lost:
            raise CacheUnusable(f"cached record {lost[0]} is no longer used (a new copy of its seed appeared)")
    return _Scan(log, keep, identical)


def _cached_sweep(cache_path: Path | None, use_cache: bool, sweep_dir: Path, file_stats: Mapping[Path, FileStat],
                  excluded_seeds: frozenset[int]) -> tuple[CachedSweep | None, str]:
    """The usable cache (or None) and why not."""
    if cache_path is None:
        return None, "no cache"
    if not use_cache:
        return None, "--no-cache"
    try:
        return open_cache(cache_path, sweep_dir, file_stats, excluded_seeds), ""
    except CacheUnusable as err:
        return None, str(err)


def _record_files(sweep_dir: Path, stats: SweepStats, scan: _Scan, file_stats: Mapping[Path, FileStat],
                  digests: Mapping[Path, str]) -> list[RecordFile]:
    """The files behind the runs (in run order), then the identical copies of used seeds."""
    def entry(info: FileInfo, used: bool) -> RecordFile:
        size, mtime_ns = file_stats[info.path]
        digest = digests.get(info.path, info.digest)
        return RecordFile(info.path.relative_to(sweep_dir).as_posix(), info.seed, size, mtime_ns,
                          str(digest), used)

    kept = {str(info.path): info for info in scan.keep}
    used_seeds = set(stats.seeds)
    return ([entry(kept[path], True) for path in stats.paths]
            + [entry(info, False) for info in scan.identical if info.seed in used_seeds])


def load_sweep(sweep_dir: str | Path, strict: bool = False,
               progress: Callable[[int, int], None] | None = None, cache_path: str | Path | None = None,
               use_cache: bool = True, notify: Callable[[str], None] | None = None,
               check: Callable[[SweepStats], None] | None = None,
               excluded_seeds: frozenset[int] = frozenset()) -> tuple[SweepStats, list[Problem]]:
    """Read the records under `sweep_dir` into `SweepStats`, runs sorted by seed; problems are (file,
    reason), one per excluded file. Records belong together when `SweepIdentity` agrees; the largest group
    is the sweep. With `cache_path`, the stats cached there are reused when all their record files are
    unchanged (only new files are read), and rewritten when the files changed; `use_cache=False` reads
    everything but still writes the cache; `notify` gets one line saying how the cache was used; `check` may
    refuse the statistics (a MeminfError) before anything is written. `excluded_seeds` are left out (not
    problems); the cache is keyed on them."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        state = "is not a directory" if sweep_dir.exists() else "does not exist"
        raise MeminfError(f"{sweep_dir} {state}; pass the sweep directory that holds seed=<k>/record.npz")
    files = find_records(sweep_dir)
    if not files:
        raise MeminfError(f"no record.npz under {sweep_dir}; train the sweep first (python -m src.run -m "
                          "seed=0..N) or pass the directory that holds seed=<k>/record.npz")
    # Stat before reading: a file replaced while it is read then looks changed to the next run.
    file_stats = {path: file_stat(path) for path in files}
    cache_path = Path(cache_path) if cache_path is not None else None
    cached, why_not = _cached_sweep(cache_path, use_cache, sweep_dir, file_stats, excluded_seeds)
    try:
        scan = _scan(files, strict, cached, excluded_seeds)
    except CacheUnusable as err:
        cached, why_not = None, str(err)
        scan = _scan(files, strict, None, excluded_seeds)
    new = [info for info in scan.keep if cached is None or info.path not in cached.used_paths]
    if notify is not None and cache_path is not None:
        notify(f"stats cache: {cached.stats.n_runs} runs from {cache_path}, reading {len(new)} new record files"
               if cached is not None else f"stats cache: reading all {len(files)} record files ({why_not})")
    stats, digests = _stream_records(new, scan.log, progress, cached.stats if cached is not None else None)
    if stats is None and not scan.log.problems:
        raise MeminfError(f"no run left under {sweep_dir}: all {len(excluded_seeds)} seeds were left out")
    if stats is None:
        first = scan.log.sorted()[0]
        raise MeminfError(f"no usable record under {sweep_dir}: all {len(files)} were skipped (first: "
                          f"{first.file}: {first.reason}); fix or rerun those seeds")
    stats.identical_duplicates = [str(info.path) for info in scan.identical]
    stats.excluded_seeds = sorted(excluded_seeds)
    stats.sort_by_seed()
    stats.files = _record_files(sweep_dir, stats, scan, file_stats, digests)
    if check is not None:
        check(stats)
    if cache_path is not None and (cached is None or set(stats.files) != set(cached.files)):
        write_stats_cache(cache_path, stats)
    return stats, scan.log.sorted()


def _stream_records(infos: list[FileInfo], log: ProblemLog, progress: Callable[[int, int], None] | None,
                    stats: SweepStats | None = None) -> tuple[SweepStats | None, dict[Path, str]]:
    """Fold the records into `stats` (new stats when None); returns them and the records' digests."""
    if stats is not None:
        for buffer in (stats.packed_masks, stats.test_correct):
            buffer.reserve(stats.n_runs + len(infos))
    digests = {}
    for done, info in enumerate(infos, start=1):
        try:
            record = read_checked(info.path)
            if stats is None:
                stats = SweepStats.from_record(record, info.path, capacity=len(infos))
            else:
                stats.add_record(record, info.path)
            digests[info.path] = info.digest if info.digest is not None else content_digest(record)
        except RecordError as err:
            log.add(info.path, err.reason)
        if progress is not None:
            progress(done, len(infos))
    return stats, digests


def load_notes(stats: SweepStats, problems: list[Problem]) -> list[str]:
    """One line per file a load left out (`skipped <file>: <reason>`) or used once for several copies
    (`duplicate <file>: ...`), for the command line."""
    used = {file.seed: file.rel_path for file in stats.files if file.used}
    return ([f"skipped {problem.file}: {problem.reason}" for problem in problems]
            + [f"duplicate {file.rel_path}: an identical copy of seed {file.seed}'s record {used.get(file.seed)}; "
               "used once" for file in stats.files if not file.used])
