"""Every estimator and record score by name. Entries are imported when asked for, so that a command that
only reduces records never imports an estimator that trains with Lightning (turnover)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from src.errors import ConfigError
from src.estimators.base import Estimator, RecordScore

ESTIMATORS = {
    "subsample": "src.estimators.subsample.estimator:SubsampleEstimator",
    "turnover": "src.estimators.turnover.estimator:TurnoverEstimator",
    "learn_speed": "src.estimators.record_scores:LearnSpeedEstimator",
    "loss": "src.estimators.record_scores:FinalLossEstimator",
    "margin": "src.estimators.record_scores:MarginEstimator",
    "cumulative_loss": "src.estimators.csl:CumulativeLossEstimator",
    "curvature": "src.estimators.curvature:CurvatureEstimator",
}
RECORD_SCORES = {
    "learn_speed": "src.estimators.proxies:LearnSpeed",
    "loss": "src.estimators.proxies:FinalLoss",
    "margin": "src.estimators.proxies:FinalMargin",
    "cumulative_loss": "src.estimators.csl:CumulativeLoss",
    "curvature": "src.estimators.curvature:InputCurvature",
}


def _load(entry: str) -> type:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def get_estimator(name: str) -> Estimator:
    if name not in ESTIMATORS:
        raise ConfigError(f"estimator={name} is unknown; use one of {', '.join(ESTIMATORS)}")
    return _load(ESTIMATORS[name])()


def record_scores(names: Iterable[str], settings: Mapping[str, Any] | None = None) -> list[RecordScore]:
    """New accumulators of the named record scores, in the order given; a score with settings (the `record`
    config's key of its name, e.g. `record.curvature`) gets them as keyword arguments."""
    names, settings = list(names), settings or {}
    unknown = [name for name in names if name not in RECORD_SCORES]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"record.scores={names} must name each of {', '.join(RECORD_SCORES)} at most once")
    return [_load(RECORD_SCORES[name])(**dict(settings.get(name) or {})) for name in names]
