"""Memorization and influence estimates from a sweep of subset-training records (the reduce step).

    python -m src.estimate <sweep dir> [--out DIR] [--strict] [--no-cache] [--theta-mem 0.25]
        [--theta-infl 0.15] [--top-k 5] [--null-perms 2] [--block-mb 256] [--dense-cap-mb 512]
        [--gallery 64] [--seed 0]

Notebook API: `stats, problems = load_sweep(dir)`, `est = estimate(stats)`,
`write_outputs(out_dir, stats, est, summarize(stats, est, problems))`; `pair_influence` gives the
influence of chosen (train, test) pairs with their standard errors.

Estimators (K runs; M the K x n subset masks, C/P the train correctness/probability of the trained
label, T the K x n_test test correctness; n_in(i) runs with i in the subset, n_out(i) = K - n_in(i)):
- mem(i) = mean{C[k,i] : i in} - mean{C[k,i] : i out}; mem_soft the same with P (the probability of the
  label the model was trained on: a lower-variance, different quantity).
- infl(i, j) = S(i,j)/n_in(i) - (Tsum(j) - S(i,j))/n_out(i), S = M^T T, Tsum = column sums of T.
- mem_se and infl_se: Agresti-Caffo, one pseudo success and one pseudo failure added to each side,
  p~ = (s+1)/(n+2), se = sqrt(p~in(1-p~in)/(n_in+2) + p~out(1-p~out)/(n_out+2)); never zero, so an
  all-correct side (flipped labels, small K) still gets an uncertainty. The estimates themselves are the
  plain differences of means.
- mem_soft_se: plug-in sqrt(var_in/n_in + var_out/n_out) with sample variances (ddof 1) from the
  per-example sums and sums of squares; NaN when a side has fewer than 2 runs.
- An example with n_in = 0 or n_out = 0 has no estimate: NaN mem, NaN infl row.
- mem_epoch(e, i): mem from the correctness at the end of epoch epoch_list[e] (records with `record.epochs`),
  same NaN rule. proxy_<name>(i): the mean over runs with i in the subset of a record proxy (learn_speed,
  loss, margin; src/records.py), NaN where n_in = 0; the summary gives each one's Spearman with mem.
- Records of one sweep must agree on their epoch list and proxy names (LAYOUT_FIELDS): a record with other
  ones is reported and excluded like a record of another sweep (the largest group is the sweep).
- High-influence pair: infl >= theta_infl and mem(train) >= theta_mem and trained train label == test
  label. NaN never passes a threshold.
- Top-k influencers of a test example: the k largest infl, ties to the lower train index (exact, so the
  result does not depend on --block-mb).
- Chance pairs: the rows of T are shuffled against M (`--null-perms` times, rng from `--seed`) and the
  pairs recounted with the real mem filter and classes; shuffling the mask rows instead is the same
  null (M^T T[s] = M[s^-1]^T T). Only rows with mem >= theta_mem can pair, so only those are recomputed.

Order of runs: nothing depends on the order in which records are read. The per-example sums are exact
(0/1 counts, and P and P^2 rounded to multiples of 2^-30, at most 4.7e-10 off, so every partial float64
sum up to 2^23 runs is exact and addition order cannot change a bit; the proxies likewise, see PROXY_GRID),
and `load_sweep` sorts the runs by seed, which fixes the rows the permutation null shuffles and the order of
the per-run outputs.

Outputs (in --out, default <sweep dir>/estimates/), each written atomically after everything is computed:
estimates.npz (loads with allow_pickle=False: mem, mem_se, mem_soft, mem_soft_se, n_in, n_out, acc_in,
acc_out, train_label, orig_label, flipped, test_label, topk_idx/topk_infl (n_test, top_k; -1/NaN padding),
pair_train_idx, pair_test_idx, pair_infl, pair_infl_se, seeds, test_acc, train_in_acc (per run, by seed),
extra_<record extra>, mem_epoch (E, n) and epoch_list (E,) (E = 0 without per-epoch records), proxy_<name>,
and `summary`, a 0-d JSON string), memorization.csv, pairs.csv (sorted by infl
descending), summary.json, gallery.png when the training images can be loaded, influence.npy (float32
n_train x n_test, NaN rows for examples without an estimate) when it is at most --dense-cap-mb. In the
CSV files a missing value (NaN) is an empty field and booleans are 0/1.

Stats cache (`stats.npz` in --out): after a successful load the CLI stores the sufficient statistics
(`SweepStats`) and, for every record file behind them, its path relative to the sweep dir, seed, size,
mtime_ns and content digest; see `write_stats_cache` for the format. The next run reads only record files
that are new or whose (size, mtime_ns) changed, plus the metadata and label arrays of one cached record
to check that the cache belongs to this sweep. A cached record whose file is gone, changed, or no longer
used (a differing copy of its seed appeared; another sweep became the largest group) cannot be
subtracted: everything is read again, as it is for a damaged, foreign or other-version cache and with
--no-cache (which still writes a fresh cache). One line says which. Damaged or foreign records are never
cached, so they are read and reported on every run. The influence products are not cached: they are
recomputed from the cached masks and T (one matrix product).

Memory: loading keeps sufficient statistics only (`SweepStats`: float64 per-example sums, the packed
masks K x ceil(n/8) and T as K x n_test uint8). Influence goes over blocks of training examples whose
working set is at most about --block-mb, plus T as float32 (K x n_test x 4 bytes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from src.errors import ConfigError, MeminfError, RecordError, cli_exit_code
from src.records import (
    ARCHIVE_ERRORS,
    PROXY_PREFIX,
    Record,
    content_hash,
    find_records,
    read_meta,
    read_record,
    record_arrays,
    tmp_path,
    write_atomic,
)
from src.subsets import subset_mask
from src.tracking import ProgressBar, add_wandb_arguments, log_estimates

IDENTITY_FIELDS = ("data_fingerprint", "n_train", "n_test", "num_classes", "ratio", "salt", "experiment_hash")
IDENTITY_ARRAYS = ("train_label", "test_label", "flipped_idx", "flipped_orig_label")
# What else records of one sweep share: the epochs with per-epoch results (`record.epochs`) and the proxy names.
LAYOUT_FIELDS = ("epoch_list", "proxies")
TRAIN_IN_ACC_WARNING = 0.99
MEM_FRACTION_THRESHOLDS = (0.25, 0.3)
SE_TARGETS = (0.05, 0.03, 0.02)
# Bytes per training example in an influence block (peak of tracemalloc over block sizes, K and n_test):
# unpacking its mask column (uint8 gather and bits, float32: at most 6 K; 5.1 K measured), then S and infl
# (8 n_test, plus a cache-sized scratch), then infl and the top-k merge of a dense block (partition copy,
# then three bool masks and a uint16 rank: 4 + 6 + the candidates, at most k per column, 2.5 n_test for
# blocks of 16 k rows or more); 16 n_test leaves room (6-11 measured for blocks of 16 k rows or more).
MASK_BYTES_PER_RUN = 6
BLOCK_BYTES_PER_TEST = 16
MB = 2**20
# A dense top-k block (no floors yet) starts with its first 64 k rows: with one column-wise partition of the
# whole first block, the top-k merge took 0.52 s against 0.20 s for the product at 200 x 20,000 x 1,000
# (benchmarks/aggregate.py; docs/PERFORMANCE.md, aggregator section).
TOPK_PREFIX_ROWS_PER_K = 64
INFLUENCE_CHUNK_ENTRIES = 2**17  # rows of a block post-processed together: 0.5 MB of float32, cache-sized
DENSE_NAME = "influence.npy"
FOLDER_SOURCES = ("folder", "imagenet")  # dataset sources whose examples are image files (src/datasets.py)
CACHE_NAME = "stats.npz"
CACHE_VERSION = 2
# P and P^2 are summed on a grid of 2^-30: every term is then a multiple of 2^-30 in [0, 1], so every
# partial sum over up to 2^23 runs is a multiple of 2^-30 below 2^23, which a float64 (53 bits) holds
# exactly: the sums do not depend on the order runs are added in (tests/test_estimate.py checks it).
SOFT_GRID = 2.0**30
# The proxies' sums are order-independent the same way. Learn speed lies in [0, 1]: SOFT_GRID. Loss and margin
# are clipped to +-PROXY_CLIP and put on a grid of 2^-20 (9.5e-7), so every partial sum over up to 2^21 runs is
# a multiple of 2^-20 below 2^33, exact in a float64. The largest |loss| or |margin| in the 32 records of
# mem_epochs_mnist (MNIST-5k MLP, 10 epochs, 10% flipped labels) was 35.4, far below the clip.
PROXY_CLIP = 2.0**12
PROXY_GRID = {"learn_speed": SOFT_GRID, "loss": 2.0**20, "margin": 2.0**20}
IN, ALL = 0, 1  # rows of a proxy's sums: over runs with the example in the subset, over all runs
NAN_RULE = ("mem, infl and their SEs are NaN (empty in CSV, null in JSON) when an example was never in "
            "or never out of a subset; NaN never passes a threshold, so such examples form no pairs and "
            "are no top-k influencers.")


class Problem(NamedTuple):
    file: str
    reason: str


# ---------------------------------------------------------------------------------------------- loading

@dataclass(frozen=True)
class SweepIdentity:
    """What records of one sweep share: identity metadata (as JSON) and digests of the label arrays."""

    fields: tuple[tuple[str, str], ...]
    digests: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
           layout: Mapping[str, list[Any]]) -> SweepIdentity:
        """`layout`: LAYOUT_FIELDS, the record's epoch list and sorted proxy names."""
        return cls(
            fields=tuple((key, json.dumps(meta.get(key), sort_keys=True)) for key in IDENTITY_FIELDS)
            + tuple((key, json.dumps(layout[key])) for key in LAYOUT_FIELDS),
            digests=tuple((key, content_hash([np.asarray(arrays[key], dtype=np.int64)]))
                          for key in IDENTITY_ARRAYS),
        )

    def differences(self, reference: SweepIdentity) -> list[str]:
        """Human-readable differences from the reference, e.g. `ratio 0.5 (sweep: 0.7)`."""
        fields = zip(self.fields, reference.fields, strict=True)
        digests = zip(self.digests, reference.digests, strict=True)
        return ([f"{key} {mine} (sweep: {theirs})" for (key, mine), (_, theirs) in fields if mine != theirs]
                + [f"{key} differs" for (key, mine), (_, theirs) in digests if mine != theirs])


def record_identity(record: Record) -> SweepIdentity:
    layout = {"epoch_list": record.epoch_list.tolist(), "proxies": sorted(record.proxies)}
    return SweepIdentity.of(record.meta, {key: getattr(record, key) for key in IDENTITY_ARRAYS}, layout)


def content_digest(record: Record) -> str:
    """Digest of every array of a record (metadata such as wall time or host left out)."""
    arrays = record_arrays(record)
    return content_hash(arrays[key] for key in sorted(arrays) if key != "meta")


def _check_subset_mask(record: Record, path: str | Path) -> None:
    meta = record.meta
    try:
        expected = subset_mask(record.seed, int(meta["n_train"]), float(meta["ratio"]), int(meta["salt"]))
    except (ValueError, TypeError, ConfigError) as err:
        raise RecordError(path, f"cannot recompute the subset of seed {meta['seed']} ({err})") from err
    if not np.array_equal(record.subset_mask, expected):
        raise RecordError(path, f"subset_mask is not the subset of seed {record.seed} "
                                f"(ratio {meta['ratio']}, salt {meta['salt']}); rerun that seed")


class _RowBuffer:
    """A growing (rows x width) uint8 array: one row appended per run, doubling when full."""

    def __init__(self, width: int, capacity: int) -> None:
        self._data = np.empty((max(capacity, 1), width), dtype=np.uint8)
        self._rows = 0

    @classmethod
    def of(cls, rows: np.ndarray, capacity: int = 0) -> _RowBuffer:
        """A buffer holding a copy of `rows` (2-d uint8), with room for at least `capacity` rows."""
        buffer = cls(rows.shape[1], max(capacity, len(rows)))
        buffer._data[:len(rows)] = rows
        buffer._rows = len(rows)
        return buffer

    def reserve(self, capacity: int) -> None:
        if capacity > len(self._data):
            grown = np.empty((capacity, self._data.shape[1]), dtype=np.uint8)
            grown[:self._rows] = self.array
            self._data = grown

    def append(self, row: np.ndarray) -> None:
        if self._rows == len(self._data):
            self.reserve(2 * len(self._data))
        self._data[self._rows] = row
        self._rows += 1

    @property
    def array(self) -> np.ndarray:
        return self._data[:self._rows]


def _on_soft_grid(values: np.ndarray, grid: float = SOFT_GRID) -> np.ndarray:
    """float64 values rounded to the nearest multiple of 1/grid (exact: scaling by a power of 2 is)."""
    return np.round(values * grid) / grid


def _proxy_on_grid(name: str, values: np.ndarray) -> np.ndarray:
    """A proxy as float64 on its PROXY_GRID, clipped to +-PROXY_CLIP; NaN (not defined) as 0."""
    clipped = np.clip(np.nan_to_num(values.astype(np.float64), nan=0.0), -PROXY_CLIP, PROXY_CLIP)
    return _on_soft_grid(clipped, PROXY_GRID[name])


class RecordFile(NamedTuple):
    """A record file behind the stats: a run (`used`) or an identical copy of a run's record."""

    rel_path: str  # relative to the sweep dir, '/'-separated
    seed: int
    size: int
    mtime_ns: int
    digest: str  # content_digest of the record
    used: bool


@dataclass(eq=False)
class SweepStats:
    """Sufficient statistics of a sweep; `add_record` checks and folds in one more run. The sums do not
    depend on the order runs are added in (see SOFT_GRID); `sort_by_seed` puts the per-run rows in order."""

    meta: dict[str, Any]  # the metadata of the run with the lowest seed
    identity: SweepIdentity
    train_label: np.ndarray  # int64 (n,), the trained (possibly flipped) labels
    test_label: np.ndarray  # int64 (n_test,)
    flipped_idx: np.ndarray
    flipped_orig_label: np.ndarray
    extras: dict[str, np.ndarray]  # per-example columns ("train_<name>", "test_<name>") of that run
    n_in: np.ndarray  # float64 (n,): runs with i in the subset
    hard_in: np.ndarray  # float64 sums of C over runs with i in; hard_all over all runs
    hard_all: np.ndarray
    soft_in: np.ndarray  # float64 sums of P (and of P^2), each on the SOFT_GRID, over runs with i in / all
    soft_all: np.ndarray
    soft_in_sq: np.ndarray
    soft_all_sq: np.ndarray
    packed_masks: _RowBuffer  # (K, ceil(n/8)) np.packbits of the subset masks
    test_correct: _RowBuffer  # (K, n_test) 0/1
    epoch_list: np.ndarray  # int64 (E,): the epochs with per-epoch results; E = 0 when none
    epoch_hard_in: np.ndarray  # float64 (E, n): sums of the epoch's C over runs with i in; epoch_hard_all: all runs
    epoch_hard_all: np.ndarray
    proxy_sums: dict[str, np.ndarray]  # name -> float64 (2, n): rows IN and ALL, values on PROXY_GRID
    seeds: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    train_in_acc: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    identical_duplicates: list[str] = field(default_factory=list)  # copies of a seed skipped as identical
    files: list[RecordFile] = field(default_factory=list)  # set by load_sweep, for the stats cache

    @classmethod
    def from_record(cls, record: Record, path: str | Path = "<record>", capacity: int = 16) -> SweepStats:
        n, n_test = record.train_label.size, record.test_label.size
        stats = cls(
            meta=dict(record.meta), identity=record_identity(record),
            train_label=record.train_label.copy(), test_label=record.test_label.copy(),
            flipped_idx=record.flipped_idx.copy(), flipped_orig_label=record.flipped_orig_label.copy(),
            extras={key: np.asarray(values).copy() for key, values in record.extras.items()},
            **{name: np.zeros(n) for name in ("n_in", "hard_in", "hard_all", "soft_in", "soft_all",
                                              "soft_in_sq", "soft_all_sq")},
            packed_masks=_RowBuffer((n + 7) // 8, capacity), test_correct=_RowBuffer(n_test, capacity),
            epoch_list=record.epoch_list.copy(), epoch_hard_in=np.zeros((record.epoch_list.size, n)),
            epoch_hard_all=np.zeros((record.epoch_list.size, n)),
            proxy_sums={name: np.zeros((2, n)) for name in record.proxies},
        )
        stats.add_record(record, path)
        return stats

    def add_record(self, record: Record, path: str | Path = "<record>") -> None:
        """Fold one run in; RecordError when it belongs to another sweep, repeats a seed, or its mask is
        not its seed's subset."""
        diffs = record_identity(record).differences(self.identity)
        if diffs:
            raise RecordError(path, f"does not belong to this sweep: {'; '.join(diffs)}")
        if record.seed in self.seeds:
            raise RecordError(path, f"seed {record.seed} is already in the sweep")
        _check_subset_mask(record, path)
        mask, correct = record.subset_mask, record.train_correct
        prob = _on_soft_grid(record.train_prob.astype(np.float64))
        prob_sq = _on_soft_grid(prob * prob)
        self.n_in += mask
        self.hard_in += correct & mask
        self.hard_all += correct
        self.soft_in += np.where(mask, prob, 0.0)
        self.soft_all += prob
        self.soft_in_sq += np.where(mask, prob_sq, 0.0)
        self.soft_all_sq += prob_sq
        if self.epoch_list.size:
            self.epoch_hard_in += record.epoch_train_correct & mask
            self.epoch_hard_all += record.epoch_train_correct
        for name, values in record.proxies.items():
            on_grid = _proxy_on_grid(name, values)
            self.proxy_sums[name][IN] += np.where(mask, on_grid, 0.0)
            self.proxy_sums[name][ALL] += on_grid
        if self.seeds and record.seed < int(self.meta["seed"]):
            self.meta = dict(record.meta)
            self.extras = {key: np.asarray(values).copy() for key, values in record.extras.items()}
        self.packed_masks.append(np.packbits(mask))
        self.test_correct.append(record.test_correct)
        self.seeds.append(record.seed)
        self.test_acc.append(float(record.test_correct.mean()))
        self.train_in_acc.append(float(correct[mask].mean()))
        self.paths.append(str(path))

    def sort_by_seed(self) -> None:
        """Put the runs (mask and T rows, seeds, accuracies, paths) in increasing seed order."""
        order = np.argsort(np.asarray(self.seeds, dtype=np.int64), kind="stable")
        if np.array_equal(order, np.arange(len(order))):
            return
        self.packed_masks = _RowBuffer.of(self.packed_masks.array[order])
        self.test_correct = _RowBuffer.of(self.test_correct.array[order])
        for name in ("seeds", "test_acc", "train_in_acc", "paths"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in order])

    @property
    def n_runs(self) -> int:
        return len(self.seeds)

    @property
    def n_train(self) -> int:
        return self.train_label.size

    @property
    def n_test(self) -> int:
        return self.test_label.size

    @property
    def orig_label(self) -> np.ndarray:
        orig = self.train_label.copy()
        orig[self.flipped_idx] = self.flipped_orig_label
        return orig


class _ProblemLog:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.problems: dict[Path, str] = {}

    def add(self, path: Path, reason: str) -> None:
        reason = _one_line(reason)
        if self.strict:
            raise RecordError(path, f"{reason} (strict mode stops at the first problem)")
        self.problems.setdefault(path, reason)

    def sorted(self) -> list[Problem]:
        return [Problem(str(path), reason) for path, reason in sorted(self.problems.items())]


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _FileInfo(NamedTuple):
    path: Path
    seed: int
    identity: SweepIdentity
    digest: str | None = None  # content digest, where already known (stats cache, duplicate check)


def read_file_info(path: Path) -> _FileInfo:
    """Seed and identity of a record file, reading only its metadata and label arrays."""
    meta = read_meta(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in IDENTITY_ARRAYS}
            epochs = archive["epoch_list"] if "epoch_list" in archive.files else np.zeros(0, dtype=np.int64)
            proxies = sorted(key.removeprefix(PROXY_PREFIX) for key in archive.files if key.startswith(PROXY_PREFIX))
        not_integer = [key for key, values in {**arrays, "epoch_list": epochs}.items() if values.dtype.kind not in "iu"]
        if not_integer:
            raise RecordError(path, f"{', '.join(not_integer)} must hold integers")
        layout = {"epoch_list": epochs.astype(np.int64).ravel().tolist(), "proxies": proxies}
        return _FileInfo(path, int(meta["seed"]), SweepIdentity.of(meta, arrays, layout))
    except KeyError as err:
        raise RecordError(path, f"missing array {err}") from err
    except ARCHIVE_ERRORS as err:
        raise RecordError(path, f"unreadable label arrays or seed ({type(err).__name__}: {err})") from err


def _reference_identity(infos: list[_FileInfo]) -> SweepIdentity | None:
    """The identity of the largest group; ties go to the group of the first file (infos are sorted)."""
    counts = Counter(info.identity for info in infos)
    if not counts:
        return None
    largest = max(counts.values())
    return next(info.identity for info in infos if counts[info.identity] == largest)


def _resolve_duplicate_seeds(infos: list[_FileInfo],
                             log: _ProblemLog) -> tuple[list[_FileInfo], list[_FileInfo]]:
    """Keep one file per seed: identical copies collapse to the first (the others come back second);
    differing copies all go."""
    by_seed: dict[int, list[_FileInfo]] = {}
    for info in infos:
        by_seed.setdefault(info.seed, []).append(info)
    keep, identical = [], []
    for seed, copies in by_seed.items():
        if len(copies) > 1:
            copies = _identical_copies(seed, copies, log)
            identical += copies[1:]
        keep += copies[:1]
    return sorted(keep, key=lambda info: info.path), identical


def _read(path: Path) -> Record:
    """read_record, with bad metadata values (int("four")) also a RecordError: records are untrusted input."""
    try:
        return read_record(path)
    except (ValueError, TypeError) as err:
        raise RecordError(path, f"invalid metadata value ({err})") from err


def _identical_copies(seed: int, copies: list[_FileInfo], log: _ProblemLog) -> list[_FileInfo]:
    readable = []
    for info in copies:
        try:
            digest = info.digest if info.digest is not None else content_digest(_read(info.path))
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


# ------------------------------------------------------------------------------------------ stats cache

class CacheUnusable(Exception):
    """The stats cache cannot be used; the message says why. The loader then reads every record."""


SUM_FIELDS = ("n_in", "hard_in", "hard_all", "soft_in", "soft_all", "soft_in_sq", "soft_all_sq")
FileStat = tuple[int, int]  # (size, mtime_ns); (-1, -1) for a file that vanished


def _file_stat(path: Path) -> FileStat:
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
    | | | "epoch_list", "proxies" (names)} |
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
    """
    files = stats.files
    header = {"cache_version": CACHE_VERSION, "meta": stats.meta, "extras": sorted(stats.extras),
              "epoch_list": stats.epoch_list.tolist(), "proxies": sorted(stats.proxy_sums)}
    arrays = {
        "cache": np.array(json.dumps(header, sort_keys=True)),
        "train_label": stats.train_label, "test_label": stats.test_label,
        "flipped_idx": stats.flipped_idx, "flipped_orig_label": stats.flipped_orig_label,
        **{name: getattr(stats, name) for name in SUM_FIELDS},
        "epoch_hard_in": stats.epoch_hard_in, "epoch_hard_all": stats.epoch_hard_all,
        **{f"proxy_sums_{name}": sums for name, sums in stats.proxy_sums.items()},
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
    layout = {"epoch_list": epoch_list, "proxies": sorted(str(name) for name in header["proxies"])}
    stats = SweepStats(
        meta=meta, identity=SweepIdentity.of(meta, labels, layout), **labels,
        extras={name: _cached_extra(arrays, name, n, n_test) for name in header["extras"]},
        **{name: _cached_array(arrays, name, "float64", (n,)) for name in SUM_FIELDS},
        packed_masks=_RowBuffer.of(_cached_array(arrays, "packed_masks", "uint8", (k, (n + 7) // 8))),
        test_correct=_RowBuffer.of(np.unpackbits(bits, axis=1, count=n_test)),
        epoch_list=np.asarray(epoch_list, dtype=np.int64),
        **{name: _cached_array(arrays, name, "float64", (len(epoch_list), n))
           for name in ("epoch_hard_in", "epoch_hard_all")},
        proxy_sums={name: _cached_array(arrays, f"proxy_sums_{name}", "float64", (2, n))
                    for name in layout["proxies"]},
        seeds=seeds.tolist(), test_acc=_cached_array(arrays, "test_acc", "float64", (k,)).tolist(),
        train_in_acc=_cached_array(arrays, "train_in_acc", "float64", (k,)).tolist(),
        paths=[str(sweep_dir / file.rel_path) for file in used],
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
        raise CacheUnusable(f"{cache_path} is unreadable ({type(err).__name__}: {_one_line(str(err))})") from err
    try:
        return _stats_from_cache(arrays, Path(sweep_dir), cache_path)
    except CacheUnusable:
        raise
    except Exception as err:
        raise CacheUnusable(f"{cache_path} is damaged ({type(err).__name__}: {_one_line(str(err))})") from err


@dataclass
class _CachedSweep:
    """A stats cache whose record files are all present and unchanged."""

    stats: SweepStats
    files: list[RecordFile]
    entries: dict[Path, RecordFile]  # by path under the sweep dir
    used_paths: set[Path] = field(init=False)

    def __post_init__(self) -> None:
        self.used_paths = {path for path, entry in self.entries.items() if entry.used}

    def info(self, path: Path) -> _FileInfo | None:
        entry = self.entries.get(path)
        return None if entry is None else _FileInfo(path, entry.seed, self.stats.identity, entry.digest)


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


def _open_cache(cache_path: Path, sweep_dir: Path, file_stats: Mapping[Path, FileStat]) -> _CachedSweep:
    """The cache, when every record file in it is present and unchanged; CacheUnusable otherwise."""
    if not cache_path.exists():
        raise CacheUnusable(f"no {cache_path} yet")
    stats, files = read_stats_cache(cache_path, sweep_dir)
    entries = {sweep_dir / file.rel_path: file for file in files}
    _check_cache_identity(stats, entries, file_stats)
    changed = [path for path, file in entries.items() if file_stats.get(path) != (file.size, file.mtime_ns)]
    if changed:
        state = "changed" if file_stats.get(changed[0], (-1, -1)) != (-1, -1) else "is gone"
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise CacheUnusable(f"cached record {changed[0]} {state}{more}; the cache cannot subtract it")
    return _CachedSweep(stats, files, entries)


# -------------------------------------------------------------------------------------------- loading

class _Scan(NamedTuple):
    log: _ProblemLog
    keep: list[_FileInfo]  # one file per seed of the sweep, by path
    identical: list[_FileInfo]  # identical copies of a kept file


def _scan(files: list[Path], strict: bool, cached: _CachedSweep | None) -> _Scan:
    """Identity and seed of every file (from the cache where it has them), the sweep's group, one file per
    seed. CacheUnusable when a cached run would not be used (a full load would drop it)."""
    log = _ProblemLog(strict)
    infos = []
    for path in files:
        info = cached.info(path) if cached is not None else None
        if info is None:
            try:
                info = read_file_info(path)
            except RecordError as err:
                log.add(path, err.reason)
                continue
        infos.append(info)
    reference = _reference_identity(infos)
    if cached is not None and reference != cached.stats.identity:
        raise CacheUnusable("most record files now belong to another sweep than the cached ones")
    for info in infos:
        if info.identity != reference:
            diffs = "; ".join(info.identity.differences(reference))
            log.add(info.path, f"does not belong to this sweep: {diffs}")
    keep, identical = _resolve_duplicate_seeds([info for info in infos if info.identity == reference], log)
    if cached is not None:
        lost = sorted(cached.used_paths - {info.path for info in keep})
        if lost:
            raise CacheUnusable(f"cached record {lost[0]} is no longer used (a new copy of its seed appeared)")
    return _Scan(log, keep, identical)


def _cached_sweep(cache_path: Path | None, use_cache: bool, sweep_dir: Path,
                  file_stats: Mapping[Path, FileStat]) -> tuple[_CachedSweep | None, str]:
    """The usable cache (or None) and why not."""
    if cache_path is None:
        return None, "no cache"
    if not use_cache:
        return None, "--no-cache"
    try:
        return _open_cache(cache_path, sweep_dir, file_stats), ""
    except CacheUnusable as err:
        return None, str(err)


def _record_files(sweep_dir: Path, stats: SweepStats, scan: _Scan, file_stats: Mapping[Path, FileStat],
                  digests: Mapping[Path, str]) -> list[RecordFile]:
    """The files behind the runs (in run order), then the identical copies of used seeds."""
    def entry(info: _FileInfo, used: bool) -> RecordFile:
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
               use_cache: bool = True,
               notify: Callable[[str], None] | None = None) -> tuple[SweepStats, list[Problem]]:
    """Read the records under `sweep_dir` into `SweepStats`, runs sorted by seed; problems are (file,
    reason), one per excluded file. Records belong together when `SweepIdentity` agrees; the largest group
    is the sweep. With `cache_path`, the stats cached there are reused when all their record files are
    unchanged (only new files are read), and rewritten when the files changed; `use_cache=False` reads
    everything but still writes the cache; `notify` gets one line saying how the cache was used."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        state = "is not a directory" if sweep_dir.exists() else "does not exist"
        raise MeminfError(f"{sweep_dir} {state}; pass the sweep directory that holds seed=<k>/record.npz")
    files = find_records(sweep_dir)
    if not files:
        raise MeminfError(f"no record.npz under {sweep_dir}; train the sweep first (python -m src.run -m "
                          "seed=0..N) or pass the directory that holds seed=<k>/record.npz")
    # Stat before reading: a file replaced while it is read then looks changed to the next run.
    file_stats = {path: _file_stat(path) for path in files}
    cache_path = Path(cache_path) if cache_path is not None else None
    cached, why_not = _cached_sweep(cache_path, use_cache, sweep_dir, file_stats)
    try:
        scan = _scan(files, strict, cached)
    except CacheUnusable as err:
        cached, why_not = None, str(err)
        scan = _scan(files, strict, None)
    new = [info for info in scan.keep if cached is None or info.path not in cached.used_paths]
    if notify is not None and cache_path is not None:
        notify(f"stats cache: {cached.stats.n_runs} runs from {cache_path}, reading {len(new)} new record files"
               if cached is not None else f"stats cache: reading all {len(files)} record files ({why_not})")
    stats, digests = _stream_records(new, scan.log, progress, cached.stats if cached is not None else None)
    if stats is None:
        first = scan.log.sorted()[0]
        raise MeminfError(f"no usable record under {sweep_dir}: all {len(files)} were skipped (first: "
                          f"{first.file}: {first.reason}); fix or rerun those seeds")
    stats.identical_duplicates = [str(info.path) for info in scan.identical]
    stats.sort_by_seed()
    stats.files = _record_files(sweep_dir, stats, scan, file_stats, digests)
    if cache_path is not None and (cached is None or set(stats.files) != set(cached.files)):
        write_stats_cache(cache_path, stats)
    return stats, scan.log.sorted()


def _stream_records(infos: list[_FileInfo], log: _ProblemLog, progress: Callable[[int, int], None] | None,
                    stats: SweepStats | None = None) -> tuple[SweepStats | None, dict[Path, str]]:
    """Fold the records into `stats` (new stats when None); returns them and the records' digests."""
    if stats is not None:
        for buffer in (stats.packed_masks, stats.test_correct):
            buffer.reserve(stats.n_runs + len(infos))
    digests = {}
    for done, info in enumerate(infos, start=1):
        try:
            record = _read(info.path)
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


# ------------------------------------------------------------------------------------------- estimators

def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """total / count, NaN where count == 0; keeps float32 when both are float32."""
    total, count = np.asarray(total), np.asarray(count)
    shape = np.broadcast_shapes(total.shape, count.shape)
    out = np.full(shape, np.nan, dtype=np.result_type(total, count, 1.0))
    return np.divide(total, count, out=out, where=count > 0)


def mean_difference(s_in: np.ndarray, n_in: np.ndarray, s_out: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """s_in/n_in - s_out/n_out; NaN where a side has no run."""
    diff = _mean(s_in, n_in)
    diff -= _mean(s_out, n_out)
    return diff


def agresti_caffo_se(s_in: np.ndarray, n_in: np.ndarray, s_out: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """SE of a difference of two proportions with one pseudo success and failure per side; NaN where a side
    has no run."""
    s_in, n_in, s_out, n_out = (np.asarray(a, dtype=np.float64) for a in (s_in, n_in, s_out, n_out))
    p_in, p_out = (s_in + 1) / (n_in + 2), (s_out + 1) / (n_out + 2)
    se = np.sqrt(p_in * (1 - p_in) / (n_in + 2) + p_out * (1 - p_out) / (n_out + 2))
    return np.where((n_in > 0) & (n_out > 0), se, np.nan)


def _plug_in_se(sum_in: np.ndarray, sq_in: np.ndarray, n_in: np.ndarray,
                sum_out: np.ndarray, sq_out: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """sqrt(var_in/n_in + var_out/n_out), sample variances from sums and sums of squares; NaN below 2 runs."""
    def var_over_n(total: np.ndarray, squares: np.ndarray, n: np.ndarray) -> np.ndarray:
        var = np.maximum(_mean(squares - total * _mean(total, n), n - 1), 0.0)
        return _mean(var, n)

    return np.sqrt(var_over_n(sum_in, sq_in, n_in) + var_over_n(sum_out, sq_out, n_out))


@dataclass(frozen=True)
class EstimateConfig:
    theta_mem: float = 0.25
    theta_infl: float = 0.15
    top_k: int = 5
    null_perms: int = 2
    block_mb: float = 256.0
    dense_cap_mb: float = 512.0
    seed: int = 0

    def validate(self) -> None:
        if self.top_k < 1 or self.null_perms < 0:
            raise ConfigError(f"--top-k {self.top_k} must be >= 1 and --null-perms {self.null_perms} >= 0")
        if self.block_mb <= 0 or self.dense_cap_mb < 0:
            raise ConfigError(f"--block-mb {self.block_mb} must be > 0 and --dense-cap-mb "
                              f"{self.dense_cap_mb} >= 0 (0 turns influence.npy off)")
        if not (np.isfinite(self.theta_mem) and np.isfinite(self.theta_infl)):
            raise ConfigError("--theta-mem and --theta-infl must be finite numbers")


@dataclass
class Pairs:
    """High-influence pairs, sorted by infl descending (ties: test index, then train index)."""

    train_idx: np.ndarray
    test_idx: np.ndarray
    infl: np.ndarray
    infl_se: np.ndarray

    def influencers_per_test(self, n_test: int) -> np.ndarray:
        return np.bincount(self.test_idx, minlength=n_test)


@dataclass
class Estimates:
    config: EstimateConfig
    mem: np.ndarray
    mem_se: np.ndarray
    mem_soft: np.ndarray
    mem_soft_se: np.ndarray
    n_in: np.ndarray  # int64
    n_out: np.ndarray
    acc_in: np.ndarray
    acc_out: np.ndarray
    mem_epoch: np.ndarray  # (E, n): mem from the correctness at the end of each epoch of stats.epoch_list
    proxies: dict[str, np.ndarray]  # name -> (n,) mean over runs with the example in; NaN where none
    topk_idx: np.ndarray  # int64 (n_test, top_k); -1 where fewer train examples have an estimate
    topk_infl: np.ndarray  # float32 (n_test, top_k), descending; NaN where topk_idx is -1
    pairs: Pairs
    null_pair_counts: list[int]
    dense: DenseFile | None = None  # the influence matrix in a temp file; write_outputs moves it into place
    has_dense: bool = False  # the influence matrix was within the cap and computed into `dense`

    def discard_dense(self) -> None:
        if self.dense is not None:
            self.dense.discard()
            self.dense = None


def _memorization(stats: SweepStats) -> dict[str, Any]:
    n_in = stats.n_in
    n_out = stats.n_runs - n_in
    hard_out = stats.hard_all - stats.hard_in
    soft_out, soft_out_sq = stats.soft_all - stats.soft_in, stats.soft_all_sq - stats.soft_in_sq
    return {
        "mem": mean_difference(stats.hard_in, n_in, hard_out, n_out),
        "mem_se": agresti_caffo_se(stats.hard_in, n_in, hard_out, n_out),
        "mem_soft": mean_difference(stats.soft_in, n_in, soft_out, n_out),
        "mem_soft_se": _plug_in_se(stats.soft_in, stats.soft_in_sq, n_in, soft_out, soft_out_sq, n_out),
        "n_in": n_in.astype(np.int64), "n_out": n_out.astype(np.int64),
        "acc_in": _mean(stats.hard_in, n_in), "acc_out": _mean(hard_out, n_out),
        "mem_epoch": mean_difference(stats.epoch_hard_in, n_in, stats.epoch_hard_all - stats.epoch_hard_in, n_out),
        "proxies": {name: _mean(sums[IN], n_in) for name, sums in stats.proxy_sums.items()},
    }


def _is_consecutive(cols: np.ndarray) -> bool:
    return len(cols) > 0 and int(cols[-1]) - int(cols[0]) == len(cols) - 1 and bool(np.all(np.diff(cols) == 1))


class _InfluenceBlocks:
    """Influence over blocks of training examples: unpack the block's mask columns, one matmul with T."""

    def __init__(self, stats: SweepStats, mem: np.ndarray, config: EstimateConfig) -> None:
        self.packed = stats.packed_masks.array
        self.test_correct = stats.test_correct.array.astype(np.float32)
        self.test_sum = self.test_correct.sum(axis=0)  # float32 counts, exact below 2**24 runs
        self.n_in = stats.n_in.astype(np.float32)
        self.n_out = np.float32(stats.n_runs) - self.n_in
        self.has_estimate = (self.n_in > 0) & (self.n_out > 0)
        self.mem, self.config = mem, config
        self.train_label, self.test_label = stats.train_label, stats.test_label
        row_bytes = MASK_BYTES_PER_RUN * stats.n_runs + BLOCK_BYTES_PER_TEST * stats.n_test
        self.block_rows = max(1, int(config.block_mb * MB // row_bytes))

    def unpack(self, cols: np.ndarray, run_order: np.ndarray | None = None) -> np.ndarray:
        """float32 (K, len(cols)) 0/1 masks of the training examples `cols` (any order), runs in `run_order`.
        Consecutive columns (the main pass) go through np.unpackbits; others gather their bytes."""
        if _is_consecutive(cols):
            first = int(cols[0])
            packed = self.packed[:, first >> 3:(int(cols[-1]) >> 3) + 1]
            bits = np.unpackbits(packed, axis=1)[:, first & 7:(first & 7) + len(cols)]
        else:
            bits = self.packed[:, cols >> 3] >> (7 - (cols & 7)).astype(np.uint8)
            bits &= 1
        if run_order is not None:
            bits = bits[run_order]
        return bits.astype(np.float32)

    def chunks(self, columns: np.ndarray) -> Iterator[np.ndarray]:
        """Blocks of training indices. Callers handle a block inside a function, so that no block array
        outlives its block (a loop variable would keep the previous block alive during the next)."""
        for start in range(0, len(columns), self.block_rows):
            yield columns[start:start + self.block_rows]

    def product(self, cols: np.ndarray, run_order: np.ndarray | None = None) -> np.ndarray:
        """S (b, n_test) float32 counts of a block: its unpacked masks times T."""
        return self.unpack(cols, run_order).T @ self.test_correct

    def influence(self, cols: np.ndarray, s_in: np.ndarray, floor: np.ndarray | None = None) -> _BlockHits:
        """S/n_in - (Tsum - S)/n_out with the float32 operations of mean_difference (the same bits), NaN rows
        where a side has no run; and, in the same pass, the pair candidates and the entries above the top-k
        floors. The pass goes a few rows at a time, so that each chunk is still in cache for the next operation
        (3.0 against 5.4 ns per entry for whole-block passes at n_test = 10,000; the two comparisons and their
        flatnonzero were separate passes over the block before)."""
        b, n_test = s_in.shape
        infl = np.empty_like(s_in)
        rows = max(1, INFLUENCE_CHUNK_ENTRIES // n_test)
        scratch = np.empty((min(rows, b), n_test), dtype=np.float32)
        passed = np.empty(scratch.shape, dtype=bool)
        memorized, no_estimate = self.mem[cols] >= self.config.theta_mem, ~self.has_estimate[cols]
        pair_parts, above_parts, above_count = [], [], 0
        above_limit = infl.size // 16 if floor is not None else -1
        for start in range(0, b, rows):
            part = slice(start, start + rows)
            chunk = infl[part]
            self._influence_rows(cols[part], s_in[part], chunk, scratch[:len(chunk)])
            chunk[no_estimate[part]] = np.nan
            hits = passed[:len(chunk)]
            if memorized[part].any():
                np.greater_equal(chunk, self.config.theta_infl, out=hits)  # NaN: False
                hits[~memorized[part]] = False
                pair_parts.append(_flat_hits(hits, start * n_test))
            if above_count <= above_limit:
                np.greater(chunk, floor, out=hits)
                above_count += np.count_nonzero(hits)
                if above_count <= above_limit:  # else the block is dense: merge compares it itself
                    above_parts.append(_flat_hits(hits, start * n_test))
        above_flat = np.concatenate([*above_parts, _NO_INDEX]) if 0 <= above_count <= above_limit else None
        return _BlockHits(infl, np.concatenate([*pair_parts, _NO_INDEX]), above_flat)

    def _influence_rows(self, cols: np.ndarray, s_in: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(s_in, self.n_in[cols, None], out=out)
            np.subtract(self.test_sum, s_in, out=scratch)
            scratch /= self.n_out[cols, None]
            out -= scratch

    def pairs(self, cols: np.ndarray, flat: np.ndarray, n_test: int) -> tuple[np.ndarray, np.ndarray]:
        """(block rows, test indices) of the candidates (flat indices) whose classes agree."""
        rows, test_idx = np.divmod(flat, n_test)
        same_class = self.train_label[cols[rows]] == self.test_label[test_idx]
        return rows[same_class], test_idx[same_class]


_NO_INDEX = np.zeros(0, dtype=np.int64)


def _flat_hits(hits: np.ndarray, offset: int) -> np.ndarray:
    flat = np.flatnonzero(hits)
    flat += offset
    return flat


class _BlockHits(NamedTuple):
    infl: np.ndarray  # (b, n_test) float32, NaN rows for no estimate
    pair_flat: np.ndarray  # flat indices of infl >= theta_infl in rows with mem >= theta_mem (any class)
    above_flat: np.ndarray | None  # flat indices of infl > the top-k floors; None: not asked, or over 1/16


class _TopK:
    """Running top-k training examples per test example: larger infl first, ties to the lower train index.

    Blocks come in increasing train index, so a block entry can only enter a column by beating the column's
    current k-th value (the floor) strictly: an equal value loses the tie to the earlier index. The entries
    above the floors (found in the influence pass) are few after the first block, and only they are sorted
    into their columns; an argpartition of every block cost more than the rest of its post-processing
    before. A dense block (no floors yet) goes in doubling row chunks, each chunk's own top k first.
    The selection is exact, so the result does not depend on the block size."""

    def __init__(self, k: int, n_test: int) -> None:
        self.k = k
        self.values = np.full((k, n_test), -np.inf, dtype=np.float32)  # every column in descending order
        self.indices = np.full((k, n_test), -1, dtype=np.int64)

    @property
    def floor(self) -> np.ndarray:
        """The current k-th value of every column (-inf while it has fewer than k entries)."""
        return self.values[-1]

    def merge(self, cols: np.ndarray, infl: np.ndarray, has_estimate: np.ndarray,
              above_flat: np.ndarray | None = None) -> None:
        """Merge a block whose train indices follow the earlier blocks'. `above_flat`: the flat indices of
        its entries above the floors, where the caller has them. A dense block gets its rows without an
        estimate (NaN) overwritten with -inf."""
        if above_flat is None:
            above = infl > self.floor
            if np.count_nonzero(above) <= infl.size // 16:
                above_flat = np.flatnonzero(above)
            del above
        if above_flat is not None:
            self._insert_flat(cols, infl, above_flat)
            return
        infl[~has_estimate] = -np.inf
        # Dense (the first block: no floors yet): rows [0, p), [p, 2p), [2p, 4p), ... one after the other.
        # After r rows, the next r pass the floors about k times per column (i.i.d. order), so every chunk
        # stays sparse, where floors fixed after the first p rows would pass k (b - p) / p per column.
        start, size = 0, TOPK_PREFIX_ROWS_PER_K * self.k
        while start < len(cols):
            part = slice(start, start + size)
            above = infl[part] > self.floor
            if np.count_nonzero(above) > above.size // 16:
                above &= self._block_top_k(infl[part])  # only the chunk's own top k can enter
            self._insert_flat(cols[part], infl[part], np.flatnonzero(above))
            start = size = start + size

    def _insert_flat(self, cols: np.ndarray, infl: np.ndarray, flat: np.ndarray) -> None:
        if flat.size:
            rows, test_idx = np.divmod(flat, infl.shape[1])
            self._insert(cols[rows], test_idx, infl.ravel()[flat])

    def _block_top_k(self, infl: np.ndarray) -> np.ndarray:
        """bool mask of the k best entries of each column of a block, ties to the earlier row: at most k
        per column however many values tie (an always-correct test example ties all its column at 0)."""
        b = len(infl)
        if b <= self.k:
            return np.ones(infl.shape, dtype=bool)
        kth = np.partition(infl, b - self.k, axis=0)[b - self.k].copy()  # the copy frees the partitioned block
        best = infl > kth
        tied = infl == kth
        room = self.k - np.count_nonzero(best, axis=0)
        rank_among_tied = np.cumsum(tied, axis=0, dtype=np.uint16 if b < 2**16 else np.int32)
        tied &= rank_among_tied <= room
        del rank_among_tied
        best |= tied
        return best

    def _insert(self, train_idx: np.ndarray, test_idx: np.ndarray, values: np.ndarray) -> None:
        """Merge entries into the top-k of their columns: sort each touched column's k current entries and
        its new ones by (value descending, train index ascending) and keep the first k."""
        columns, group = np.unique(test_idx, return_inverse=True)
        k, touched = self.k, len(columns)
        all_group = np.concatenate([np.tile(np.arange(touched), k), group])
        all_values = np.concatenate([self.values[:, columns].ravel(), values])
        all_indices = np.concatenate([self.indices[:, columns].ravel(), train_idx])
        order = np.lexsort((all_indices, -all_values, all_group))
        sizes = k + np.bincount(group, minlength=touched)
        starts = np.cumsum(sizes) - sizes
        best = order[starts[:, None] + np.arange(k)]  # (touched, k): the first k of each column's run
        self.values[:, columns] = all_values[best].T
        self.indices[:, columns] = all_indices[best].T

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, values), each (n_test, k), descending; ties by train index; -1/NaN padding."""
        values, indices = self.values.T.copy(), self.indices.T.copy()
        empty = np.isneginf(values)
        values[empty], indices[empty] = np.nan, -1
        return indices, values


def _sorted_pairs(train_idx: np.ndarray, test_idx: np.ndarray, infl: np.ndarray,
                  infl_se: np.ndarray) -> Pairs:
    order = np.lexsort((train_idx, test_idx, -infl))
    return Pairs(train_idx[order], test_idx[order], infl[order], infl_se[order])


@dataclass
class DenseFile:
    """influence.npy being filled in a temp file (named like record temps: remove_stale_temps finds it)."""

    tmp: Path
    created_dir: bool  # the directory did not exist before

    @classmethod
    def open(cls, directory: Path, shape: tuple[int, int]) -> tuple[DenseFile, np.memmap]:
        created_dir = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        dense = cls(tmp_path(directory / DENSE_NAME), created_dir)
        return dense, np.lib.format.open_memmap(dense.tmp, mode="w+", dtype=np.float32, shape=shape)

    def commit(self, path: Path) -> None:
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)
        if self.created_dir:
            with contextlib.suppress(OSError):  # not empty: something else was written there
                self.tmp.parent.rmdir()


def _influence_block(blocks: _InfluenceBlocks, cols: np.ndarray, topk: _TopK,
                     matrix: np.memmap | None) -> tuple[np.ndarray, ...]:
    """Pairs (train_idx, test_idx, infl, infl_se) of one block; fills its rows of `matrix`, merges top-k."""
    s_in = blocks.product(cols)
    infl, pair_flat, above_flat = blocks.influence(cols, s_in, topk.floor)
    rows, test_idx = blocks.pairs(cols, pair_flat, infl.shape[1])
    train_idx, hits = cols[rows], s_in[rows, test_idx]
    del s_in  # the top-k merge runs without it (MASK_BYTES_PER_RUN, BLOCK_BYTES_PER_TEST)
    se = agresti_caffo_se(hits, blocks.n_in[train_idx], blocks.test_sum[test_idx] - hits,
                          blocks.n_out[train_idx])
    pairs = (train_idx, test_idx, infl[rows, test_idx].astype(np.float64), se)
    if matrix is not None:
        matrix[cols[0]:cols[-1] + 1] = infl
    topk.merge(cols, infl, blocks.has_estimate[cols], above_flat)
    return pairs


def _influence(stats: SweepStats, blocks: _InfluenceBlocks, config: EstimateConfig, matrix: np.memmap | None,
               progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray, Pairs]:
    topk = _TopK(config.top_k, stats.n_test)
    found = []
    for cols in blocks.chunks(np.arange(stats.n_train)):
        found.append(_influence_block(blocks, cols, topk, matrix))
        if progress is not None:
            progress(int(cols[-1]) + 1, stats.n_train)
    train_idx, test_idx, infl_values, infl_se = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return *topk.result(), _sorted_pairs(train_idx, test_idx, infl_values, infl_se)


def _null_pair_counts(blocks: _InfluenceBlocks, n_runs: int, config: EstimateConfig) -> list[int]:
    memorized = np.flatnonzero(blocks.mem >= config.theta_mem)
    rng = np.random.default_rng(config.seed)
    counts = []
    for _ in range(config.null_perms):
        run_order = rng.permutation(n_runs)
        counts.append(sum(_null_block_pairs(blocks, cols, run_order) for cols in blocks.chunks(memorized)))
    return counts


def _null_block_pairs(blocks: _InfluenceBlocks, cols: np.ndarray, run_order: np.ndarray) -> int:
    s_in = blocks.product(cols, run_order)
    _, pair_flat, _ = blocks.influence(cols, s_in)
    return len(blocks.pairs(cols, pair_flat, s_in.shape[1])[0])


def estimate(stats: SweepStats, config: EstimateConfig | None = None, dense_dir: Path | None = None,
             progress: Callable[[int, int], None] | None = None) -> Estimates:
    """All estimates of a sweep. With `dense_dir`, the influence matrix (when within the cap) is filled in a
    temp file there, which `write_outputs` moves to influence.npy (or `Estimates.discard_dense` removes).
    `progress(done, n_train)` is called after each block of training examples."""
    config = config or EstimateConfig()
    config.validate()
    mem = _memorization(stats)
    blocks = _InfluenceBlocks(stats, mem["mem"], config)
    dense, matrix = None, None
    if dense_dir is not None and stats.n_train * stats.n_test * 4 <= config.dense_cap_mb * MB:
        dense, matrix = DenseFile.open(Path(dense_dir), (stats.n_train, stats.n_test))
    try:
        topk_idx, topk_infl, pairs = _influence(stats, blocks, config, matrix, progress)
        if matrix is not None:
            matrix.flush()
            del matrix
        null_counts = _null_pair_counts(blocks, stats.n_runs, config)
    except BaseException:
        if dense is not None:
            dense.discard()
        raise
    return Estimates(config=config, **mem, topk_idx=topk_idx, topk_infl=topk_infl, pairs=pairs,
                     null_pair_counts=null_counts, dense=dense, has_dense=dense is not None)


def pair_influence(stats: SweepStats, train_idx: np.ndarray,
                   test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """infl and its Agresti-Caffo SE for chosen (train, test) pairs, computed directly."""
    train_idx, test_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
    blocks = _InfluenceBlocks(stats, np.zeros(stats.n_train), EstimateConfig())
    s_in = np.einsum("kp,kp->p", blocks.unpack(train_idx), blocks.test_correct[:, test_idx])
    s_out = blocks.test_sum[test_idx] - s_in
    n_in, n_out = blocks.n_in[train_idx], blocks.n_out[train_idx]
    return mean_difference(s_in, n_in, s_out, n_out), agresti_caffo_se(s_in, n_in, s_out, n_out)


# ---------------------------------------------------------------------------------------------- summary

def runs_needed(ratio: float, n_runs: int) -> dict[str, Any]:
    """Runs for a target SE of mem at the worst case p = 1/2: plug-in K = 0.25 c / se^2 and the paper's
    bound sd ~ sqrt(c / K), with c = 1/r + 1/(1-r) (0.035 at K=4000, 0.05 at K=2000 for r=0.7)."""
    c = 1 / ratio + 1 / (1 - ratio) if ratio < 1 else float("inf")
    return {
        "worst_case_se_now": {"plug_in": _number(np.sqrt(0.25 * c / n_runs)),
                              "paper_bound": _number(np.sqrt(c / n_runs))},
        "targets": [{"se": se, "plug_in_runs": _count(0.25 * c / se**2),
                     "paper_bound_runs": _count(c / se**2)} for se in SE_TARGETS],
    }


def _count(value: float) -> int | None:
    """Runs rounded up; rounding to 6 decimals first keeps float noise (624.99999999) from adding one."""
    return int(np.ceil(round(value, 6))) if np.isfinite(value) else None


def _number(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman correlation (Pearson of average ranks) over the entries where both are finite; None when
    fewer than 3 such entries or either side is constant."""
    from scipy.stats import rankdata

    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < 3:
        return None
    rx, ry = rankdata(x[both]), rankdata(y[both])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return _number(np.dot(rx, ry) / denominator) if denominator > 0 else None


def summarize(stats: SweepStats, est: Estimates, problems: list[Problem]) -> dict[str, Any]:
    meta, config = stats.meta, est.config
    has_estimate = ~np.isnan(est.mem)
    influencers = est.pairs.influencers_per_test(stats.n_test)
    train_in_acc = float(np.mean(stats.train_in_acc))
    warning = None
    if train_in_acc < TRAIN_IN_ACC_WARNING:
        warning = (f"mean in-subset train accuracy {train_in_acc:.4f} < {TRAIN_IN_ACC_WARNING}: the models "
                   "do not fit their subsets, so memorization is underestimated; train longer")
    return {
        "runs_used": stats.n_runs, "problems_excluded": len(problems),
        "identical_duplicates_skipped": len(stats.identical_duplicates),
        **{key: meta.get(key) for key in ("dataset", "model", "experiment_name", "experiment_hash",
                                          "data_fingerprint", "num_classes", "ratio", "salt")},
        "n_train": stats.n_train, "n_test": stats.n_test, "n_flipped": int(stats.flipped_idx.size),
        "mean_test_acc": _number(np.mean(stats.test_acc)), "mean_train_in_acc": _number(train_in_acc),
        "train_in_acc_warning": warning,
        "examples_with_estimate": int(has_estimate.sum()),
        "examples_without_estimate": int((~has_estimate).sum()),
        **{f"frac_mem_ge_{theta}": _number(np.mean(est.mem[has_estimate] >= theta)) if has_estimate.any()
           else None for theta in MEM_FRACTION_THRESHOLDS},
        "memorized": int(np.sum(est.mem >= config.theta_mem)),
        "pairs": int(est.pairs.infl.size),
        "pair_train_examples": int(np.unique(est.pairs.train_idx).size),
        "pair_test_examples": int(np.sum(influencers > 0)),
        "test_with_one_influencer": int(np.sum(influencers == 1)),
        "null_pair_counts": est.null_pair_counts,
        "expected_false_pairs": _number(np.mean(est.null_pair_counts)) if est.null_pair_counts else None,
        "runs_needed": runs_needed(float(meta["ratio"]), stats.n_runs),
        "epoch_list": stats.epoch_list.tolist(),
        "mean_mem_by_epoch": [_number(np.mean(row[has_estimate])) if has_estimate.any() else None
                              for row in est.mem_epoch],
        "proxy_spearman_with_mem": {name: spearman(values, est.mem) for name, values in est.proxies.items()},
        "thresholds": {"theta_mem": config.theta_mem, "theta_infl": config.theta_infl, "top_k": config.top_k,
                       "null_perms": config.null_perms, "seed": config.seed},
        "influence_npy": est.has_dense,
        "estimators": {"mem": "hard: 0/1 correctness of the trained label; SE Agresti-Caffo",
                       "mem_soft": "probability of the trained label; plug-in SE with sample variances",
                       "pairs": "infl >= theta_infl and mem >= theta_mem and same trained class",
                       "mem_epoch": "mem from the correctness at the end of each epoch of epoch_list",
                       "proxies": "mean over runs with the example in the subset; Spearman with mem over "
                                  "examples where both are defined",
                       "nan": NAN_RULE},
    }


def format_summary(summary: dict[str, Any]) -> str:
    se_now = summary["runs_needed"]["worst_case_se_now"]
    thresholds = summary["thresholds"]
    fractions = ", ".join(f"{_percent(summary[f'frac_mem_ge_{t}'])} >= {t}" for t in MEM_FRACTION_THRESHOLDS)
    lines = [
        f"{summary['experiment_name']} ({summary['experiment_hash']}): {summary['dataset']}, "
        f"{summary['model']}, {summary['runs_used']} runs ({summary['problems_excluded']} skipped), "
        f"{summary['n_train']} train x {summary['n_test']} test, ratio {summary['ratio']}",
        f"accuracy: test {_fmt(summary['mean_test_acc'])}, "
        f"in-subset train {_fmt(summary['mean_train_in_acc'])}",
        f"memorization: {summary['examples_with_estimate']} examples with an estimate "
        f"({summary['examples_without_estimate']} without), {fractions}; worst-case SE "
        f"{_fmt(se_now['plug_in'])} (plug-in), {_fmt(se_now['paper_bound'])} (paper bound)",
        f"influence: {summary['pairs']} pairs (infl >= {thresholds['theta_infl']}, mem >= "
        f"{thresholds['theta_mem']}, same class) over {summary['pair_test_examples']} test examples "
        f"({summary['test_with_one_influencer']} with one influencer); expected by chance "
        f"{_fmt(summary['expected_false_pairs'], '.1f')} ({thresholds['null_perms']} shuffles)",
    ]
    if summary["epoch_list"]:
        by_epoch = ", ".join(f"{epoch}: {_fmt(mem)}" for epoch, mem in zip(summary["epoch_list"],
                                                                           summary["mean_mem_by_epoch"], strict=True))
        lines.append(f"mean mem by epoch: {by_epoch}")
    if summary["proxy_spearman_with_mem"]:
        rhos = ", ".join(f"{name} {_fmt(rho, '.3f')}" for name, rho in summary["proxy_spearman_with_mem"].items())
        lines.append(f"proxies, Spearman with mem: {rhos}")
    if summary["train_in_acc_warning"]:
        lines.append(f"warning: {summary['train_in_acc_warning']}")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


# ---------------------------------------------------------------------------------------------- outputs

def _format_column(values: np.ndarray) -> list[str]:
    """Floats with 6 significant digits and NaN as an empty field; booleans as 0/1."""
    if values.dtype.kind == "f":
        return ["" if v != v else f"{v:.6g}" for v in values.tolist()]
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.dtype.kind == "U":  # file paths: quoted as RFC 4180 when they hold a comma, quote or newline
        return [f'"{v.replace(chr(34), 2 * chr(34))}"' if any(c in v for c in ',"\r\n') else v
                for v in values.tolist()]
    return [str(v) for v in values.tolist()]


def csv_text(columns: Mapping[str, np.ndarray]) -> str:
    formatted = [_format_column(np.asarray(values)) for values in columns.values()]
    lines = [",".join(columns), *(",".join(row) for row in zip(*formatted, strict=True))]
    return "\n".join(lines) + "\n"


def memorization_columns(stats: SweepStats, est: Estimates,
                         train_paths: list[str] | None = None) -> dict[str, np.ndarray]:
    flipped = np.zeros(stats.n_train, dtype=bool)
    flipped[stats.flipped_idx] = True
    columns = {"index": np.arange(stats.n_train), "label": stats.train_label, "orig_label": stats.orig_label,
               "flipped": flipped}
    if train_paths is not None:
        columns["path"] = np.array(train_paths, dtype=str)
    columns.update({name: getattr(est, name) for name in ("mem", "mem_se", "mem_soft", "mem_soft_se", "n_in",
                                                          "n_out", "acc_in", "acc_out")})
    columns.update({name: values for name, values in stats.extras.items() if name.startswith("train_")})
    columns.update({f"proxy_{name}": values for name, values in est.proxies.items()})
    return columns


def pairs_columns(stats: SweepStats, est: Estimates) -> dict[str, np.ndarray]:
    pairs = est.pairs
    return {"test_index": pairs.test_idx, "train_index": pairs.train_idx,
            "label": stats.test_label[pairs.test_idx], "infl": pairs.infl, "infl_se": pairs.infl_se,
            "mem": est.mem[pairs.train_idx],
            "influencers_of_test": pairs.influencers_per_test(stats.n_test)[pairs.test_idx]}


def estimate_arrays(stats: SweepStats, est: Estimates, summary: dict[str, Any]) -> dict[str, np.ndarray]:
    mem_columns = memorization_columns(stats, est)
    arrays = {name: mem_columns[name] for name in ("mem", "mem_se", "mem_soft", "mem_soft_se", "n_in",
                                                   "n_out", "acc_in", "acc_out", "orig_label", "flipped")}
    arrays.update({
        "train_label": stats.train_label, "test_label": stats.test_label,
        "topk_idx": est.topk_idx, "topk_infl": est.topk_infl,
        "pair_train_idx": est.pairs.train_idx, "pair_test_idx": est.pairs.test_idx,
        "pair_infl": est.pairs.infl, "pair_infl_se": est.pairs.infl_se,
        "seeds": np.asarray(stats.seeds, dtype=np.int64), "test_acc": np.asarray(stats.test_acc),
        "train_in_acc": np.asarray(stats.train_in_acc),
        "mem_epoch": est.mem_epoch, "epoch_list": stats.epoch_list,
        "summary": np.array(json.dumps(summary, allow_nan=False)),
    })
    arrays.update({f"proxy_{name}": values for name, values in est.proxies.items()})
    arrays.update({f"extra_{name}": np.asarray(values) for name, values in stats.extras.items()})
    return arrays


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def write_outputs(out_dir: str | Path, stats: SweepStats, est: Estimates, summary: dict[str, Any],
                  gallery_png: bytes | None = None, train_paths: list[str] | None = None) -> list[Path]:
    """Serialize every output in memory, then write each atomically; returns the written paths.
    `train_paths` (image files of the training examples) become memorization.csv's `path` column."""
    out_dir = Path(out_dir)
    payloads = {
        "estimates.npz": _npz_bytes(estimate_arrays(stats, est, summary)),
        "memorization.csv": csv_text(memorization_columns(stats, est, train_paths)).encode(),
        "pairs.csv": csv_text(pairs_columns(stats, est)).encode(),
        "summary.json": (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode(),
    }
    if gallery_png is not None:
        payloads["gallery.png"] = gallery_png
    written = [write_atomic(out_dir / name, lambda handle, data=data: handle.write(data))
               for name, data in payloads.items()]
    dense_path = out_dir / DENSE_NAME
    if est.dense is not None:
        est.dense.commit(dense_path)
        est.dense = None
        written.append(dense_path)
    else:
        dense_path.unlink(missing_ok=True)  # a stale matrix from an earlier run would not match
    return written


# ------------------------------------------------------------------------------------------------- CLI

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.estimate", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="directory holding seed=<k>/record.npz")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default <sweep dir>/estimates)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad or foreign record")
    parser.add_argument("--no-cache", action="store_true",
                        help=f"read every record instead of updating {CACHE_NAME} in --out (then rewrite it)")
    parser.add_argument("--theta-mem", type=float, default=EstimateConfig.theta_mem)
    parser.add_argument("--theta-infl", type=float, default=EstimateConfig.theta_infl)
    parser.add_argument("--top-k", type=int, default=EstimateConfig.top_k)
    parser.add_argument("--null-perms", type=int, default=EstimateConfig.null_perms)
    parser.add_argument("--block-mb", type=float, default=EstimateConfig.block_mb)
    parser.add_argument("--dense-cap-mb", type=float, default=EstimateConfig.dense_cap_mb)
    parser.add_argument("--gallery", type=int, default=64, help="examples in gallery.png (0: none)")
    parser.add_argument("--seed", type=int, default=EstimateConfig.seed, help="seed of the permutation null")
    parser.add_argument("--progress", action="store_true",
                        help="show the record-loading bar even when stderr is not a terminal")
    add_wandb_arguments(parser)
    return parser.parse_args(argv)


def most_memorized(mem: np.ndarray, mem_soft: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest mem values (NaN left out), descending; ties (common: mem is a
    difference of counts) by mem_soft, then by index."""
    candidates = np.flatnonzero(~np.isnan(mem))
    soft = np.nan_to_num(mem_soft[candidates], nan=-np.inf)
    return candidates[np.lexsort((candidates, -soft, -mem[candidates]))][:count]


def _gallery_png(stats: SweepStats, est: Estimates, count: int) -> bytes | None:
    if count <= 0:
        return None
    try:
        from src.data import train_images_from_meta

        order = most_memorized(est.mem, est.mem_soft, count)
        images = train_images_from_meta(stats.meta, order)
    except (ImportError, MeminfError, OSError) as err:
        print(f"gallery skipped: training images unavailable ({err})")
        return None
    if images is None:
        print("gallery skipped: the data are not images")
        return None
    from src.gallery import render_gallery

    try:
        return render_gallery(images, order, stats.train_label, stats.orig_label, est.mem, est.mem_se)
    except MeminfError as err:
        print(f"gallery skipped: {err}")
        return None


def _train_paths(stats: SweepStats) -> list[str] | None:
    """The training examples' image files when the sweep's data set is an image folder and loads here."""
    if (stats.meta.get("config") or {}).get("dataset", {}).get("source") not in FOLDER_SOURCES:
        return None
    try:
        from src.data import train_paths_from_meta

        return train_paths_from_meta(stats.meta)
    except (ImportError, MeminfError, OSError) as err:
        print(f"image paths left out of memorization.csv: the data set does not load here ({err})")
        return None


def run(args: argparse.Namespace) -> None:
    out_dir = args.out if args.out is not None else args.sweep_dir / "estimates"
    config = EstimateConfig(theta_mem=args.theta_mem, theta_infl=args.theta_infl, top_k=args.top_k,
                            null_perms=args.null_perms, block_mb=args.block_mb,
                            dense_cap_mb=args.dense_cap_mb, seed=args.seed)
    config.validate()
    show_progress = args.progress or sys.stderr.isatty()
    stats, problems = load_sweep(args.sweep_dir, strict=args.strict,
                                 progress=ProgressBar(show_progress, "records", "file"),
                                 cache_path=out_dir / CACHE_NAME, use_cache=not args.no_cache, notify=print)
    for problem in problems:
        print(f"skipped {problem.file}: {problem.reason}")
    est = estimate(stats, config, dense_dir=out_dir, progress=ProgressBar(show_progress, "influence", "example"))
    try:
        summary = summarize(stats, est, problems)
        written = write_outputs(out_dir, stats, est, summary, _gallery_png(stats, est, args.gallery),
                                _train_paths(stats))
    finally:
        est.discard_dense()
    print(format_summary(summary))
    print(f"wrote {', '.join(path.name for path in written)} to {out_dir}")
    log_estimates(args, out_dir, stats.meta)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return cli_exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
