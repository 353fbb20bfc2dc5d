"""Running top-k training examples per test example over blocks of increasing training index (exact: the
result does not depend on the block size). Used by both built-in estimators."""

from __future__ import annotations

import numpy as np

# A dense top-k block (no floors yet) starts with its first 64 k rows: one column-wise partition of the whole
# first block cost more than the block's matrix product (benchmarks/aggregate.py; docs/PERFORMANCE.md,
# aggregator section).
TOPK_PREFIX_ROWS_PER_K = 64


class TopK:
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
