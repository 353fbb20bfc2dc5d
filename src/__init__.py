"""meminf: memorization and influence estimates from seeded subset-training sweeps.

Notebook API (numpy only; importing it does not import torch):

    from src import load_sweep, estimate_sweep, read_record
    stats, problems = load_sweep("outputs/fz_mnist")
    est = estimate_sweep(stats)     # est.mem, est.mem_se, est.topk_idx, est.pairs, ...
    estimates = read_estimates("outputs/fz_mnist")   # what src.estimate wrote (any estimator)

`estimate` is the older name of `estimate_sweep`; in a process that also imported the module
`src.estimate` (the command line), `src.estimate` is that module, so use `estimate_sweep`.
"""

from __future__ import annotations

from typing import Any

_API = {
    "load_sweep": "src.estimators.subsample.load", "estimate_sweep": "src.estimators.subsample.influence",
    "estimate": "src.estimators.subsample.influence", "pair_influence": "src.estimators.subsample.influence",
    "summarize": "src.estimators.subsample.summary", "write_outputs": "src.estimators.subsample.estimator",
    "read_estimates": "src.contracts.estimates", "read_record": "src.contracts.records",
    "find_records": "src.contracts.records", "subset_indices": "src.data.subsets", "subset_mask": "src.data.subsets",
}
_NAMES = {"estimate_sweep": "estimate"}  # API name -> the function's name in its module
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'src' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), _NAMES.get(name, name))
