"""The stats cache (`stats.npz` in the estimates directory): the sufficient statistics of a sweep and, for
every record file behind them, its path relative to the sweep dir, seed, size, mtime_ns and content digest.

The next load reads only record files that are new or whose (size, mtime_ns) changed, plus the metadata and
label arrays of one cached record to check that the cache belongs to this sweep. A cached record whose file
is gone, changed, or no longer used (a differing copy of its seed appeared; another sweep became the largest
group) cannot be subtracted: everything is read again, as it is for a damaged, foreign or other-version cache
and with --no-cache (which still writes a fresh cache). A cache is keyed on the seeds its load left out
(`--exclude-unhealthy`): a load that leaves out other seeds never updates it (its runs cannot be subtracted or
added back), and reads everything. Damaged or foreign records are never cached, so they
are read and reported on every run. The influence products are not cached: they are recomputed from the
cached masks and T (one matrix product).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.contracts.io import write_atomic
from src.contracts.records import RecordError
from src.estimators.subsample.scan import FileInfo, read_file_info
from src.estimators.subsample.stats import RELIABILITY_GROUPS, RecordFile, SweepIdentity, SweepStats, _RowBuffer
from src.util.cli import one_line

CACHE_NAME = "stats.npz"
EXCLUDING_CACHE_NAME = "stats_excluding_unhealthy.npz"  # the cache of the load with --exclude-unhealthy
# 3: identity 2 (the experiment of old records recomputed from their config); 4: group_sums; 5: excluded_seeds
CACHE_VERSION = 5


class CacheUnusable(Exception):
    """The stats cache cannot be used; the message says why. The loader then reads every record."""


SUM_FIELDS = ("n_in", "hard_in", "hard_all", "soft_in", "soft_all", "soft_in_sq", "soft_all_sq")
FileStat = tuple[int, int]  # (size, mtime_ns); (-1, -1) for a file that vanished


def file_stat(path: Path) -> FileStat:
    try:
        status = path.stat()
    except OSError:
        return -1, -1  # reading it reports the problem
    return status.st_size, status.st_mtime_ns


def stats_cache_arrays(stats: SweepStats) -> dict[str, np.ndarray]:
    """The members of stats.npz (plain arrays; `cache` is a 0-d JSON string):

    | key | dtype, shape | meaning |
    |---|---|---|
    | `cache` | 0-d unicode | JSON {"cache_version", "meta" (of the lowest seed), "extras" (names), |
    | | | "epoch_list", "proxies" (names), "excluded_seeds" (seeds the load left out)} |
    | `train_label`, `test_label`, `flipped_idx`, `flipped_orig_label` | int64 | as in SweepStats |
    | `n_in`, `hard_in`, `hard_all`, `soft_in`, `soft_all`, `soft_in_sq`, `soft_all_sq` | float64 (n,) | sums |
    | `packed_masks` | uint8 (K, ceil(n/8)) | np.packbits of the subset masks, runs by seed |
    | `test_correct_bits` | uint8 (K, ceil(n_test/8)) | np.packbits of T along each run |
    | `seeds`, `test_acc`, `train_in_acc` | int64 / float64 (K,) | per run |
    | `file_path`, `file_digest` | unicode (F,) | record path relative to the sweep dir; content_digest |
    | `file_seed`, `file_size`, `file_mtime_ns` | int64 (F,) | seed and os.stat of the file when read |
    | `file_used` | bool (F,) | a run (the first K rows, by seed) or an identical copy of one |
    | `extra_<name>` | numeric | the per-example columns of the lowest seed's record |
    | `epoch_hard_in`, `epoch_hard_all` | float64 (E, n) | per-epoch sums |
    | `proxy_sums_<name>` | float64 (2, n) | a proxy's sums over runs with the example in (row 0), all (row 1) |
    | `group_sums` | uint32 (RELIABILITY_GROUPS, 3, n) | n_in, hard_in, hard_all of the runs of each seed group |
    """
    files = stats.files
    header = {"cache_version": CACHE_VERSION, "meta": stats.meta, "extras": sorted(stats.extras),
              "epoch_list": stats.epoch_list.tolist(), "proxies": sorted(stats.proxy_sums),
              "excluded_seeds": sorted(stats.excluded_seeds)}
    arrays = {
        "cache": np.array(json.dumps(header, sort_keys=True)),
        "train_label": stats.train_label, "test_label": stats.test_label,
        "flipped_idx": stats.flipped_idx, "flipped_orig_label": stats.flipped_orig_label,
        **{name: getattr(stats, name) for name in SUM_FIELDS},
        "epoch_hard_in": stats.epoch_hard_in, "epoch_hard_all": stats.epoch_hard_all,
        **{f"proxy_sums_{name}": sums for name, sums in stats.proxy_sums.items()},
        "group_sums": stats.group_sums,
        "packed_masks": stats.packed_masks.array,
        "test_correct_bits": np.packbits(stats.test_correct.array.astype(bool), axis=1),
        "seeds": np.asarray(stats.seeds, dtype=np.int64),
        "test_acc": np.asarray(stats.test_acc, dtype=np.float64),
        "train_in_acc": np.asarray(stats.train_in_acc, dtype=np.float64),
        "file_path": np.array([file.rel_path for file in files], dtype=str),
        "file_digest": np.array([file.digest for file in files], dtype=str),
        "file_used": np.array([file.used for file in files], dtype=bool),
    }
    for name in ("seed", "size", "mtime_ns"):
        arrays[f"file_{name}"] = np.array([getattr(file, name) for file in files], dtype=np.int64)
    arrays.update({f"extra_{name}": np.asarray(values) for name, values in stats.extras.items()})
    return arrays


def write_stats_cache(path: str | Path, stats: SweepStats) -> Path:
    """Write stats.npz atomically (temp file, fsync, rename), so a killed run leaves the old cache."""
    arrays = stats_cache_arrays(stats)
    return write_atomic(path, lambda handle: np.savez(handle, allow_pickle=False, **arrays))


def _cached_array(arrays: Mapping[str, np.ndarray], key: str, dtype: str,
                  shape: tuple[int, ...] | None = None) -> np.ndarray:
    """arrays[key], checked: the dtype written ("U": any unicode), the shape (None: any 1-d)."""
    values = arrays[key]
    dtype_ok = values.dtype.kind == "U" if dtype == "U" else values.dtype == np.dtype(dtype)
    if not dtype_ok or (values.shape != shape if shape is not None else values.ndim != 1):
        raise ValueError(f"'{key}' has dtype {values.dtype} shape {values.shape}")
    return values


def _cached_files(arrays: Mapping[str, np.ndarray]) -> list[RecordFile]:
    paths = _cached_array(arrays, "file_path", "U")
    columns = [paths, *(_cached_array(arrays, f"file_{name}", "int64", paths.shape)
                        for name in ("seed", "size", "mtime_ns")),
               _cached_array(arrays, "file_digest", "U", paths.shape),
               _cached_array(arrays, "file_used", "bool", paths.shape)]
    return [RecordFile(str(path), int(seed), int(size), int(mtime), str(digest), bool(used))
            for path, seed, size, mtime, digest, used in zip(*(c.tolist() for c in columns), strict=True)]


def _cached_extra(arrays: Mapping[str, np.ndarray], name: str, n: int, n_test: int) -> np.ndarray:
    values = arrays[f"extra_{name}"]
    if values.dtype.kind not in "biuf" or values.shape != ((n if name.startswith("train_") else n_test),):
        raise ValueError(f"extra '{name}' has dtype {values.dtype} shape {values.shape}")
    return values


def _stats_from_cache(arrays: Mapping[str, np.ndarray], sweep_dir: Path,
                      cache_path: Path) -> tuple[SweepStats, list[RecordFile]]:
    header = json.loads(str(_cached_array(arrays, "cache", "U", ())[()]))
    version = header.get("cache_version") if isinstance(header, dict) else None
    if version != CACHE_VERSION:
        raise CacheUnusable(f"{cache_path} has cache format {version!r}, this meminf writes {CACHE_VERSION}")
    meta = dict(header["meta"])
    n, n_test = int(meta["n_train"]), int(meta["n_test"])
    seeds = _cached_array(arrays, "seeds", "int64")
    k = len(seeds)
    files = _cached_files(arrays)
    used = [file for file in files if file.used]
    if k == 0 or np.unique(seeds).size != k or [file.seed for file in used] != seeds.tolist():
        raise ValueError("its runs and record files disagree")
    flipped_idx = _cached_array(arrays, "flipped_idx", "int64")
    labels = {"train_label": _cached_array(arrays, "train_label", "int64", (n,)),
              "test_label": _cached_array(arrays, "test_label", "int64", (n_test,)),
              "flipped_idx": flipped_idx,
              "flipped_orig_label": _cached_array(arrays, "flipped_orig_label", "int64", flipped_idx.shape)}
    bits = _cached_array(arrays, "test_correct_bits", "uint8", (k, (n_test + 7) // 8))
    epoch_list = [int(epoch) for epoch in header["epoch_list"]]
    stats = SweepStats(
        meta=meta, identity=SweepIdentity.of(meta, labels), **labels,
        extras={name: _cached_extra(arrays, name, n, n_test) for name in header["extras"]},
        **{name: _cached_array(arrays, name, "float64", (n,)) for name in SUM_FIELDS},
        packed_masks=_RowBuffer.of(_cached_array(arrays, "packed_masks", "uint8", (k, (n + 7) // 8))),
        test_correct=_RowBuffer.of(np.unpackbits(bits, axis=1, count=n_test)),
        epoch_list=np.asarray(epoch_list, dtype=np.int64),
        **{name: _cached_array(arrays, name, "float64", (len(epoch_list), n))
           for name in ("epoch_hard_in", "epoch_hard_all")},
        proxy_sums={name: _cached_array(arrays, f"proxy_sums_{name}", "float64", (2, n))
                    for name in sorted(str(name) for name in header["proxies"])},
        group_sums=_cached_array(arrays, "group_sums", "uint32", (RELIABILITY_GROUPS, 3, n)),
        seeds=seeds.tolist(), test_acc=_cached_array(arrays, "test_acc", "float64", (k,)).tolist(),
        train_in_acc=_cached_array(arrays, "train_in_acc", "float64", (k,)).tolist(),
        paths=[str(sweep_dir / file.rel_path) for file in used],
        excluded_seeds=sorted(int(seed) for seed in header["excluded_seeds"]),
    )
    return stats, files


def read_stats_cache(cache_path: str | Path, sweep_dir: str | Path) -> tuple[SweepStats, list[RecordFile]]:
    """The stats and record files stored in a cache; CacheUnusable when it is unreadable, damaged or of
    another format version (nothing is checked against the record files here)."""
    cache_path = Path(cache_path)
    # Any exception: the cache only saves reading the records, and a damaged zip raises more than OSError
    # and BadZipFile (NotImplementedError, RuntimeError, MemoryError; a .npy gives TypeError in `with`, as
    # tests/test_damaged_records.py found for records).
    try:
        with np.load(cache_path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as err:
        raise CacheUnusable(f"{cache_path} is unreadable ({type(err).__name__}: {one_line(str(err))})") from err
    try:
        return _stats_from_cache(arrays, Path(sweep_dir), cache_path)
    except CacheUnusable:
        raise
    except Exception as err:
        raise CacheUnusable(f"{cache_path} is damaged ({type(err).__name__}: {one_line(str(err))})") from err


@dataclass
class CachedSweep:
    """A stats cache whose record files are all present and unchanged."""

    stats: SweepStats
    files: list[RecordFile]
    entries: dict[Path, RecordFile]  # by path under the sweep dir
    used_paths: set[Path] = field(init=False)

    def __post_init__(self) -> None:
        self.used_paths = {path for path, entry in self.entries.items() if entry.used}

    def info(self, path: Path) -> FileInfo | None:
        entry = self.entries.get(path)
        return None if entry is None else FileInfo(path, entry.seed, self.stats.identity, entry.digest)


def _check_cache_identity(stats: SweepStats, entries: Mapping[Path, RecordFile],
                          file_stats: Mapping[Path, FileStat]) -> None:
    """The cache belongs to this sweep: a cached record still on disk has the cached identity."""
    first = min((path for path in entries if path in file_stats), default=None)
    if first is None:
        raise CacheUnusable(f"none of its {len(entries)} record files is in this sweep dir (another sweep's)")
    try:
        identity = read_file_info(first).identity
    except RecordError as err:
        raise CacheUnusable(f"cached record {first} is unreadable now ({err.reason})") from err
    diffs = stats.identity.differences(identity)
    if diffs:
        raise CacheUnusable(f"it was written for another sweep: {'; '.join(diffs)}")


def open_cache(cache_path: Path, sweep_dir: Path, file_stats: Mapping[Path, FileStat],
               excluded_seeds: frozenset[int] = frozenset()) -> CachedSweep:
    """The cache, when it left out the same seeds and every record file in it is present and unchanged;
    CacheUnusable otherwise."""
    if not cache_path.exists():
        raise CacheUnusable(f"no {cache_path} yet")
    stats, files = read_stats_cache(cache_path, sweep_dir)
    if stats.excluded_seeds != sorted(excluded_seeds):
        raise CacheUnusable(f"it left out seeds {stats.excluded_seeds or 'none'}, this load leaves out "
                            f"{sorted(excluded_seeds) or 'none'}")
    entries = {sweep_dir / file.rel_path: file for file in files}
    _check_cache_identity(stats, entries, file_stats)
    changed = [path for path, file in entries.items() if file_stats.get(path) != (file.size, file.mtime_ns)]
    if changed:
        state = "changed" if file_stats.get(changed[0], (-1, -1)) != (-1, -1) else "is gone"
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise CacheUnusable(f"cached record {changed[0]} {state}{more}; the cache cannot subtract it")
    return CachedSweep(stats, files, entries)
