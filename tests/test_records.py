"""The record contract: round trip, metadata alone, atomic writes, stale temps, and validation errors; the
optional v2 arrays (per-epoch correctness, proxies) and reading version 1."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from src.contracts.io import remove_stale_temps, write_atomic
from src.contracts.records import (
    EPOCH_KEYS,
    FORMAT_VERSION,
    PROXY_PREFIX,
    REQUIRED_META,
    Record,
    find_records,
    read_meta,
    read_record,
    record_arrays,
    record_path,
    write_record,
)
from src.errors import RecordError

N_TRAIN, N_TEST, NUM_CLASSES = 50, 20, 4


def make_record(seed: int = 3) -> Record:
    rng = np.random.default_rng(seed)
    train_label, test_label = rng.integers(0, NUM_CLASSES, N_TRAIN), rng.integers(0, NUM_CLASSES, N_TEST)
    test_pred = rng.integers(0, NUM_CLASSES, N_TEST)
    train_pred, subset_mask = rng.integers(0, NUM_CLASSES, N_TRAIN), rng.random(N_TRAIN) < 0.7
    flipped_idx = np.array([2, 11, 40])
    meta = {
        "format_version": FORMAT_VERSION, "dataset": "toy", "n_train": N_TRAIN, "n_test": N_TEST,
        "num_classes": NUM_CLASSES, "data_fingerprint": "fp", "model": "mlp", "ratio": 0.7, "salt": 0,
        "epochs": 2, "seed": seed, "experiment_hash": "abc", "experiment_name": "toy",
        "test_acc": float((test_pred == test_label).mean()),
        "train_in_acc": float((train_pred == train_label)[subset_mask].mean()),
        "versions": {"numpy": np.__version__}, "git": {"commit": None, "dirty": False}, "wall_time_s": 1.5,
    }
    assert set(meta) == set(REQUIRED_META)
    return Record(
        meta=meta, subset_mask=subset_mask, train_label=train_label,
        train_pred=train_pred, train_prob=rng.random(N_TRAIN).astype(np.float32),
        test_label=test_label, test_pred=test_pred, test_prob=rng.random(N_TEST).astype(np.float32),
        flipped_idx=flipped_idx, flipped_orig_label=(train_label[flipped_idx] + 1) % NUM_CLASSES,
        extras={"train_subpop": np.arange(N_TRAIN) % 7, "test_subpop": np.arange(N_TEST) % 7},
        epoch_list=np.array([1, 2]), epoch_train_correct=rng.random((2, N_TRAIN)) < 0.5,
        epoch_test_correct=rng.random((2, N_TEST)) < 0.5,
        proxies={"learn_speed": np.where(subset_mask, rng.random(N_TRAIN), np.nan).astype(np.float32),
                 "loss": rng.exponential(1.0, N_TRAIN).astype(np.float32),
                 "margin": rng.normal(0.0, 3.0, N_TRAIN).astype(np.float32)},
    )


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    record = make_record()
    path = write_record(record_path(tmp_path, 3), record)
    assert path == tmp_path / "seed=3" / "record.npz"
    loaded = read_record(path)
    assert loaded.meta == record.meta and loaded.seed == 3
    assert loaded.subset_mask.dtype == bool
    for key in ("subset_mask", "train_label", "train_pred", "train_prob", "test_label", "test_pred",
                "test_prob", "flipped_idx", "flipped_orig_label", "train_correct", "test_correct"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(record, key), err_msg=key)
    assert loaded.extras.keys() == record.extras.keys()
    for key, values in record.extras.items():
        np.testing.assert_array_equal(loaded.extras[key], values)
    with np.load(path, allow_pickle=False) as archive:
        assert archive["train_label"].dtype == np.int16 and archive["train_correct"].dtype == np.uint8
        assert archive["epoch_list"].dtype == np.int32 and archive["epoch_train_correct"].shape == (2, 7)
    np.testing.assert_array_equal(loaded.epoch_list, [1, 2])
    for key in ("epoch_train_correct", "epoch_test_correct"):
        assert getattr(loaded, key).dtype == bool
        np.testing.assert_array_equal(getattr(loaded, key), getattr(record, key), err_msg=key)
    assert loaded.proxies.keys() == record.proxies.keys()
    for name, values in record.proxies.items():
        assert loaded.proxies[name].tobytes() == values.tobytes(), name


def test_version_1_still_read(tmp_path: Path) -> None:
    arrays = {key: value for key, value in record_arrays(make_record()).items()
              if key not in EPOCH_KEYS and not key.startswith(PROXY_PREFIX)}
    with_meta(lambda meta: meta.update(format_version=1))(arrays)
    write_raw(tmp_path / "record.npz", arrays)
    loaded = read_record(tmp_path / "record.npz")
    assert loaded.meta["format_version"] == 1 and loaded.epoch_list.size == 0 and loaded.proxies == {}
    assert loaded.epoch_train_correct is None and loaded.epoch_test_correct is None


def test_read_meta_alone(tmp_path: Path) -> None:
    record = make_record()
    path = write_record(tmp_path / "record.npz", record)
    assert read_meta(path) == record.meta


def test_find_records_sorted_and_ignores_temps(tmp_path: Path) -> None:
    for seed in (10, 2):
        write_record(record_path(tmp_path, seed), make_record(seed))
    (tmp_path / "seed=2" / "record.npz.tmp.host.1").write_bytes(b"partial")
    assert find_records(tmp_path) == [record_path(tmp_path, 10), record_path(tmp_path, 2)]


def failing_writer(handle: object) -> None:
    handle.write(b"some bytes of a record")  # type: ignore[attr-defined]
    raise RuntimeError("killed midway")


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "seed=0" / "record.npz"
    with pytest.raises(RuntimeError, match="killed midway"):
        write_atomic(path, failing_writer)
    assert not path.exists() and not list(path.parent.glob("*.tmp.*"))
    write_atomic(path, lambda handle: handle.write(b"old"))
    with pytest.raises(RuntimeError):
        write_atomic(path, failing_writer)
    assert path.read_bytes() == b"old" and list(path.parent.iterdir()) == [path]


def test_remove_stale_temps(tmp_path: Path) -> None:
    path = write_record(tmp_path / "record.npz", make_record())
    stale = [tmp_path / "record.npz.tmp.hostA.12", tmp_path / "record.npz.tmp.hostB.345"]
    for tmp in stale:
        tmp.write_bytes(b"partial")
    assert remove_stale_temps(path) == stale
    assert list(tmp_path.iterdir()) == [path]
    assert remove_stale_temps(tmp_path / "missing" / "record.npz") == []


def write_raw(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def with_meta(change: Callable[[dict], None]) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        meta = json.loads(str(arrays["meta"][()]))
        change(meta)
        arrays["meta"] = np.array(json.dumps(meta))
    return edit


def set_item(key: str, index: int, value: object) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        arrays[key] = arrays[key].copy()
        arrays[key][index] = value
    return edit


ARRAY_EDITS: dict[str, Callable[[dict[str, np.ndarray]], None]] = {
    "wrong dtype": lambda arrays: arrays.update(train_label=arrays["train_label"].astype(np.float32)),
    "wrong shape": lambda arrays: arrays.update(train_prob=arrays["train_prob"][:-1]),
    "wrong mask dtype": lambda arrays: arrays.update(subset_mask=arrays["subset_mask"].astype(np.int64)),
    "nan prob": set_item("test_prob", 0, np.nan),
    "label out of range": set_item("test_label", 0, NUM_CLASSES),
    "unknown format version": with_meta(lambda meta: meta.update(format_version=FORMAT_VERSION + 1)),
    "missing meta key": with_meta(lambda meta: meta.pop("seed")),
    "missing array": lambda arrays: arrays.pop("test_pred"),
    "missing meta": lambda arrays: arrays.pop("meta"),
    "correct bits disagree": set_item("train_correct", 0, 0b10101010),
    "test_acc disagrees": with_meta(lambda meta: meta.update(test_acc=meta["test_acc"] + 0.1)),
    "test_acc nan": with_meta(lambda meta: meta.update(test_acc=float("nan"))),
    "train_in_acc disagrees": with_meta(lambda meta: meta.update(train_in_acc=meta["train_in_acc"] + 0.1)),
    "non-numeric seed": with_meta(lambda meta: meta.update(seed="three")),
    "zero test examples": with_meta(lambda meta: meta.update(n_test=0)),
    "pickled object extra": lambda arrays: arrays.update(extra_train_note=np.array([{"a": 1}] * N_TRAIN)),
    "extra of wrong length": lambda arrays: arrays.update(extra_test_subpop=np.arange(3)),
}
# Edits of the v2 arrays, with the words the error must contain.
V2_EDITS: dict[str, tuple[Callable[[dict[str, np.ndarray]], None], str]] = {
    "epoch beyond max_epochs": (set_item("epoch_list", 1, 3), "within 1..2"),
    "epoch zero": (set_item("epoch_list", 0, 0), "within 1..2"),
    "epochs repeated": (set_item("epoch_list", 1, 1), "increase strictly"),
    "epoch_list as float": (lambda a: a.update(epoch_list=a["epoch_list"].astype(np.float32)), "integers"),
    "epoch rows missing one": (lambda a: a.update(epoch_test_correct=a["epoch_test_correct"][:1]),
                               "expected uint8 (2, 3)"),
    "epoch bits as int64": (lambda a: a.update(epoch_train_correct=a["epoch_train_correct"].astype(np.int64)),
                            "epoch_train_correct"),
    "epoch rows without epoch_list": (lambda a: a.pop("epoch_list"), "no epoch_list"),
    "epoch_list without rows": (lambda a: a.pop("epoch_train_correct"), "no 'epoch_train_correct'"),
    "proxy as float64": (lambda a: a.update(proxy_train_loss=a["proxy_train_loss"].astype(np.float64)),
                         "expected float32"),
    "proxy too short": (lambda a: a.update(proxy_train_margin=a["proxy_train_margin"][:-1]), "expected float32"),
    "unknown proxy": (lambda a: a.update(proxy_train_forgetting=a["proxy_train_loss"]), "unknown proxy"),
    "learn speed above 1": (lambda a: a.update(proxy_train_learn_speed=a["proxy_train_learn_speed"] + 1),
                            "outside [0.0, 1.0]"),
    "learn speed NaN inside the subset": (lambda a: a.update(proxy_train_learn_speed=np.full(
        N_TRAIN, np.nan, dtype=np.float32)), "NaN exactly outside the subset"),
    "learn speed defined outside": (lambda a: a.update(proxy_train_learn_speed=np.zeros(N_TRAIN, np.float32)),
                                    "NaN exactly outside the subset"),
    "negative loss": (set_item("proxy_train_loss", 0, -1.0), "outside [0.0, inf]"),
    "NaN margin": (set_item("proxy_train_margin", 0, np.nan), "NaN nowhere"),
    "infinite margin": (set_item("proxy_train_margin", 0, np.inf), "outside [-inf, inf]"),
}


@pytest.mark.parametrize("case", sorted(V2_EDITS))
def test_invalid_v2_arrays_say_what_is_wrong(tmp_path: Path, case: str) -> None:
    edit, reason = V2_EDITS[case]
    arrays = record_arrays(make_record())
    edit(arrays)
    path = tmp_path / "record.npz"
    write_raw(path, arrays)
    with pytest.raises(RecordError, match=re.escape(reason)) as info:
        read_record(path)
    assert info.value.path == str(path) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", sorted(ARRAY_EDITS))
def test_invalid_archive_names_the_file(tmp_path: Path, case: str) -> None:
    arrays = record_arrays(make_record())
    ARRAY_EDITS[case](arrays)
    path = tmp_path / "record.npz"
    write_raw(path, arrays)
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert info.value.path == str(path) and str(path) in str(info.value)


@pytest.mark.parametrize("case", ["truncated", "zero bytes", "not a zip"])
def test_damaged_file_names_the_file(tmp_path: Path, case: str) -> None:
    path = write_record(tmp_path / "record.npz", make_record())
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "zero bytes": b"", "not a zip": b"x" * 100}[case])
    for read in (read_record, read_meta):
        with pytest.raises(RecordError) as info:
            read(path)
        assert info.value.path == str(path)


@pytest.mark.parametrize("extras", [{"subpop": np.arange(N_TRAIN)}, {"train_note": np.array(["a"] * N_TRAIN)}])
def test_write_refuses_unnamed_or_non_numeric_extras(tmp_path: Path, extras: dict) -> None:
    with pytest.raises(RecordError, match="extra"):
        write_record(tmp_path / "record.npz", Record(**{**make_record().__dict__, "extras": extras}))
    assert list(tmp_path.iterdir()) == []


def test_write_record_validates_first(tmp_path: Path) -> None:
    record = make_record()
    bad = Record(**{**record.__dict__, "train_prob": record.train_prob * 2})
    path = tmp_path / "record.npz"
    with pytest.raises(RecordError, match="train_prob"):
        write_record(path, bad)
    assert not tmp_path.joinpath("record.npz").exists() and list(tmp_path.iterdir()) == []
