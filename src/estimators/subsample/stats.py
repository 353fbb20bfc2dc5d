"""Sufficient statistics of a subset-training sweep, folded in one record at a time (`SweepStats`).

Order of runs: nothing depends on the order in which records are added. The per-example sums are exact (0/1
counts, and P and P^2 rounded to multiples of 2^-30, at most 4.7e-10 off, so every partial float64 sum up to
2^23 runs is exact and addition order cannot change a bit; the record scores likewise, see PROXY_GRID), and
`sort_by_seed` puts the per-run rows (masks, T, seeds, accuracies) in seed order.

Records of one sweep share a `SweepIdentity`: data fingerprint, sizes, ratio, salt, the experiment (identity 2,
src/contracts/identity.py: records written before it count by the config they store) and the label arrays.
Per-epoch results and record scores are used where every run of the sweep has them: a run that recorded other
epochs or scores keeps the sweep's common ones (the statistics drop the others).

Memory: only sums (float64 per example), the packed masks K x ceil(n/8) and T as K x n_test uint8.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from src.contracts.identity import experiment_identity, record_experiment_hash
from src.contracts.io import content_hash
from src.contracts.records import Record, RecordError, record_arrays
from src.data.subsets import SubsetRule, subset_mask, subset_seed
from src.errors import ConfigError

IDENTITY_FIELDS = ("data_fingerprint", "n_train", "n_test", "num_classes", "ratio", "salt")
IDENTITY_ARRAYS = ("train_label", "test_label", "flipped_idx", "flipped_orig_label")
CACHE_VERSION = 2
# P and P^2 are summed on a grid of 2^-30: every term is then a multiple of 2^-30 in [0, 1], so every
# partial sum over up to 2^23 runs is a multiple of 2^-30 below 2^23, which a float64 (53 bits) holds
# exactly: the sums do not depend on the order runs are added in (tests/test_estimate.py checks it).
SOFT_GRID = 2.0**30
# The proxies' sums are order-independent the same way. Learn speed lies in [0, 1]: SOFT_GRID. Loss and margin
# are clipped to +-PROXY_CLIP and put on a grid of 2^-20 (9.5e-7), so every partial sum over up to 2^21 runs is
# a multiple of 2^-20 below 2^33, exact in a float64. Real losses and margins stay orders of magnitude below the
# clip (docs/PERFORMANCE.md, aggregator section).
PROXY_CLIP = 2.0**12
PROXY_GRID = {"learn_speed": SOFT_GRID, "loss": 2.0**20, "margin": 2.0**20}
DEFAULT_PROXY_GRID = 2.0**20  # a record score without its own entry: clipped and on the loss grid
IN, ALL = 0, 1  # rows of a record score's sums: over runs with the example in the subset, over all runs
# Split-half reliability (reliability.py) needs the counts of parts of the sweep: the runs fall into
# RELIABILITY_GROUPS groups by seed mod RELIABILITY_GROUPS, and each group keeps its own counts (rows GROUP_N_IN,
# GROUP_HARD_IN, GROUP_HARD_ALL: as n_in, hard_in, hard_all), so adding runs stays incremental. Eight groups give
# the interleaved halves (even against odd seeds), quarters and eighths.
RELIABILITY_GROUPS = 8
GROUP_N_IN, GROUP_HARD_IN, GROUP_HARD_ALL = 0, 1, 2


class Problem(NamedTuple):
    file: str
    reason: str


@dataclass(frozen=True)
class SweepIdentity:
    """What records of one sweep share: identity metadata (as JSON) and digests of the label arrays."""

    fields: tuple[tuple[str, str], ...]
    digests: tuple[tuple[str, str], ...]
    # The canonical experiment behind experiment_hash (None when the records store no config): only to say what
    # differs, never compared.
    experiment: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    @classmethod
    def of(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> SweepIdentity:
        config = meta.get("config")
        experiment = experiment_identity(config, str(meta.get("data_fingerprint"))) \
            if isinstance(config, Mapping) else None
        return cls(
            fields=(*((key, json.dumps(meta.get(key), sort_keys=True)) for key in IDENTITY_FIELDS),
                    ("experiment_hash", json.dumps(record_experiment_hash(meta)))),
            digests=tuple((key, content_hash([np.asarray(arrays[key], dtype=np.int64)]))
                          for key in IDENTITY_ARRAYS),
            experiment=experiment,
        )

    def differences(self, reference: SweepIdentity) -> list[str]:
        """Human-readable differences from the reference, e.g. `ratio 0.5 (sweep: 0.7)`; another experiment
        names the settings that differ (`experiment_hash ... : batch_size 32 (sweep: 64)`)."""
        fields = zip(self.fields, reference.fields, strict=True)
        digests = zip(self.digests, reference.digests, strict=True)
        found = [f"{key} {mine} (sweep: {theirs})" for (key, mine), (_, theirs) in fields if mine != theirs]
        if any(line.startswith("experiment_hash") for line in found) and self.experiment and reference.experiment:
            found += [f"{key} {_shown(self.experiment.get(key))} (sweep: {_shown(reference.experiment.get(key))})"
                      for key in sorted(set(self.experiment) | set(reference.experiment))
                      if self.experiment.get(key) != reference.experiment.get(key)]
        return found + [f"{key} differs" for (key, mine), (_, theirs) in digests if mine != theirs]


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else json.dumps(value)


def record_identity(record: Record) -> SweepIdentity:
    return SweepIdentity.of(record.meta, {key: getattr(record, key) for key in IDENTITY_ARRAYS})


def content_digest(record: Record) -> str:
    """Digest of every array of a record (metadata such as wall time or host left out)."""
    arrays = record_arrays(record)
    return content_hash(arrays[key] for key in sorted(arrays) if key != "meta")


def _check_subset_mask(record: Record, path: str | Path) -> None:
    """The record's subset is its seed's draw (src/data/subsets.py) under the size rule and repeats of its config
    (records written before those existed, or without a config, used the defaults)."""
    meta = record.meta
    rule = SubsetRule.of_config(meta.get("config"))
    try:
        expected = subset_mask(subset_seed(record.seed, rule.repeats), int(meta["n_train"]), float(meta["ratio"]),
                               int(meta["salt"]), str(rule.size_rule))
    except (ValueError, TypeError, ConfigError) as err:
        raise RecordError(path, f"cannot recompute the subset of seed {meta['seed']} ({err})") from err
    if not np.array_equal(record.subset_mask, expected):
        raise RecordError(path, f"subset_mask is not the subset of seed {record.seed} (ratio {meta['ratio']}, salt "
                                f"{meta['salt']}, size_rule {rule.size_rule}, repeats {rule.repeats}); rerun that seed")


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
    return _on_soft_grid(clipped, PROXY_GRID.get(name, DEFAULT_PROXY_GRID))


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
    epoch_list: np.ndarray  # int64 (E,): the epochs every run recorded; E = 0 when none
    epoch_hard_in: np.ndarray  # float64 (E, n): sums of the epoch's C over runs with i in; epoch_hard_all: all runs
    epoch_hard_all: np.ndarray
    proxy_sums: dict[str, np.ndarray]  # record score every run has -> float64 (2, n): rows IN and ALL, on PROXY_GRID
    group_sums: np.ndarray  # uint32 (RELIABILITY_GROUPS, 3, n): the counts of each seed group (module constants)
    seeds: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    train_in_acc: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    identical_duplicates: list[str] = field(default_factory=list)  # copies of a seed skipped as identical
    files: list[RecordFile] = field(default_factory=list)  # set by load_sweep, for the stats cache
    excluded_seeds: list[int] = field(default_factory=list)  # seeds load_sweep was asked to leave out, sorted

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
            group_sums=np.zeros((RELIABILITY_GROUPS, 3, n), dtype=np.uint32),
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
        self._keep_common_layout(record)
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
            rows = np.searchsorted(record.epoch_list, self.epoch_list)
            self.epoch_hard_in += record.epoch_train_correct[rows] & mask
            self.epoch_hard_all += record.epoch_train_correct[rows]
        for name in self.proxy_sums:
            on_grid = _proxy_on_grid(name, record.proxies[name])
            self.proxy_sums[name][IN] += np.where(mask, on_grid, 0.0)
            self.proxy_sums[name][ALL] += on_grid
        group = self.group_sums[record.seed % RELIABILITY_GROUPS]
        group[GROUP_N_IN] += mask
        group[GROUP_HARD_IN] += correct & mask
        group[GROUP_HARD_ALL] += correct
        if self.seeds and record.seed < int(self.meta["seed"]):
            self.meta = dict(record.meta)
            self.extras = {key: np.asarray(values).copy() for key, values in record.extras.items()}
        self.packed_masks.append(np.packbits(mask))
        self.test_correct.append(record.test_correct)
        self.seeds.append(record.seed)
        self.test_acc.append(float(record.test_correct.mean()))
        self.train_in_acc.append(float(correct[mask].mean()))
        self.paths.append(str(path))

    def _keep_common_layout(self, record: Record) -> None:
        """Per-epoch results and record scores are kept where every run has them (module docstring)."""
        common = np.intersect1d(self.epoch_list, record.epoch_list)
        if common.size < self.epoch_list.size:
            rows = np.searchsorted(self.epoch_list, common)
            self.epoch_list = common
            self.epoch_hard_in, self.epoch_hard_all = self.epoch_hard_in[rows], self.epoch_hard_all[rows]
        for name in set(self.proxy_sums) - set(record.proxies):
            del self.proxy_sums[name]

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
