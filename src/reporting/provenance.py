"""What the analyses a report embeds were made from, checked against the estimates the page shows.

A comparison (compare.json) names the estimates of each input, a removal experiment (removal_source.json) the
estimates it selected from: their experiment hash, estimator, runs used and fingerprint (`Estimates.fingerprint`).
- Made from these very estimates (same fingerprint): embedded as they are.
- Of another experiment or estimator (a comparison none of whose inputs is this sweep, a removal of another
  sweep): refused in one line, since the section would describe another experiment under this one's title.
- Of other estimates of this experiment (an earlier estimate, e.g. 64 runs where the page shows 256): embedded
  with a one-line warning naming both run counts, on the page and on the console. The analysis is still one of
  this recipe (a removal retrained many models, worth keeping), but its selections or numbers come from those
  estimates; rerunning it on these makes the warning go.
- Written before the analysis recorded its source (no fingerprint): embedded with a one-line warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.analyses.removal_table import REMOVAL_SOURCE, read_removal_source
from src.contracts.estimates import Estimates
from src.errors import MeminfError
from src.reporting.sections import read_compare


def _experiment(source: dict[str, Any]) -> str:
    return f"{source.get('experiment_name')} ({source.get('experiment_hash')}, estimator {source.get('estimator')})"


def _same_experiment(est: Estimates, source: dict[str, Any]) -> bool:
    return (source.get("experiment_hash"), source.get("estimator")) == (est.summary["experiment_hash"],
                                                                         est.estimator)


def compare_warning(est: Estimates, directory: Path) -> str | None:
    """None when the comparison in `directory` has these estimates as an input; a warning when it has other
    estimates of this experiment; a MeminfError when it has none of this experiment."""
    inputs = read_compare(directory)["inputs"]
    fingerprint = est.fingerprint  # a hash over every array: computed once
    if any(item["estimates_fingerprint"] == fingerprint for item in inputs):
        return None
    mine = [item for item in inputs if _same_experiment(est, item)]
    if not mine:
        found = "; ".join(f"{item['label']}: {_experiment(item)}" for item in inputs)
        raise MeminfError(f"the comparison in {directory} does not involve this page's estimates, of "
                          f"{_experiment(est.summary)}: its inputs are {found}; pass a python -m src.compare output "
                          f"that has {est.path} as an input")
    runs = ", ".join(f"{item['label']}: {item['runs']} runs" for item in mine)
    why = ("records no estimates fingerprint (an older src.compare), so it may use other estimates of this "
           "experiment" if all(item["estimates_fingerprint"] is None for item in mine)
           else "used other estimates of this experiment")
    return (f"the comparison in {directory} {why} ({runs}; this page: {est.summary['runs_used']} runs); rerun "
            f"python -m src.compare with {est.path}")


def removal_warning(est: Estimates, directory: Path) -> str | None:
    """None when the removal experiment in `directory` was made from these estimates; a warning when from other
    estimates of this experiment or from unrecorded ones; a MeminfError when from another experiment."""
    source = read_removal_source(directory)
    rerun = f"rerun python -m src.removal {est.path}"
    if source is None:
        return (f"the removal experiment in {directory} records no estimates it was made from (no {REMOVAL_SOURCE}: "
                f"an older src.removal), so they may not be this page's ({est.summary['runs_used']} runs); {rerun}")
    if not _same_experiment(est, source):
        raise MeminfError(f"the removal experiment in {directory} was made from estimates of {_experiment(source)}, "
                          f"not of this page's {_experiment(est.summary)}; pass the removal of this sweep "
                          f"(python -m src.removal {est.path})")
    if source["estimates_fingerprint"] == est.fingerprint:
        return None
    return (f"the removal experiment in {directory} selected from other estimates of this experiment "
            f"({source['runs_used']} runs; this page: {est.summary['runs_used']} runs); {rerun} to match")


def embedded_warnings(est: Estimates, compare_dir: Path | None, removal_dir: Path | None) -> dict[str, str]:
    """Per embedded section (its anchor: `compare`, `removal`), the warning about what it was made from;
    a MeminfError for an analysis that is not of this experiment (module docstring)."""
    checks = {"compare": (compare_dir, compare_warning), "removal": (removal_dir, removal_warning)}
    warnings = {}
    for anchor, (directory, check) in checks.items():
        warning = check(est, directory) if directory is not None else None
        if warning is not None:
            warnings[anchor] = warning
    return warnings
