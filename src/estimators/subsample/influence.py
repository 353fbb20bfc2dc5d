"""Influence over blocks of training examples: infl(i, j) = S(i,j)/n_in(i) - (Tsum(j) - S(i,j))/n_out(i), with
S = M^T T one matrix product per block; the top-k influencers, the high-influence pairs, the dense matrix
(influence.npy, when within --dense-cap-mb) and the pairs expected by chance, all in the same pass.

- High-influence pair: infl >= theta_infl and mem(train) >= theta_mem and trained train label == test label.
  NaN never passes a threshold.
- Top-k influencers of a test example: the k largest infl, ties to the lower train index (exact, so the
  result does not depend on --block-mb).
- Chance pairs: the rows of T are shuffled against M (`--null-perms` times, rng from `--seed`) and the pairs
  recounted with the real mem filter and classes; shuffling the mask rows instead is the same null
  (M^T T[s] = M[s^-1]^T T). Only rows with mem >= theta_mem can pair, so only those are recomputed.

Memory: blocks of training examples whose working set is at most about --block-mb, plus T as float32
(K x n_test x 4 bytes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from src.contracts.estimates import DENSE_FILE
from src.contracts.io import fsync_dir, tmp_path
from src.estimators.subsample.memorization import (
    EstimateConfig,
    Pairs,
    SubsampleEstimates,
    agresti_caffo_se,
    mean_difference,
    memorization,
)
from src.estimators.subsample.stats import SweepStats
from src.estimators.subsample.topk import TopK

# Bytes per training example in an influence block (peak of tracemalloc over block sizes, K and n_test):
# unpacking its mask column (uint8 gather and bits, float32: at most 6 K; 5.1 K measured), then S and infl
# (8 n_test, plus a cache-sized scratch), then infl and the top-k merge of a dense block (partition copy,
# then three bool masks and a uint16 rank: 4 + 6 + the candidates, at most k per column, 2.5 n_test for
# blocks of 16 k rows or more); 16 n_test leaves room (6-11 measured for blocks of 16 k rows or more).
MASK_BYTES_PER_RUN = 6
BLOCK_BYTES_PER_TEST = 16
MB = 2**20
INFLUENCE_CHUNK_ENTRIES = 2**17  # rows of a block post-processed together: 0.5 MB of float32, cache-sized


def _is_consecutive(cols: np.ndarray) -> bool:
    return len(cols) > 0 and int(cols[-1]) - int(cols[0]) == len(cols) - 1 and bool(np.all(np.diff(cols) == 1))


class _InfluenceBlocks:
    """Influence over blocks of training examples: unpack the block's mask columns, one matmul with T."""

    def __init__(self, stats: SweepStats, mem: np.ndarray, config: EstimateConfig,
                 runs: np.ndarray | None = None, n_in: np.ndarray | None = None) -> None:
        """All runs of the sweep, or only `runs` (bool over its runs) with their counts `n_in`."""
        self.packed = stats.packed_masks.array if runs is None else stats.packed_masks.array[runs]
        test_correct = stats.test_correct.array if runs is None else stats.test_correct.array[runs]
        self.test_correct = test_correct.astype(np.float32)
        self.test_sum = self.test_correct.sum(axis=0)  # float32 counts, exact below 2**24 runs
        self.n_in = (stats.n_in if n_in is None else n_in).astype(np.float32)
        self.n_out = np.float32(len(self.packed)) - self.n_in
        self.has_estimate = (self.n_in > 0) & (self.n_out > 0)
        self.mem, self.config = mem, config
        self.train_label, self.test_label = stats.train_label, stats.test_label
        row_bytes = MASK_BYTES_PER_RUN * len(self.packed) + BLOCK_BYTES_PER_TEST * stats.n_test
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
        (faster than whole-block passes: benchmarks/aggregate.py, docs/PERFORMANCE.md)."""
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
        dense = cls(tmp_path(directory / DENSE_FILE), created_dir)
        return dense, np.lib.format.open_memmap(dense.tmp, mode="w+", dtype=np.float32, shape=shape)

    def commit(self, path: Path) -> None:
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, path)
        fsync_dir(path.parent)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)
        if self.created_dir:
            with contextlib.suppress(OSError):  # not empty: something else was written there
                self.tmp.parent.rmdir()


def _influence_block(blocks: _InfluenceBlocks, cols: np.ndarray, topk: TopK,
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
    topk = TopK(config.top_k, stats.n_test)
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
             progress: Callable[[int, int], None] | None = None) -> SubsampleEstimates:
    """All estimates of a sweep. With `dense_dir`, the influence matrix (when within the cap) is filled in a
    temp file there, which writing the estimates moves to influence.npy (`discard_dense` removes it).
    `progress(done, n_train)` is called after each block of training examples."""
    config = config or EstimateConfig()
    config.validate()
    mem = memorization(stats)
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
    return SubsampleEstimates(config=config, **mem, topk_idx=topk_idx, topk_infl=topk_infl, pairs=pairs,
                     null_pair_counts=null_counts, dense=dense, has_dense=dense is not None)


def pair_keys_of_runs(stats: SweepStats, config: EstimateConfig, runs: np.ndarray, mem: np.ndarray,
                      n_in: np.ndarray) -> np.ndarray:
    """The high-influence pairs (train * n_test + test) of the runs `runs` (bool over the sweep's runs), whose mem
    and counts n_in are given: what a sweep of those runs alone finds, by the same blocks and float32 operations.
    Only memorized training examples can pair, so only their columns are multiplied."""
    blocks = _InfluenceBlocks(stats, mem, config, runs, n_in)
    keys = [_NO_INDEX]
    for cols in blocks.chunks(np.flatnonzero(mem >= config.theta_mem)):
        keys.append(_block_pair_keys(blocks, cols))
    return np.concatenate(keys)


def _block_pair_keys(blocks: _InfluenceBlocks, cols: np.ndarray) -> np.ndarray:
    s_in = blocks.product(cols)
    _, pair_flat, _ = blocks.influence(cols, s_in)
    rows, test_idx = blocks.pairs(cols, pair_flat, s_in.shape[1])
    return cols[rows].astype(np.int64) * s_in.shape[1] + test_idx


def pair_influence(stats: SweepStats, train_idx: np.ndarray,
                   test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """infl and its Agresti-Caffo SE for chosen (train, test) pairs, computed directly."""
    train_idx, test_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
    blocks = _InfluenceBlocks(stats, np.zeros(stats.n_train), EstimateConfig())
    s_in = np.einsum("kp,kp->p", blocks.unpack(train_idx), blocks.test_correct[:, test_idx])
    s_out = blocks.test_sum[test_idx] - s_in
    n_in, n_out = blocks.n_in[train_idx], blocks.n_out[train_idx]
    return mean_difference(s_in, n_in, s_out, n_out), agresti_caffo_se(s_in, n_in, s_out, n_out)
