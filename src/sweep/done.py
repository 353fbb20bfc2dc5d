"""The one rule that says whether a seed is done, used by the launcher's pre-flight and by every job.

A seed is done when its record (`<sweep>/seed=<k>/record.npz`) is readable, belongs to the same experiment
(identity: src/contracts/identity.py; records written before identity 2 are recognised by the config they
store) and holds at least what the config asks: every epoch of `record.epochs` among its recorded epochs,
every record score of `record.scores` among its scores, and `model.pt` beside it when `record.save_model`.
With `overwrite=true` nothing is done. A readable record of another experiment is refused (unless
overwrite=true): the sweep would mix two experiments. So is a record whose seed is not its directory's
(`seed=1/record.npz` holding seed 2's record, e.g. copied there by hand), unless overwrite=true: it is not this
seed's model, so the seed is not done, and retraining would replace a file that someone put there (perhaps
the only copy of seed 2's record); the message says where it belongs.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from src.contracts.identity import experiment_identity, identity_differences, identity_hash, record_experiment_hash
from src.contracts.records import RecordError, misplaced_reason, read_header
from src.errors import ConfigError

log = logging.getLogger(__name__)
MODEL_FILE = "model.pt"


class State(Enum):
    MISSING = "missing"
    DONE = "done"
    INCOMPLETE = "incomplete"  # of this experiment, but holds less than the config asks: trained again
    UNREADABLE = "unreadable"  # trained again, the file replaced
    FOREIGN = "foreign"  # another experiment's
    MISPLACED = "misplaced"  # another seed's record in this seed's directory


@dataclass(frozen=True)
class Wanted:
    """What a config asks of every record of its sweep."""

    experiment_hash: str
    identity: dict[str, Any]  # the canonical identity behind the hash, to say what differs
    epochs: frozenset[int]
    scores: frozenset[str]
    model_file: bool
    overwrite: bool

    @classmethod
    def of(cls, cfg: Any, data_fingerprint: str) -> Wanted:
        identity = experiment_identity(OmegaConf.to_container(cfg, resolve=True), data_fingerprint)
        return cls(identity_hash(identity), identity, frozenset(int(e) for e in cfg.record.epochs),
                   frozenset(str(name) for name in cfg.record.get("scores") or ()), bool(cfg.record.save_model),
                   bool(cfg.overwrite))


@dataclass(frozen=True)
class RecordState:
    state: State
    reason: str = ""
    meta: dict[str, Any] | None = None

    @property
    def trains(self) -> bool:
        """Whether the seed is (re)trained; a foreign record must have been refused before."""
        return self.state is not State.DONE


def record_state(path: Path, wanted: Wanted) -> RecordState:
    """The state of the record at `path` against what the config asks (module docstring)."""
    if not path.exists():
        return RecordState(State.MISSING)
    try:
        meta, scores_held = read_header(path)
    except RecordError as err:
        return RecordState(State.UNREADABLE, err.reason)
    if not isinstance(meta["seed"], int) or isinstance(meta["seed"], bool):
        return RecordState(State.UNREADABLE, f"its seed {meta['seed']!r} is not an integer")
    misplaced = misplaced_reason(path, meta["seed"])
    if misplaced is not None:
        return RecordState(State.MISPLACED, misplaced, meta)
    if record_experiment_hash(meta) != wanted.experiment_hash:
        return RecordState(State.FOREIGN, f"holds experiment {record_experiment_hash(meta)} "
                                          f"({meta.get('experiment_name')}), not {wanted.experiment_hash}"
                                          f"{what_differs(meta, wanted)}", meta)
    missing = sorted(wanted.epochs - set(meta.get("record_epochs") or []))
    if missing:
        return RecordState(State.INCOMPLETE, f"records no epochs {missing}", meta)
    scores = sorted(wanted.scores - scores_held)
    if scores:
        return RecordState(State.INCOMPLETE, f"holds no record scores {scores}", meta)
    if wanted.model_file and not (path.parent / MODEL_FILE).is_file():
        return RecordState(State.INCOMPLETE, f"has no {MODEL_FILE} (record.save_model=true)", meta)
    if wanted.overwrite:
        return RecordState(State.INCOMPLETE, "overwrite=true", meta)
    return RecordState(State.DONE, meta=meta)


def differences(meta: dict[str, Any], wanted: Wanted) -> list[str]:
    """`batch_size: 128 → 64`, ... (the record's value, then the config's); none when the record stores no
    config."""
    config = meta.get("config")
    if not isinstance(config, dict):
        return []
    return identity_differences(wanted.identity, experiment_identity(config, str(meta.get("data_fingerprint"))))


def what_differs(meta: dict[str, Any], wanted: Wanted) -> str:
    """`: batch_size: 128 → 64, ...`, or nothing when the record stores no config."""
    changes = differences(meta, wanted)
    return f": {', '.join(changes)}" if changes else ""


NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # what a name derived from a value drops (paths, Hydra syntax)


def free_name(sweep: Path, changes: list[str]) -> str:
    """A name that no directory beside `sweep` has: `<name>_<key><new value>` from the first change (e.g.
    `fz_mnist_max_epochs10`), else, or when that is taken, the first free `<name>_2`, `<name>_3`, ..."""
    base, candidates = sweep.name, []
    if changes:
        key, change = changes[0].split(": ", 1)
        value = NAME_UNSAFE.sub("", change.rsplit(" → ", 1)[-1])
        if value and value != "-":
            candidates.append(f"{base}_{NAME_UNSAFE.sub('', key.rsplit('.', 1)[-1])}{value}")
    numbered = (f"{base}_{k}" for k in itertools.count(2))
    return next(name for name in itertools.chain(candidates, numbered) if not (sweep.parent / name).exists())


PRECISION_KEY = "trainer.precision"


def precision_hint(changes: list[str]) -> str:
    """`, or trainer.precision=32-true to go on with this sweep ...` when the precision is all that changed (as
    when an fp32 sweep of trainer=gpu, whose default became bf16-mixed, is relaunched as it was launched)."""
    if len(changes) != 1 or not changes[0].startswith(f"{PRECISION_KEY}: "):
        return ""
    trained = changes[0].split(": ", 1)[1].split(" → ", 1)[0]
    return "" if trained == "-" else f", or {PRECISION_KEY}={trained} to go on with this sweep as it was trained"


def refuse_foreign(path: Path, state: RecordState, wanted: Wanted) -> None:
    """A record of another experiment, or of another seed than its directory's, stops the sweep unless
    overwrite=true; for another experiment the message proposes a free name."""
    if wanted.overwrite:
        return
    if state.state is State.FOREIGN:
        sweep = path.parent.parent  # <sweep>/seed=<k>/record.npz
        changes = differences(state.meta or {}, wanted)
        name = free_name(sweep, changes)
        raise ConfigError(f"{path} {state.reason}: choose another name, e.g. name={name} (free under "
                          f"{sweep.parent}){precision_hint(changes)}, or overwrite=true to replace it")
    if state.state is State.MISPLACED:
        raise ConfigError(f"{path} {state.reason}, then relaunch (or overwrite=true to retrain the seed over it)")
