"""The record contract between a training job (map) and the aggregator (reduce).

One record per trained subset model: `<sweep dir>/seed=<k>/record.npz`, a plain `.npz` archive that
loads with `allow_pickle=False`. Format version 2 holds (version 1, still read, is the same without the
optional arrays marked v2):

| key | dtype, shape | meaning |
|---|---|---|
| `meta` | 0-d unicode | JSON object, see `REQUIRED_META` |
| `subset_mask` | uint8, ceil(n_train/8) | `np.packbits` of the 0/1 subset membership |
| `train_label`, `test_label` | int16/int32, (n,) | the label trained/evaluated with (flipped where flipped) |
| `train_pred`, `test_pred` | int16/int32, (n,) | predicted class, no augmentation |
| `train_correct`, `test_correct` | uint8, ceil(n/8) | packed `pred == label` |
| `train_prob`, `test_prob` | float32, (n,) | softmax probability of `label` |
| `flipped_idx` | int64, (n_flipped,) | training indices whose label was flipped |
| `flipped_orig_label` | int16/int32, (n_flipped,) | their original labels |
| `extra_train_<name>`, `extra_test_<name>` | numeric, (n,) | optional per-example columns (e.g. subpopulation) |
| `epoch_list` | int32, (E,) | v2, optional (`record.epochs`): increasing 1-based epochs <= meta `epochs` |
| `epoch_train_correct`, `epoch_test_correct` | uint8, (E, ceil(n/8)) | v2, with `epoch_list`: row e packs |
| | | `pred == label` (no augmentation) at the end of epoch `epoch_list[e]` |
| `proxy_train_learn_speed` | float32, (n_train,) | v2, optional: fraction of the example's training steps |
| | | (all epochs, augmented batches) that predicted its trained label; NaN exactly outside the subset |
| `proxy_train_loss` | float32, (n_train,) | v2, optional: final cross-entropy of the trained label (>= 0) |
| `proxy_train_margin` | float32, (n_train,) | v2, optional: final logit of the trained label minus the |
| | | largest other logit (finite) |
| `proxy_train_cumulative_loss` | float32, (n_train,) | v2, optional (`record.scores`): the example's training loss |
| | | summed over its training steps (src/estimators/csl.py); NaN exactly outside the subset |
| `proxy_train_curvature` | float32, (n_train,) | v2, optional (`record.scores`): input-loss curvature averaged |
| | | over the epochs (src/estimators/curvature.py); NaN exactly outside the subset |

The `proxy_train_*` arrays are the record scores of src/estimators/base.py: PROXIES below holds each one's
validation rule; a new record score adds its row there (and its accumulator in its estimator's module).

Records are written atomically (src/contracts/io.py): a temp file named `record.npz.tmp.<host>.<pid>` in the
same directory, fsync, then `os.replace`. Readers only ever look at `record.npz`, so a killed writer leaves at
most a temp file that no reader picks up.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.identity import record_experiment_hash
from src.contracts.io import load_error, write_atomic
from src.errors import RecordError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 is version 2 without the optional epoch and proxy arrays
RECORD_NAME = "record.npz"
SEED_DIR_PREFIX = "seed="  # a seed's record is <sweep dir>/seed=<k>/record.npz
EXTRA_PREFIXES = ("extra_train_", "extra_test_")
PROXY_PREFIX = "proxy_train_"
EPOCH_KEYS = ("epoch_list", "epoch_train_correct", "epoch_test_correct")
# The proxies a record may hold: whether NaN marks exactly the examples outside the subset (else every value
# is finite), and the closed range of the finite values.
PROXIES: dict[str, tuple[bool, float, float]] = {
    "learn_speed": (True, 0.0, 1.0),
    "loss": (False, 0.0, np.inf),
    "margin": (False, -np.inf, np.inf),
    "cumulative_loss": (True, 0.0, np.inf),
    "curvature": (True, 0.0, np.inf),
}
REQUIRED_META = (
    "format_version", "dataset", "n_train", "n_test", "num_classes", "data_fingerprint", "model",
    "ratio", "salt", "epochs", "seed", "experiment_hash", "experiment_name", "test_acc", "train_in_acc",
    "versions", "git", "wall_time_s",
)
ARRAY_KEYS = (
    "subset_mask", "train_label", "train_pred", "train_correct", "train_prob",
    "test_label", "test_pred", "test_correct", "test_prob", "flipped_idx", "flipped_orig_label",
)
# What a damaged archive raises from np.load/zipfile (found by flipping every bit of a record,
# tests/test_damaged_records.py): CRC and header errors, unsupported "compression" or "encryption" flags,
# short reads, absurd sizes in a header.
ARCHIVE_ERRORS = (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
                  MemoryError, OverflowError)
# Tolerance for "the accuracy in meta equals the accuracy of the arrays" (float32 round trip).
ACC_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Record:
    """One trained subset model, evaluated on every training and test example."""

    meta: dict[str, Any]
    subset_mask: np.ndarray  # bool (n_train,)
    train_label: np.ndarray  # int64 (n_train,)
    train_pred: np.ndarray  # int64 (n_train,)
    train_prob: np.ndarray  # float32 (n_train,)
    test_label: np.ndarray  # int64 (n_test,)
    test_pred: np.ndarray  # int64 (n_test,)
    test_prob: np.ndarray  # float32 (n_test,)
    flipped_idx: np.ndarray  # int64 (n_flipped,)
    flipped_orig_label: np.ndarray  # int64 (n_flipped,)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # keys "train_<name>", "test_<name>"
    epoch_list: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # int64 (E,); E=0: none
    epoch_train_correct: np.ndarray | None = None  # bool (E, n_train), with epoch_list
    epoch_test_correct: np.ndarray | None = None  # bool (E, n_test)
    proxies: dict[str, np.ndarray] = field(default_factory=dict)  # name in PROXIES -> float32 (n_train,)

    @property
    def train_correct(self) -> np.ndarray:
        return self.train_pred == self.train_label

    @property
    def test_correct(self) -> np.ndarray:
        return self.test_pred == self.test_label

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])


def record_path(sweep_dir: str | Path, seed: int) -> Path:
    return Path(sweep_dir) / f"{SEED_DIR_PREFIX}{seed}" / RECORD_NAME


def directory_seed(path: str | Path) -> int | None:
    """The seed a record file's directory names (`.../seed=<k>/record.npz` -> k); None for any other directory."""
    name = Path(path).parent.name
    digits = name[len(SEED_DIR_PREFIX):] if name.startswith(SEED_DIR_PREFIX) else ""
    return int(digits) if digits.isdigit() else None


def misplaced_reason(path: str | Path, seed: int) -> str | None:
    """Why a record of `seed` does not belong at `path` (its directory names another seed), or None. A negative
    seed belongs in no directory (their names are digits): the record's own checks say what is wrong with it."""
    named = directory_seed(path)
    if named is None or named == seed or seed < 0:
        return None
    return (f"holds the record of seed {seed} in the directory of seed {named}; move it to "
            f"{SEED_DIR_PREFIX}{seed}/ or delete it")


def find_records(sweep_dir: str | Path) -> list[Path]:
    """Every `record.npz` under the directory, sorted; temp files are never matched."""
    return sorted(Path(sweep_dir).rglob(RECORD_NAME))


def experiment_metas(sweep_dir: str | Path, experiment_hash: str) -> Iterator[dict[str, Any]]:
    """The metadata of each readable record under the directory that belongs to the experiment (its identity-2
    hash), in path order; unreadable records are passed over (the aggregator names them)."""
    for path in find_records(sweep_dir):
        try:
            meta = read_meta(path)
        except RecordError:
            continue
        if record_experiment_hash(meta) == experiment_hash:
            yield meta


def _label_dtype(num_classes: int) -> type:
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


def record_arrays(record: Record) -> dict[str, np.ndarray]:
    """The archive members of a record, in their on-disk dtypes."""
    label_dtype = _label_dtype(int(record.meta["num_classes"]))
    arrays = {
        "meta": np.array(json.dumps(record.meta, sort_keys=True)),
        "subset_mask": np.packbits(record.subset_mask.astype(bool)),
        "flipped_idx": record.flipped_idx.astype(np.int64),
        "flipped_orig_label": record.flipped_orig_label.astype(label_dtype),
    }
    for split in ("train", "test"):
        label, pred = getattr(record, f"{split}_label"), getattr(record, f"{split}_pred")
        arrays[f"{split}_label"] = label.astype(label_dtype)
        arrays[f"{split}_pred"] = pred.astype(label_dtype)
        arrays[f"{split}_correct"] = np.packbits(pred == label)
        arrays[f"{split}_prob"] = getattr(record, f"{split}_prob").astype(np.float32)
    for name, values in record.extras.items():
        arrays[f"extra_{name}"] = np.asarray(values)
    if record.epoch_list.size:
        arrays["epoch_list"] = record.epoch_list.astype(np.int32)
        for split in ("train", "test"):
            arrays[f"epoch_{split}_correct"] = np.packbits(getattr(record, f"epoch_{split}_correct"), axis=1)
    for name, values in record.proxies.items():
        arrays[f"{PROXY_PREFIX}{name}"] = np.asarray(values, dtype=np.float32)
    return arrays


def write_record(path: str | Path, record: Record) -> Path:
    """Validate, then write atomically; a failed write (disk full, permissions) leaves no file behind."""
    validate_record(record, path)
    arrays = record_arrays(record)
    try:
        return write_atomic(path, lambda handle: np.savez(handle, **arrays))
    except OSError as err:
        raise RecordError(path, f"cannot write the record ({err.strerror or err}); free disk space or "
                                "fix permissions, then rerun this seed") from err


def _open_archive(path: Path) -> np.lib.npyio.NpzFile:
    try:
        archive = np.load(path, allow_pickle=False)
    except ARCHIVE_ERRORS as err:
        raise RecordError(path, f"not a readable .npz archive ({load_error(err)}); delete it and rerun that "
                                "seed") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise RecordError(path, "a single .npy array, not an .npz record; delete it and rerun that seed")
    return archive


def _parse_meta(archive: np.lib.npyio.NpzFile, path: Path) -> dict[str, Any]:
    if "meta" not in archive.files:
        raise RecordError(path, "no 'meta' member; not a meminf record")
    try:
        meta = json.loads(str(archive["meta"][()]))
    except (*ARCHIVE_ERRORS, KeyError, RecursionError) as err:
        raise RecordError(path, f"unreadable metadata ({type(err).__name__}: {err})") from err
    if not isinstance(meta, dict):
        raise RecordError(path, "metadata is not a JSON object")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise RecordError(path, f"format version {version!r}, this meminf reads {READABLE_VERSIONS}; "
                                "use the meminf version that wrote it")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise RecordError(path, f"metadata lacks {', '.join(missing)}")
    return meta


def read_meta(path: str | Path) -> dict[str, Any]:
    """Only the metadata of a record (cheap: the arrays are not read)."""
    return read_header(path)[0]


def read_header(path: str | Path) -> tuple[dict[str, Any], frozenset[str]]:
    """The metadata of a record and the names of the proxies (record scores) it holds, without its arrays."""
    path = Path(path)
    with _open_archive(path) as archive:
        scores = frozenset(key.removeprefix(PROXY_PREFIX) for key in archive.files if key.startswith(PROXY_PREFIX))
        return _parse_meta(archive, path), scores


def _unpack(bits: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if bits.dtype != np.uint8 or bits.shape != ((n + 7) // 8,):
        raise RecordError(path, f"'{key}' has dtype {bits.dtype} shape {bits.shape}, "
                                f"expected uint8 ({(n + 7) // 8},)")
    return np.unpackbits(bits, count=n).astype(bool)


def _unpack_rows(raw: dict[str, np.ndarray], key: str, rows: int, n: int, path: Path) -> np.ndarray:
    if key not in raw:
        raise RecordError(path, f"has epoch_list but no '{key}'; rerun that seed")
    bits = raw[key]
    if bits.dtype != np.uint8 or bits.shape != (rows, (n + 7) // 8):
        raise RecordError(path, f"'{key}' has dtype {bits.dtype} shape {bits.shape}, "
                                f"expected uint8 ({rows}, {(n + 7) // 8})")
    return np.unpackbits(bits, axis=1, count=n).astype(bool)


def _epoch_arrays(raw: dict[str, np.ndarray], n_train: int, n_test: int, path: Path) -> dict[str, Any]:
    """The per-epoch members of a record as Record fields (none when it has no `epoch_list`)."""
    if "epoch_list" not in raw:
        stray = [key for key in EPOCH_KEYS if key in raw]
        if stray:
            raise RecordError(path, f"has {', '.join(stray)} but no epoch_list; rerun that seed")
        return {}
    epochs = _ints(raw, "epoch_list", path)
    return {"epoch_list": epochs,
            "epoch_train_correct": _unpack_rows(raw, "epoch_train_correct", epochs.size, n_train, path),
            "epoch_test_correct": _unpack_rows(raw, "epoch_test_correct", epochs.size, n_test, path)}


def read_record(path: str | Path) -> Record:
    """Read and validate one record; any problem raises RecordError naming the file and the reason."""
    path = Path(path)
    with _open_archive(path) as archive:
        meta = _parse_meta(archive, path)
        missing = [key for key in ARRAY_KEYS if key not in archive.files]
        if missing:
            raise RecordError(path, f"missing arrays {', '.join(missing)}")
        try:
            raw = {key: archive[key] for key in archive.files if key != "meta"}
        except ARCHIVE_ERRORS as err:
            raise RecordError(path, f"truncated or damaged array data ({type(err).__name__}: {err})") from err
    n_train, n_test, _ = _meta_counts(meta, path)
    record = Record(
        meta=meta,
        subset_mask=_unpack(raw["subset_mask"], n_train, path, "subset_mask"),
        train_label=_ints(raw, "train_label", path), train_pred=_ints(raw, "train_pred", path),
        train_prob=raw["train_prob"],
        test_label=_ints(raw, "test_label", path), test_pred=_ints(raw, "test_pred", path),
        test_prob=raw["test_prob"],
        flipped_idx=_ints(raw, "flipped_idx", path),
        flipped_orig_label=_ints(raw, "flipped_orig_label", path),
        extras={key.removeprefix("extra_"): value for key, value in raw.items()
                if key.startswith(EXTRA_PREFIXES)},
        proxies={key.removeprefix(PROXY_PREFIX): value for key, value in raw.items() if key.startswith(PROXY_PREFIX)},
        **_epoch_arrays(raw, n_train, n_test, path),
    )
    validate_record(record, path)
    for split, n in (("train", n_train), ("test", n_test)):
        stored_correct = _unpack(raw[f"{split}_correct"], n, path, f"{split}_correct")
        if not np.array_equal(stored_correct, getattr(record, f"{split}_correct")):
            raise RecordError(path, f"'{split}_correct' disagrees with {split}_pred == {split}_label")
    return record


def _ints(raw: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    values = raw[key]
    if values.dtype.kind not in "iu" or values.ndim != 1:
        raise RecordError(path, f"'{key}' has dtype {values.dtype} shape {values.shape}, expected 1-d integers")
    return values.astype(np.int64)


def _meta_counts(meta: dict[str, Any], path: str | Path) -> tuple[int, int, int]:
    try:
        counts = int(meta["n_train"]), int(meta["n_test"]), int(meta["num_classes"])
        int(meta["seed"]), float(meta["ratio"]), float(meta["test_acc"]), float(meta["train_in_acc"])
    except (TypeError, ValueError, OverflowError) as err:
        raise RecordError(path, f"metadata has a non-numeric count, seed, ratio or accuracy ({err})") from err
    if min(counts) < 1:
        raise RecordError(path, f"n_train, n_test and num_classes must be positive, got {counts}")
    return counts


def _check_accuracy(meta: dict[str, Any], key: str, correct: np.ndarray, path: str | Path) -> None:
    if not abs(float(meta[key]) - float(correct.mean())) <= ACC_TOLERANCE:  # NaN fails too
        raise RecordError(path, f"meta {key}={meta[key]} disagrees with the stored predictions")


def validate_record(record: Record, path: str | Path = "<record>") -> None:
    """Shapes, dtypes and value ranges of a record against its own metadata."""
    n_train, n_test, classes = _meta_counts(record.meta, path)
    expected = {
        "subset_mask": n_train, "train_label": n_train, "train_pred": n_train, "train_prob": n_train,
        "test_label": n_test, "test_pred": n_test, "test_prob": n_test,
    }
    for key, n in expected.items():
        shape = getattr(record, key).shape
        if shape != (n,):
            raise RecordError(path, f"'{key}' has shape {shape}, expected ({n},)")
    for key in ("train_label", "train_pred", "test_label", "test_pred", "flipped_orig_label"):
        values = getattr(record, key)
        if values.size and (values.min() < 0 or values.max() >= classes):
            raise RecordError(path, f"'{key}' has values outside [0, {classes})")
    for key in ("train_prob", "test_prob"):
        values = getattr(record, key)
        if values.dtype.kind != "f" or not np.all((values >= 0) & (values <= 1)):
            raise RecordError(path, f"'{key}' must be float probabilities in [0, 1] (found NaN or out of range)")
    _validate_flips(record, n_train, path)
    _validate_extras(record, n_train, n_test, path)
    _validate_epochs(record, n_train, n_test, path)
    _validate_proxies(record, n_train, path)
    if not record.subset_mask.any():
        raise RecordError(path, "empty subset mask")
    _check_accuracy(record.meta, "test_acc", record.test_correct, path)
    _check_accuracy(record.meta, "train_in_acc", record.train_correct[record.subset_mask], path)


def _validate_extras(record: Record, n_train: int, n_test: int, path: str | Path) -> None:
    for name, values in record.extras.items():
        values = np.asarray(values)
        if not name.startswith(("train_", "test_")):
            raise RecordError(path, f"extra '{name}' must be named train_<column> or test_<column>")
        if values.dtype.kind not in "biuf":
            raise RecordError(path, f"extra '{name}' has dtype {values.dtype}; extras are numeric columns")
        n = n_train if name.startswith("train_") else n_test
        if values.shape != (n,):
            raise RecordError(path, f"extra '{name}' has shape {values.shape}, expected ({n},)")


def _validate_epochs(record: Record, n_train: int, n_test: int, path: str | Path) -> None:
    epochs = np.asarray(record.epoch_list)
    if epochs.dtype.kind not in "iu" or epochs.ndim != 1:
        raise RecordError(path, f"'epoch_list' has dtype {epochs.dtype} shape {epochs.shape}, expected 1-d integers")
    if not epochs.size:
        if record.epoch_train_correct is not None or record.epoch_test_correct is not None:
            raise RecordError(path, "per-epoch correctness without an epoch_list")
        return
    max_epochs = int(record.meta["epochs"])
    if epochs.min() < 1 or epochs.max() > max_epochs or np.any(np.diff(epochs) <= 0):
        raise RecordError(path, f"epoch_list {epochs.tolist()} must increase strictly within 1..{max_epochs}")
    for split, n in (("train", n_train), ("test", n_test)):
        correct = getattr(record, f"epoch_{split}_correct")
        if correct is None or correct.dtype != bool or correct.shape != (epochs.size, n):
            shape = None if correct is None else (correct.dtype, correct.shape)
            raise RecordError(path, f"'epoch_{split}_correct' is {shape}, expected bool ({epochs.size}, {n})")


def _validate_proxies(record: Record, n_train: int, path: str | Path) -> None:
    for name, values in record.proxies.items():
        if name not in PROXIES:
            raise RecordError(path, f"unknown proxy '{name}'; known: {', '.join(PROXIES)}")
        values = np.asarray(values)
        if values.dtype != np.float32 or values.shape != (n_train,):
            raise RecordError(path, f"proxy '{name}' has dtype {values.dtype} shape {values.shape}, "
                                    f"expected float32 ({n_train},)")
        nan_outside, low, high = PROXIES[name]
        defined = record.subset_mask if nan_outside else np.ones(n_train, dtype=bool)
        if not np.array_equal(~np.isnan(values), defined):
            where = "exactly outside the subset" if nan_outside else "nowhere"
            raise RecordError(path, f"proxy '{name}' must be NaN {where}")
        finite = values[defined]
        if not (np.all(np.isfinite(finite)) and np.all((finite >= low) & (finite <= high))):
            raise RecordError(path, f"proxy '{name}' has values outside [{low}, {high}]")


def _validate_flips(record: Record, n_train: int, path: str | Path) -> None:
    flipped, orig = record.flipped_idx, record.flipped_orig_label
    if flipped.shape != orig.shape:
        raise RecordError(path, "flipped_idx and flipped_orig_label differ in length")
    if flipped.size and (flipped.min() < 0 or flipped.max() >= n_train or np.unique(flipped).size != flipped.size):
        raise RecordError(path, "flipped_idx must be distinct training indices")
    if np.any(record.train_label[flipped] == orig):
        raise RecordError(path, "a flipped example keeps its original label")
