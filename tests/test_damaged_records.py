"""Fault injection: good records mixed with well over 100 damaged variants of a record.

Every damaged variant sits at a seed no good record has (1000 and up; 2000 and 2001 for the duplicate
seeds), so the good records alone are the reference: the aggregator must skip each damaged file with one
`skipped <file>: <reason>` line and no traceback, and its estimates must equal those of the good records
alone bit for bit; `--strict` makes the first problem fatal (exit 2, one `error:` line, nothing written).
The last part pins crafted zip and metadata fields that once escaped as other exceptions.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib import format as npy_format

from src.contracts.records import (
    ARRAY_KEYS,
    REQUIRED_META,
    Record,
    read_record,
    record_arrays,
    record_path,
    write_record,
)
from src.data.subsets import subset_mask
from src.errors import RecordError
from src.estimators.subsample.load import load_sweep
from tests.conftest import unprivileged
from tests.test_estimate import make_meta

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
K_GOOD, N_TRAIN, N_TEST, NUM_CLASSES, RATIO = 24, 203, 50, 7, 0.7  # 203: the packed bits have padding
FIRST_DAMAGED_SEED, DUPLICATE_SEEDS = 1000, (2000, 2001)
CLI_ARGS = ("--theta-mem", "0.1", "--theta-infl", "0.1", "--top-k", "4", "--null-perms", "2", "--gallery", "0")


def _mode_000_is_readable() -> bool:
    """True for root (or a process with CAP_DAC_OVERRIDE), which reads a file whatever its mode."""
    with tempfile.TemporaryDirectory() as directory:
        probe = Path(directory) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
        except PermissionError:
            return False
        return True


READS_ANY_MODE = os.geteuid() == 0 and _mode_000_is_readable()

_rng = np.random.default_rng(0)
TRAIN_LABEL = _rng.integers(0, NUM_CLASSES, N_TRAIN)
TEST_LABEL = _rng.integers(0, NUM_CLASSES, N_TEST)
P_IN, P_OUT = _rng.uniform(0.5, 1.0, N_TRAIN), _rng.uniform(0.0, 0.7, N_TRAIN)
FLIPPED_IDX = np.array([3, 50, 120])
FLIPPED_ORIG = (TRAIN_LABEL[FLIPPED_IDX] + 2) % NUM_CLASSES
INT_KEYS = ("train_label", "train_pred", "test_label", "test_pred", "flipped_idx", "flipped_orig_label")
PACKED_KEYS = ("subset_mask", "train_correct", "test_correct")
PROB_KEYS = ("train_prob", "test_prob")
Arrays = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------- records

def make_record(seed: int, mask: np.ndarray | None = None, train_label: np.ndarray = TRAIN_LABEL, draw: int = 1,
                **meta_overrides: Any) -> Record:
    """A valid record of the sweep for `seed` (its own subset and the sweep's labels unless given); `draw`
    picks the random correctness and probabilities (another training run of the same seed)."""
    rng = np.random.default_rng([seed, draw])
    if mask is None:
        mask = subset_mask(seed, N_TRAIN, meta_overrides.get("ratio", RATIO), meta_overrides.get("salt", 0))
    train_correct = rng.random(N_TRAIN) < np.where(mask, P_IN, P_OUT)
    test_correct = rng.random(N_TEST) < 0.6
    meta = make_meta(seed, N_TRAIN, N_TEST, NUM_CLASSES, RATIO)
    meta.update(test_acc=float(test_correct.mean()), train_in_acc=float(train_correct[mask].mean()),
                **meta_overrides)
    return Record(
        meta=meta, subset_mask=mask, train_label=train_label,
        train_pred=np.where(train_correct, train_label, (train_label + 1) % NUM_CLASSES),
        train_prob=rng.random(N_TRAIN, dtype=np.float32), test_label=TEST_LABEL,
        test_pred=np.where(test_correct, TEST_LABEL, (TEST_LABEL + 3) % NUM_CLASSES),
        test_prob=rng.random(N_TEST, dtype=np.float32), flipped_idx=FLIPPED_IDX, flipped_orig_label=FLIPPED_ORIG,
        extras={"train_subpop": np.arange(N_TRAIN) % 5, "test_subpop": np.arange(N_TEST) % 5},
    )


def npz_bytes(arrays: Arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # allow_pickle (the default) so that object members can be written too
    return buffer.getvalue()


def record_bytes(seed: int, edit: Callable[[Arrays], None] | None = None) -> bytes:
    """The archive of a valid record of `seed`, after `edit` changed its members in place."""
    arrays = record_arrays(make_record(seed))
    if edit is not None:
        edit(arrays)
    return npz_bytes(arrays)


def set_meta(**changes: Any) -> Callable[[Arrays], None]:
    def edit(arrays: Arrays) -> None:
        meta = json.loads(str(arrays["meta"][()]))
        meta.update(changes)
        arrays["meta"] = np.array(json.dumps(meta))
    return edit


def drop_meta(key: str) -> Callable[[Arrays], None]:
    def edit(arrays: Arrays) -> None:
        meta = json.loads(str(arrays["meta"][()]))
        del meta[key]
        arrays["meta"] = np.array(json.dumps(meta))
    return edit


def set_member(key: str, value: Callable[[np.ndarray], np.ndarray] | np.ndarray) -> Callable[[Arrays], None]:
    def edit(arrays: Arrays) -> None:
        arrays[key] = value(arrays[key]) if callable(value) else value
    return edit


def set_item(key: str, index: int, value: Any) -> Callable[[Arrays], None]:
    def edit(arrays: Arrays) -> None:
        arrays[key] = arrays[key].copy()
        arrays[key][index] = value
    return edit


def flip_bit(key: str, bit: int) -> Callable[[Arrays], None]:
    """Flip bit `bit` (MSB-first, as np.packbits) of a packed member."""
    def edit(arrays: Arrays) -> None:
        arrays[key] = arrays[key].copy()
        arrays[key][bit // 8] ^= np.uint8(0x80 >> (bit % 8))
    return edit


def member_data(data: bytes) -> dict[str, range]:
    """Byte ranges of each member's stored data (after its local header) in an uncompressed zip."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
    ranges = {}
    for info in infos:
        name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
        start = info.header_offset + 30 + name_len + extra_len
        ranges[info.filename] = range(start, start + info.compress_size)
    return ranges


# ------------------------------------------------------------------------------------------ variants

@dataclass(frozen=True)
class Variant:
    kind: str
    detail: str
    rel_path: str  # under the sweep dir
    data: bytes
    detected_by: str = "file"  # "file": read_record alone rejects it; "sweep": only the sweep can tell
    reason: str = ""  # text the skip reason must contain ("" where several reasons are right)
    form: str = "file"  # "file", or "dir": a directory named record.npz
    mode: int | None = None  # chmod after writing


class VariantBuilder:
    """Hands every variant its own seed, 1000 and up."""

    def __init__(self) -> None:
        self.variants: list[Variant] = []
        self._next_seed = FIRST_DAMAGED_SEED

    def add(self, kind: str, detail: str, make: Callable[[int], bytes], **fields: Any) -> None:
        seed, self._next_seed = self._next_seed, self._next_seed + 1
        self.variants.append(Variant(kind, detail, f"seed={seed}/record.npz", make(seed), **fields))

    def edited(self, kind: str, detail: str, edit: Callable[[Arrays], None], **fields: Any) -> None:
        self.add(kind, detail, lambda seed: record_bytes(seed, edit), **fields)

    def record(self, kind: str, detail: str, **record_args: Any) -> None:
        """A valid record of its own (for sweep-level variants), made by make_record(seed, **record_args)."""
        self.add(kind, detail, lambda seed: npz_bytes(record_arrays(make_record(seed, **record_args))),
                 detected_by="sweep", **{"reason": detail.split()[0]})


def build_variants() -> list[Variant]:
    b = VariantBuilder()
    rng = np.random.default_rng(1234)
    size = len(record_bytes(FIRST_DAMAGED_SEED))

    # Damaged bytes: truncations, empty and foreign files, single bit flips inside the members' data.
    # Truncations: from the start, from the end (negative: bytes cut off), and at fractions of the size.
    cuts = [1, 2, 8, 22, 29, 30, 31, 64, 100, 256, 1000, -200, -100, -23, -22, -21, -10, -2, -1,
            *(round(size * fraction) for fraction in (0.1, 0.25, 0.4, 0.5, 0.75, 0.9))]
    for cut in cuts:
        b.add("truncated", f"[:{cut}] of about {size} bytes", lambda seed, cut=cut: record_bytes(seed)[:cut])
    b.add("zero bytes", "empty file", lambda seed: b"")
    b.add("not an archive", "4096 random bytes", lambda seed: rng.bytes(4096))
    b.add("not an archive", "a zip signature, then zeros", lambda seed: b"PK\x03\x04" + bytes(500))
    b.add("not an archive", "JSON text", lambda seed: json.dumps({"seed": seed}).encode())

    def flipped(seed: int, member: str) -> bytes:
        data = bytearray(record_bytes(seed))
        data[int(rng.choice(member_data(bytes(data))[member]))] ^= 1 << int(rng.integers(8))
        return bytes(data)
    members = sorted(member_data(record_bytes(FIRST_DAMAGED_SEED)))
    for member in [*members, *rng.choice(members, 16)]:  # every member once, then 16 more anywhere
        b.add("bit flip in data", f"one bit of {member}", lambda seed, member=str(member): flipped(seed, member))

    # Members of the wrong shape or dtype, or missing.
    for key in ARRAY_KEYS:
        b.edited("wrong shape", f"{key}[:-1]", set_member(key, lambda a: a[:-1]))
        b.edited("wrong shape", f"{key} one longer", set_member(key, lambda a: np.concatenate([a, a[:1]])))
        b.edited("wrong shape", f"{key}[:, None]", set_member(key, lambda a: a[:, None]))
    b.edited("wrong shape", "meta 1-d", set_member("meta", lambda a: a.reshape(1)))
    wrong_dtypes = {INT_KEYS: (np.float32, np.float64, bool, str, np.complex64),
                    PACKED_KEYS: (np.int16, np.float32, bool), PROB_KEYS: (np.int32, bool, np.complex64, str)}
    for keys, dtypes in wrong_dtypes.items():
        for key in keys:
            for dtype in dtypes:
                b.edited("wrong dtype", f"{key} as {np.dtype(dtype)}",
                         set_member(key, lambda a, dtype=dtype: a.astype(dtype)))
    b.edited("wrong dtype", "meta as bytes", set_member("meta", lambda a: np.array(str(a[()]).encode())))
    b.edited("wrong dtype", "meta as a number", set_member("meta", np.array(7)))
    for key in ("meta", *ARRAY_KEYS):
        b.edited("missing member", f"no {key}", lambda arrays, key=key: arrays.pop(key))

    # Values out of range, and stored bits that disagree with the predictions.
    for key in PROB_KEYS:
        for value in (np.nan, -0.25, 1.25, np.inf, -np.inf):
            b.edited("NaN or out-of-range probability", f"{key}[5] = {value}", set_item(key, 5, value), reason=key)
    for key in ("train_label", "train_pred", "test_label", "test_pred", "flipped_orig_label"):
        for value in (-1, NUM_CLASSES):
            b.edited("label or index out of range", f"{key}[1] = {value}", set_item(key, 1, value))
    for value in (-1, N_TRAIN, FLIPPED_IDX[0]):  # the last: the same example flipped twice
        b.edited("label or index out of range", f"flipped_idx[1] = {value}", set_item("flipped_idx", 1, value))
    for key, n in (("train_correct", N_TRAIN), ("test_correct", N_TEST)):
        for bit in (0, n // 2, n - 1):
            b.edited("correct bits disagree", f"{key} bit {bit}", flip_bit(key, bit), reason=f"'{key}' disagrees")
    for key in ("test_acc", "train_in_acc"):
        b.add("accuracy disagrees", f"{key} + 0.01", lambda seed, key=key: record_bytes(
            seed, set_meta(**{key: make_record(seed).meta[key] + 0.01})), reason=key)
        b.edited("accuracy disagrees", f"{key} NaN", set_meta(**{key: float("nan")}), reason=key)

    # Metadata: another sweep's identity, bad seeds, other format versions, missing keys, not JSON.
    b.edited("another sweep", "data_fingerprint of another data set",
             set_meta(data_fingerprint="fp-of-another-dataset"), detected_by="sweep", reason="data_fingerprint")
    b.edited("another sweep", "experiment_hash of another experiment",
             set_meta(experiment_hash="hash-of-another-experiment"), detected_by="sweep", reason="experiment_hash")
    b.edited("another sweep", "num_classes + 1", set_meta(num_classes=NUM_CLASSES + 1), detected_by="sweep",
             reason="num_classes")
    b.edited("another sweep", "n_train + 1", set_meta(n_train=N_TRAIN + 1), reason="n_train")
    b.edited("another sweep", "n_test + 1", set_meta(n_test=N_TEST + 1), reason="n_test")
    b.record("another sweep", "ratio 0.5 with its subset", ratio=0.5)
    b.record("another sweep", "salt 17 with its subset", salt=17)
    b.record("another sweep", "train_label of another labelling", train_label=(TRAIN_LABEL + 1) % NUM_CLASSES)
    b.edited("bad seed", "seed 'seven'", set_meta(seed="seven"))
    b.edited("bad seed", "seed null", set_meta(seed=None))
    b.edited("bad seed", "seed -1", set_meta(seed=-1), detected_by="sweep", reason="subset")
    # A seed a directory can name, in another seed's directory: misplaced before its subset is checked.
    b.edited("bad seed", "seed 2**40", set_meta(seed=2**40), detected_by="sweep", reason="in the directory of seed")
    for version in (0, 3, 99, "1", None, [1]):
        b.edited("unknown format version", f"format_version {version!r}", set_meta(format_version=version),
                 reason="format version")
    for key in REQUIRED_META:
        b.edited("missing meta key", f"no {key}", drop_meta(key),
                 reason=key if key != "format_version" else "format version")
    for text in ("not json", "", "{", "[1, 2]", "null", '"a string"'):
        b.edited("non-JSON meta", f"meta {text!r}", set_member("meta", np.array(text)))
    b.edited("bad extra column", "extra_train_subpop[:-1]", set_member("extra_train_subpop", lambda a: a[:-1]),
             reason="extra")
    b.edited("bad extra column", "extra_test_subpop as str",
             set_member("extra_test_subpop", lambda a: a.astype(str)), reason="extra")
    b.edited("bad extra column", "extra_train_subpop[:, None]",
             set_member("extra_train_subpop", lambda a: a[:, None]), reason="extra")
    b.edited("bad extra column", "extra_train_note of objects", lambda arrays: arrays.update(
        extra_train_note=np.array([{"note": 1}] * N_TRAIN, dtype=object)))

    # Sweep-level: a mask that is not its seed's subset, duplicate seeds with different content.
    b.record("mask of another seed", "subset_mask of seed 5000", mask=subset_mask(5000, N_TRAIN, RATIO))
    b.record("mask of another seed", "subset_mask of seed 5001", mask=subset_mask(5001, N_TRAIN, RATIO))
    b.record("mask of another seed", "subset_mask of seed 0", mask=subset_mask(0, N_TRAIN, RATIO))
    first, second = DUPLICATE_SEEDS
    copies = {f"a/seed={first}": npz_bytes(record_arrays(make_record(first))),
              f"b/seed={first}": npz_bytes(record_arrays(make_record(first, draw=2))),  # another training run
              f"a/seed={second}": record_bytes(second),
              f"b/seed={second}": record_bytes(second),  # an identical copy of a/, but c/ differs
              f"c/seed={second}": record_bytes(second, set_item("test_prob", 0, 0.125))}
    for folder, data in copies.items():
        b.variants.append(Variant("duplicate seed", f"{folder} (differing copies)", f"{folder}/record.npz", data,
                                  detected_by="sweep", reason="different content"))

    # Unreadable: a directory where the record should be; no read permission.
    b.add("unreadable", "a directory named record.npz", lambda seed: b"", form="dir")
    if not READS_ANY_MODE:  # root reads whatever the mode in-process: test_unreadable_record_is_reported drops that
        b.add("unreadable", "chmod 000", record_bytes, mode=0)
    return b.variants


VARIANTS = build_variants()


def place(sweep_dir: Path, variant: Variant) -> Path:
    path = sweep_dir / variant.rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    if variant.form == "dir":
        path.mkdir()
    else:
        path.write_bytes(variant.data)
        if variant.mode is not None:
            path.chmod(variant.mode)
    return path


@dataclass(frozen=True)
class MixedSweep:
    sweep: Path
    reference: Path  # the good records alone
    good: list[Path]
    damaged: dict[Path, Variant]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> MixedSweep:
    root = tmp_path_factory.mktemp("damaged")
    sweep, reference = root / "sweep", root / "reference"
    good = [write_record(record_path(sweep, seed), make_record(seed)) for seed in range(K_GOOD)]
    for path in good:
        copy = reference / path.relative_to(sweep)
        copy.parent.mkdir(parents=True)
        shutil.copyfile(path, copy)
    damaged = {place(sweep, variant): variant for variant in VARIANTS}
    return MixedSweep(sweep, reference, good, damaged)


def tree(directory: Path) -> dict[str, int]:
    """Relative path -> size of everything under a directory (links not followed)."""
    return {str(path.relative_to(directory)): path.lstat().st_size for path in sorted(directory.rglob("*"))}


def run_cli(sweep: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "src.estimate", str(sweep), "--out", str(out), *CLI_ARGS, *flags],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def npz_members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


# --------------------------------------------------------------------------------------------- tests

def test_enough_variants_of_every_kind() -> None:
    kinds = Counter(variant.kind for variant in VARIANTS)
    print("damaged variants by kind:", dict(kinds), "total", len(VARIANTS))
    assert len(VARIANTS) >= 100
    assert len({variant.rel_path for variant in VARIANTS}) == len(VARIANTS)
    for kind in ("truncated", "zero bytes", "bit flip in data", "wrong shape", "wrong dtype",
                 "NaN or out-of-range probability", "another sweep", "duplicate seed", "unknown format version",
                 "mask of another seed", "unreadable"):
        assert kinds[kind] >= 1, kind
    for kind in ("wrong shape", "wrong dtype", "missing member"):
        covered = {variant.detail.split()[-1 if kind == "missing member" else 0] for variant in VARIANTS
                   if variant.kind == kind}
        assert {key.split("[")[0] for key in covered} >= {"meta", *ARRAY_KEYS}, kind


def test_each_variant_detected_where_expected(mixed: MixedSweep) -> None:
    """File-level damage makes read_record raise RecordError naming the file; sweep-level variants are
    valid records on their own (so only the sweep can reject them, and the test of that is not vacuous)."""
    wrong = []
    for path, variant in mixed.damaged.items():
        try:
            read_record(path)
            outcome = "read"
        except RecordError as err:
            outcome = "RecordError" if err.path == str(path) and err.reason else f"RecordError for {err.path}"
        except Exception as err:  # any other exception is the finding
            outcome = f"{type(err).__name__}: {err}"
        expected = "RecordError" if variant.detected_by == "file" else "read"
        if outcome != expected:
            wrong.append(f"{variant.rel_path} ({variant.kind}: {variant.detail}): {outcome}, expected {expected}")
    assert not wrong, "\n".join(wrong)


def test_load_sweep_reports_each_damaged_file_once(mixed: MixedSweep) -> None:
    stats, problems = load_sweep(mixed.sweep, strict=False)
    files = [problem.file for problem in problems]
    assert sorted(files) == sorted(map(str, mixed.damaged)) and len(files) == len(set(files))
    assert all(problem.reason for problem in problems)
    assert stats.seeds == list(range(K_GOOD))
    with pytest.raises(RecordError):
        load_sweep(mixed.sweep, strict=True)


def test_cli_skips_damaged_records_and_matches_good_ones(mixed: MixedSweep, tmp_path: Path) -> None:
    before = tree(mixed.sweep)
    reference = run_cli(mixed.reference, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr
    result = run_cli(mixed.sweep, tmp_path / "mixed")
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in output

    skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == len(mixed.damaged)
    for path, variant in mixed.damaged.items():
        lines = [line for line in skipped if line.startswith(f"skipped {path}: ")]
        assert len(lines) == 1, (variant.kind, variant.detail, lines)
        reason = lines[0].removeprefix(f"skipped {path}: ")
        assert reason.strip() and variant.reason in reason, (variant.kind, variant.detail, reason)
    for path in mixed.good:
        assert str(path) not in output

    ref_arrays, arrays = npz_members(tmp_path / "reference" / "estimates.npz"), npz_members(
        tmp_path / "mixed" / "estimates.npz")
    ref_summary, summary = (json.loads(str(a.pop("summary")[()])) for a in (ref_arrays, arrays))
    assert sorted(arrays) == sorted(ref_arrays)
    for key, values in ref_arrays.items():  # mem, mem_se, mem_soft, n_in, n_out, topk_*, pair_*, seeds, ...
        assert (arrays[key].dtype, arrays[key].shape, arrays[key].tobytes()) == (
            values.dtype, values.shape, values.tobytes()), key
    assert ref_arrays["pair_infl"].size > 0 and np.isfinite(ref_arrays["mem"]).any()
    assert summary.pop("problems_excluded") == len(mixed.damaged) and ref_summary.pop("problems_excluded") == 0
    assert summary == ref_summary and summary["runs_used"] == K_GOOD
    for name in ("memorization.csv", "pairs.csv", "influence.npy"):
        assert (tmp_path / "mixed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    assert tree(mixed.sweep) == before  # nothing under the sweep is changed, moved or deleted

    strict = run_cli(mixed.sweep, tmp_path / "strict", "--strict")
    assert strict.returncode == 2
    assert "Traceback" not in strict.stdout + strict.stderr
    error = strict.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ")
    assert any(str(path) in error[0] for path in mixed.damaged)
    assert not (tmp_path / "strict").exists()
    assert tree(mixed.sweep) == before


UNREADABLE_CHECK = """
import json, sys
from src.contracts.records import RecordError, read_record
from src.estimators.subsample.load import load_sweep
try:
    read_record(sys.argv[2])
    raised = None
except RecordError as err:
    raised = err.path
stats, problems = load_sweep(sys.argv[1])
print(json.dumps({"raised": raised, "seeds": stats.seeds, "problems": [problem.file for problem in problems]}))
"""


def test_unreadable_record_is_reported(tmp_path: Path) -> None:
    """Run without root's way around file modes (conftest.unprivileged), so that chmod 000 means unreadable."""
    for seed in range(3):
        write_record(record_path(tmp_path, seed), make_record(seed))
    locked = write_record(record_path(tmp_path, FIRST_DAMAGED_SEED), make_record(FIRST_DAMAGED_SEED))
    locked.chmod(0)
    try:
        result = subprocess.run([*unprivileged(), PYTHON, "-c", UNREADABLE_CHECK, str(tmp_path), str(locked)],
                                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o644)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"raised": str(locked), "seeds": [0, 1, 2], "problems": [str(locked)]}


# ------------------------------------------------------------------- crafted fields that escape (bugs)

def central_directory_flip(offset: int, mask: int) -> Callable[[bytes], bytes]:
    """XOR one byte of the first central-directory entry (the `meta` member's): a one-bit flip."""
    def edit(data: bytes) -> bytes:
        out = bytearray(data)
        out[data.index(b"PK\x01\x02") + offset] ^= mask
        return bytes(out)
    return edit


def meta_local_extra_length(data: bytes) -> bytes:
    """The local header of `meta` (the first member) claims an extra field reaching past the end."""
    out = bytearray(data)
    struct.pack_into("<H", out, 28, 0xFFFF)
    return bytes(out)


def npy_member(array: np.ndarray, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    header = npy_format.header_data_from_array_1_0(array)
    header["shape"] = shape
    npy_format.write_array_header_1_0(buffer, header)
    buffer.write(array.tobytes())
    return buffer.getvalue()


def huge_declared_shape(data: bytes) -> bytes:
    """train_prob's .npy header declares 2**58 float32 (1 EiB, beyond any address space); the data are the
    real 203 values."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(buffer, "w") as target:
        for name in source.namelist():
            payload = source.read(name)
            if name == "train_prob.npy":
                payload = npy_member(np.load(io.BytesIO(payload)), (2**58,))
            target.writestr(name, payload)
    return buffer.getvalue()


def npy_named_npz(data: bytes) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(N_TRAIN, dtype=np.float32))
    return buffer.getvalue()


def with_arrays(edit: Callable[[Arrays], None]) -> Callable[[bytes], bytes]:
    def craft(data: bytes) -> bytes:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        edit(arrays)
        return npz_bytes(arrays)
    return craft


# Crafted zip and metadata fields found by flipping every bit of a record; each used to escape as an
# exception other than RecordError
# (fixed by src/contracts/records.py ARCHIVE_ERRORS and src/estimators/subsample/scan.py read_file_info).
CRAFTED: dict[str, Callable[[bytes], bytes]] = {
    "zip: unsupported compression method (1 bit)": central_directory_flip(10, 0x01),
    "zip: needs zip version 17.3 (1 bit)": central_directory_flip(6, 0x80),
    "zip: encrypted flag (1 bit)": central_directory_flip(8, 0x01),
    "zip: compressed-patched flag (1 bit)": central_directory_flip(8, 0x20),
    "zip: meta local header extra length past the end": meta_local_extra_length,
    "a .npy file named record.npz": npy_named_npz,
    "npy header declares 2**58 elements": huge_declared_shape,
    "meta seed Infinity (JSON accepts it)": with_arrays(set_meta(seed=float("inf"))),
    "meta n_train Infinity": with_arrays(set_meta(n_train=float("inf"))),
    "meta nested 100000 deep": with_arrays(set_member("meta", np.array("[" * 100_000 + "]" * 100_000))),
    "train_label of non-numeric strings": with_arrays(set_member("train_label", np.array(["x"] * N_TRAIN))),
    "train_label of a structured dtype": with_arrays(set_member("train_label", np.zeros(
        N_TRAIN, dtype=[("a", "<i4"), ("b", "<i4")]))),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_record_is_a_record_error(tmp_path: Path, case: str) -> None:
    for seed in range(3):
        write_record(record_path(tmp_path, seed), make_record(seed))
    crafted = record_path(tmp_path, FIRST_DAMAGED_SEED)
    crafted.parent.mkdir()
    crafted.write_bytes(CRAFTED[case](record_bytes(FIRST_DAMAGED_SEED)))
    with pytest.raises(RecordError) as info:
        read_record(crafted)
    assert info.value.path == str(crafted)
    stats, problems = load_sweep(tmp_path)
    assert stats.seeds == [0, 1, 2] and [problem.file for problem in problems] == [str(crafted)]


def test_cli_skips_crafted_records(tmp_path: Path) -> None:
    for seed in range(3):
        write_record(record_path(tmp_path / "sweep", seed), make_record(seed))
    crafted = []
    for i, make in enumerate(CRAFTED.values()):
        path = record_path(tmp_path / "sweep", FIRST_DAMAGED_SEED + i)
        path.parent.mkdir()
        path.write_bytes(make(record_bytes(FIRST_DAMAGED_SEED + i)))
        crafted.append(path)
    result = run_cli(tmp_path / "sweep", tmp_path / "out")
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 0
    for path in crafted:
        assert result.stdout.count(f"skipped {path}: ") == 1
