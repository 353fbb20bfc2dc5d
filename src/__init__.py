"""meminf: memorization and influence estimates from seeded subset-training sweeps.

Notebook API (numpy only; importing it does not import torch):

    from src import load_sweep, estimate, read_record
    stats, problems = load_sweep("outputs/fz_mnist")
    est = estimate(stats)          # est.mem, est.mem_se, est.topk_idx, est.pairs, ...
"""

from __future__ import annotations

from typing import Any

_API = {
    "load_sweep": "src.estimate", "estimate": "src.estimate", "write_outputs": "src.estimate",
    "summarize": "src.estimate", "read_record": "src.records", "find_records": "src.records",
    "subset_indices": "src.subsets", "subset_mask": "src.subsets",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'src' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)
