"""The estimates contract between an estimator (reduce) and everything that reads estimates: src.compare,
src.report, src.evaluate, src.removal, src.dynamics, src.cscore, src.lastlayer, wandb logging.

An estimates directory (`<sweep>/estimates/` for the subsampled estimator, `<sweep>/turnover/seed=<k>/` for
turn-over dropout) holds `estimates.npz` (loads with allow_pickle=False), the only file readers read, and
files derived from it in one place (`write_estimates`): memorization.csv, pairs.csv, summary.json, plus the
estimator's own (gallery.png, influence.npy). Format 1 (`summary.estimates_format`); directories written before
the format existed read as format 0, their estimator taken from the summary.

| key | dtype, shape | meaning |
|---|---|---|
| `summary` | 0-d unicode | JSON object: SUMMARY_KEYS at least; `estimator` names the estimator; optional |
| | | `run_health` (estimates from records): {"unhealthy": [{"seed", "reasons", ...}], "excluded", ...} |
| `mem` | float (n_train,) | the memorization estimate; NaN: none for that example |
| `train_label`, `orig_label` | int (n_train,) | trained label (flipped where flipped), label before noise |
| `flipped` | bool (n_train,) | the label was flipped (dataset.label_noise) |
| `test_label` | int (n_test,) | |
| `seeds` | int (K,) | the runs the estimates come from |
| `mem_se`, `mem_soft`, `mem_soft_se`, `acc_in`, `acc_out` | float (n_train,) | optional per-example columns |
| `n_in`, `n_out` | int (n_train,) | optional: runs with the example in / out of the subset |
| `topk_idx`, `topk_infl` | int / float32 (n_test, k) | optional: top-k influencers per test example (-1 / NaN) |
| `pair_train_idx`, `pair_test_idx`, `pair_infl`, `pair_infl_se` | (P,) | optional: high-influence pairs, by infl |
| `test_acc`, `train_in_acc` | float (K,) | optional: per run |
| `mem_epoch`, `epoch_list` | float (E, n_train), int (E,) | optional: mem at the end of recorded epochs |
| `proxy_<name>` | float (n_train,) | optional: a record score's mean over in-subset runs |
| `extra_train_<c>`, `extra_test_<c>` | numeric | optional: per-example columns of the data set |
| `train_path` | unicode (n_train,) | optional: each training example's image file (image folders) |

In the CSV files a missing value (NaN) is an empty field and booleans are 0/1. `Estimates.fingerprint` hashes the
arrays (computed, not stored): analyses record it with `Estimates.provenance()` beside what they made.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from src.contracts.io import content_hash, load_error, write_files
from src.errors import ConfigError, MeminfError
from src.util.tables import csv_text, fmt

FORMAT_VERSION = 1
ESTIMATES_FILE = "estimates.npz"
SUMMARY_FILE = "summary.json"
GALLERY_FILE = "gallery.png"
DENSE_FILE = "influence.npy"
DEFAULT_DIR = "estimates"
# Every file write_estimates may write (besides the dense matrix): a rerun removes those it does not write again.
OUTPUT_FILES = (ESTIMATES_FILE, "memorization.csv", "pairs.csv", SUMMARY_FILE, GALLERY_FILE)
REQUIRED_ARRAYS = ("summary", "mem", "train_label", "orig_label", "flipped", "test_label", "seeds")
SUMMARY_KEYS = ("estimator", "dataset", "model", "experiment_name", "experiment_hash", "data_fingerprint",
                "n_train", "n_test", "num_classes", "ratio", "salt", "runs_used", "mean_test_acc",
                "mean_train_in_acc", "thresholds")
TRAIN_COLUMNS = ("mem", "mem_se", "mem_soft", "mem_soft_se", "n_in", "n_out", "acc_in", "acc_out")
PAIR_ARRAYS = ("pair_train_idx", "pair_test_idx", "pair_infl", "pair_infl_se")
MEM_FRACTION_THRESHOLDS = (0.25, 0.3)  # summary keys frac_mem_ge_<theta>
TRAIN_IN_ACC_WARNING = 0.99  # below this mean in-subset (own-half) accuracy the summary warns: underfitting
RUN_HEALTH = "run_health"  # optional summary key: the runs that did not train (src/estimators/subsample/health.py)
MAX_NAMED_RUNS = 5  # unhealthy runs named in one line; the rest counted
LEGACY_ESTIMATOR = "subsample"  # format 0 without an `estimator` key (turn-over dropout always wrote one)


@dataclass(frozen=True)
class Thresholds:
    """The paper's thresholds, the one set of defaults: memorized is mem >= theta_mem; a high-influence pair is
    infl >= theta_infl with a memorized training example of the test example's class; top_k influencers."""

    theta_mem: float = 0.25
    theta_infl: float = 0.15
    top_k: int = 5

    def validate(self) -> None:
        check_threshold("--theta-mem", self.theta_mem)
        check_threshold("--theta-infl", self.theta_infl)
        if self.top_k < 1:
            raise ConfigError(f"--top-k {self.top_k} must be >= 1")


def check_threshold(option: str, value: float) -> None:
    """A threshold of mem or infl, which are differences of probabilities in [-1, 1]: it must lie in (0, 1]
    (a larger one selects nothing, a non-positive one everything that is not below chance)."""
    paper = "the paper's are 0.25 (mem) and 0.15 (infl)"
    if not np.isfinite(value):
        raise ConfigError(f"{option} {value:g} is not a finite number; give one in (0, 1] ({paper})")
    if not 0 < value <= 1:
        raise ConfigError(f"{option} {value:g} must lie in (0, 1]; {paper}")


class PendingFile(Protocol):
    """A large output still in a temp file (the dense influence matrix): moved into place or discarded."""

    def commit(self, path: Path) -> None: ...

    def discard(self) -> None: ...


@dataclass
class Estimates:
    """What an estimator hands to every reader (module docstring)."""

    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]  # every key of the table but `summary`
    dense: PendingFile | None = None
    path: Path | None = None  # the directory it was read from

    @property
    def estimator(self) -> str:
        return str(self.summary["estimator"])

    @property
    def n_train(self) -> int:
        return int(self.summary["n_train"])

    @property
    def n_test(self) -> int:
        return int(self.summary["n_test"])

    @property
    def mem(self) -> np.ndarray:
        return self.arrays["mem"]

    @property
    def thresholds(self) -> Thresholds:
        values = self.summary.get("thresholds") or {}
        return Thresholds(**{key: values[key] for key in ("theta_mem", "theta_infl", "top_k") if key in values})

    def has(self, *keys: str) -> bool:
        return all(key in self.arrays for key in keys)

    @property
    def fingerprint(self) -> str:
        """Hash of every array (names, dtypes, shapes, bytes; the summary aside): equal iff the estimates are, the
        same as written and as read back. Analyses record it so that a page embedding them can check that they
        were made from the estimates it shows."""
        names = sorted(self.arrays)
        return content_hash([np.array(names), *(self.arrays[name] for name in names)])

    def provenance(self) -> dict[str, Any]:
        """What an analysis records about the estimates it was made from."""
        summary = self.summary
        return {"estimates_dir": None if self.path is None else str(self.path),
                **{key: summary.get(key) for key in ("experiment_name", "experiment_hash", "estimator", "runs_used")},
                "estimates_fingerprint": self.fingerprint}

    def require(self, keys: Iterable[str], why: str) -> None:
        missing = [key for key in keys if key not in self.arrays]
        if missing:
            raise MeminfError(f"{self.path or 'the estimates'} (estimator {self.estimator}) hold no "
                              f"{', '.join(missing)}, which {why} needs; rerun python -m src.estimate")

    def most_memorized(self, count: int, least: bool = False) -> np.ndarray:
        """Indices of the `count` largest (or smallest) mem values (NaN left out), in that order; ties (common:
        mem is a difference of counts) by mem_soft, then by index."""
        sign = -1.0 if least else 1.0
        soft = self.arrays.get("mem_soft", np.zeros(self.n_train))
        return most_memorized(sign * self.mem, sign * soft, count)


def most_memorized(mem: np.ndarray, mem_soft: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest mem values (NaN left out), descending; ties by mem_soft, then by index."""
    candidates = np.flatnonzero(~np.isnan(mem))
    soft = np.nan_to_num(mem_soft[candidates], nan=-np.inf)
    return candidates[np.lexsort((candidates, -soft, -mem[candidates]))][:count]


# ----------------------------------------------------------------------------------------------- writing

def memorization_columns(est: Estimates) -> dict[str, np.ndarray]:
    arrays = est.arrays
    columns = {"index": np.arange(est.n_train), "label": arrays["train_label"], "orig_label": arrays["orig_label"],
               "flipped": arrays["flipped"]}
    if "train_path" in arrays:
        columns["path"] = arrays["train_path"]
    columns.update({name: arrays[name] for name in TRAIN_COLUMNS if name in arrays})
    columns.update({key.removeprefix("extra_"): values for key, values in arrays.items()
                    if key.startswith("extra_train_")})
    columns.update({key: values for key, values in arrays.items() if key.startswith("proxy_")})
    return columns


def pairs_columns(est: Estimates) -> dict[str, np.ndarray]:
    arrays = est.arrays
    train_idx, test_idx = arrays["pair_train_idx"], arrays["pair_test_idx"]
    return {"test_index": test_idx, "train_index": train_idx, "label": arrays["test_label"][test_idx],
            "infl": arrays["pair_infl"], "infl_se": arrays["pair_infl_se"], "mem": arrays["mem"][train_idx],
            "influencers_of_test": np.bincount(test_idx, minlength=est.n_test)[test_idx]}


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def write_estimates(out_dir: str | Path, est: Estimates, extra_files: Mapping[str, bytes] | None = None) -> list[Path]:
    """Validate, serialise everything in memory, then write each file atomically; the pending dense matrix is
    moved into place (a stale one from an earlier run is removed). Returns the written paths."""
    out_dir = Path(out_dir)
    summary = {**est.summary, "estimates_format": FORMAT_VERSION}
    validate(Estimates(summary, est.arrays), out_dir)
    payloads = {ESTIMATES_FILE: _npz_bytes({**est.arrays, "summary": np.array(json.dumps(summary, allow_nan=False))}),
                "memorization.csv": csv_text(memorization_columns(est)).encode()}
    if est.has(*PAIR_ARRAYS):
        payloads["pairs.csv"] = csv_text(pairs_columns(est)).encode()
    payloads[SUMMARY_FILE] = (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode()
    payloads.update(extra_files or {})
    written = write_files(out_dir, payloads, OUTPUT_FILES)
    dense_path = out_dir / DENSE_FILE
    if est.dense is not None:
        est.dense.commit(dense_path)
        est.dense = None
        written.append(dense_path)
    else:
        dense_path.unlink(missing_ok=True)  # a stale matrix from an earlier run would not match
    return written


# ----------------------------------------------------------------------------------------------- reading

def estimates_dir(path: str | Path) -> Path:
    """The directory holding estimates.npz: `path` itself (or its parent when it is the file), or
    `path`/estimates (a sweep directory)."""
    path = Path(path)
    if path.is_file() and path.name == ESTIMATES_FILE:
        return path.parent
    for candidate in (path, path / DEFAULT_DIR):
        if (candidate / ESTIMATES_FILE).is_file():
            return candidate
    raise MeminfError(f"no {ESTIMATES_FILE} in {path} or {path / DEFAULT_DIR}; run python -m src.estimate "
                      "<sweep dir> first")


def read_estimates(path: str | Path, need: Iterable[str] = (), why: str = "this command") -> Estimates:
    """Read and validate the estimates in `path` (an estimates dir, its estimates.npz, or a sweep dir holding
    estimates/); `need` are optional arrays the caller requires. Any problem is one MeminfError line."""
    directory = estimates_dir(path)
    npz = directory / ESTIMATES_FILE
    try:
        with np.load(npz, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as err:
        raise MeminfError(f"{npz}: unreadable ({load_error(err)}); rerun python -m src.estimate") from err
    missing = [key for key in REQUIRED_ARRAYS if key not in arrays]
    if missing:
        raise MeminfError(f"{npz}: missing arrays {', '.join(missing)}; rerun python -m src.estimate")
    summary = _summary(arrays.pop("summary"), npz)
    est = Estimates(summary, arrays, path=directory)
    validate(est, npz)
    est.require(need, why)
    return est


def _summary(array: np.ndarray, npz: Path) -> dict[str, Any]:
    try:
        summary = json.loads(str(array[()])) if array.ndim == 0 else None
    except ValueError as err:
        raise MeminfError(f"{npz}: unreadable summary ({err}); rerun python -m src.estimate") from err
    if not isinstance(summary, dict):
        raise MeminfError(f"{npz}: the summary is not a JSON object; rerun python -m src.estimate")
    summary.setdefault("estimator", LEGACY_ESTIMATOR)
    summary.setdefault("estimates_format", 0)
    return summary


def unhealthy_runs(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The unhealthy runs of the sweep an estimate was made from ([] when all are healthy or none was checked)."""
    health = summary.get(RUN_HEALTH)
    return list(health["unhealthy"]) if isinstance(health, dict) else []


def health_line(summary: Mapping[str, Any]) -> str | None:
    """One line naming the unhealthy runs behind an estimate and whether it used them; None when there are none."""
    runs = unhealthy_runs(summary)
    if not runs:
        return None
    health = summary[RUN_HEALTH]
    named = "; ".join(f"seed {run['seed']}: {', '.join(run['reasons'])}" for run in runs[:MAX_NAMED_RUNS])
    more = f"; +{len(runs) - MAX_NAMED_RUNS} more" if len(runs) > MAX_NAMED_RUNS else ""
    use = ("left out (--exclude-unhealthy)" if health["excluded"] else
           "used in the estimate (--exclude-unhealthy leaves them out)")
    return f"{len(runs)} of {health['runs_checked']} runs unhealthy ({named}{more}); {use}"


def effect_line(summary: Mapping[str, Any]) -> str | None:
    """`left out 1 unhealthy run(s): runs used 16 -> 15, ...`, or None when no run was left out."""
    effect = (summary.get(RUN_HEALTH) or {}).get("exclusion_effect")
    if not effect:
        return None
    runs, memorized, mean_mem = effect["runs_used"], effect["memorized"], effect["mean_mem"]
    shown = [fmt(value, ".4f") for value in mean_mem]
    return (f"left out {runs[0] - runs[1]} unhealthy run(s): runs used {runs[0]} -> {runs[1]}, memorized "
            f"{memorized[0]} -> {memorized[1]}, mean mem {shown[0]} -> {shown[1]}")


def health_lines(summary: Mapping[str, Any]) -> list[str]:
    """The printed lines on unhealthy runs: which (a warning), and what leaving them out changed."""
    unhealthy, effect = health_line(summary), effect_line(summary)
    return ([f"warning: {unhealthy}"] if unhealthy else []) + ([effect] if effect else [])


def _check_health(summary: Mapping[str, Any], where: Path) -> None:
    health = summary.get(RUN_HEALTH)
    if health is None:
        return
    runs = health.get("unhealthy") if isinstance(health, dict) else None
    _check(isinstance(runs, list) and isinstance(health.get("excluded"), bool)
           and isinstance(health.get("runs_checked"), int)
           and all(isinstance(run, dict) and isinstance(run.get("seed"), int) and isinstance(run.get("reasons"), list)
                   for run in runs), where, f"the summary has a malformed {RUN_HEALTH}")


def _check(ok: bool, where: Path, message: str) -> None:
    if not ok:
        raise MeminfError(f"{where}: {message}; rerun python -m src.estimate")


def validate(est: Estimates, where: Path) -> None:
    """Summary keys, and the shape and dtype of every array of the table that is present."""
    summary, arrays = est.summary, est.arrays
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    _check(not missing, where, f"the summary lacks {', '.join(missing)}")
    n_train, n_test = summary["n_train"], summary["n_test"]
    _check(isinstance(n_train, int) and isinstance(n_test, int) and n_train > 0 and n_test > 0, where,
           f"n_train {n_train!r} and n_test {n_test!r} must be positive integers")
    _check(isinstance(summary["runs_used"], int) and isinstance(summary["thresholds"], dict), where,
           "the summary has a malformed runs_used or thresholds value")
    _check_health(summary, where)
    shapes = {"mem": (n_train,), "train_label": (n_train,), "orig_label": (n_train,), "flipped": (n_train,),
              "test_label": (n_test,), **{name: (n_train,) for name in TRAIN_COLUMNS}}
    for key, shape in shapes.items():
        if key in arrays:
            _check(arrays[key].shape == shape and arrays[key].dtype.kind in "biuf", where,
                   f"'{key}' has dtype {arrays[key].dtype} shape {arrays[key].shape}, expected numbers {shape}")
    _check(arrays["mem"].dtype.kind == "f", where, "'mem' must hold floats")
    for key in ("seeds", "pair_train_idx", "pair_test_idx"):
        if key in arrays:
            _check(arrays[key].ndim == 1 and arrays[key].dtype.kind in "iu", where, f"'{key}' must be 1-d integers")
    if est.has("pair_train_idx", "pair_test_idx"):
        train_idx, test_idx = arrays["pair_train_idx"], arrays["pair_test_idx"]
        _check(train_idx.shape == test_idx.shape, where, "pair_train_idx and pair_test_idx differ in length")
        _check(not train_idx.size or (train_idx.min() >= 0 and train_idx.max() < n_train and test_idx.min() >= 0
                                      and test_idx.max() < n_test), where, "pair indices outside the data")

