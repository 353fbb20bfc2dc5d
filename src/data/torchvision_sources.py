"""Data sets in torchvision's folder layouts: MNIST (raw IDX files, torchvision's loader) and CIFAR-10/100
(python-pickle batches, read by `ArraysOnlyUnpickler`, which runs no code a file names); nothing is downloaded
unless `dataset.download: true` (see src/data/sources.py)."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from src.data.raw import RawData, setting
from src.errors import DataError

log = logging.getLogger(__name__)

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
                "there by hand (layout in src/data/torchvision_sources.py) and set dataset.download=false"
            ) from error
        raise DataError(
            f"could not read {title} from {data_dir} ({reason}); the files are damaged or not in the "
            "expected format: replace them with the original files"
        ) from error


def load_mnist(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    from torchvision.datasets import MNIST

    download = bool(setting(cfg, "download"))
    if not download:
        raw_files = {Path(archive).stem: None for archive, _ in MNIST.resources}  # the .gz names, unpacked
        _require_files("MNIST", data_dir / MNIST.__name__ / "raw", raw_files)
    train, test = _torchvision_splits(MNIST, "MNIST", data_dir, download)
    note_partial_copy("MNIST", data_dir / MNIST.__name__, len(train.targets), len(test.targets))
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
    folder = data_dir / cifar_cls.base_folder
    checksums = dict(cifar_cls.train_list + cifar_cls.test_list)
    checksums[cifar_cls.meta["filename"]] = cifar_cls.meta["md5"]
    if bool(setting(cfg, "download")):
        _download_cifar(cifar_cls, title, data_dir, checksums)
    _require_files(title, folder, checksums if bool(setting(cfg, "verify_checksums")) else dict.fromkeys(checksums))
    x_train, y_train = _cifar_split(title, folder, [name for name, _ in cifar_cls.train_list])
    x_test, y_test = _cifar_split(title, folder, [name for name, _ in cifar_cls.test_list])
    names = _cifar_entry(title, folder / cifar_cls.meta["filename"], cifar_cls.meta["key"])
    class_names = tuple(name.decode("latin1") if isinstance(name, bytes) else str(name) for name in names)
    note_partial_copy(title, folder, len(y_train), len(y_test))
    return RawData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, num_classes=len(class_names),
                   class_names=class_names)


def _download_cifar(cifar_cls: type, title: str, data_dir: Path, checksums: Mapping[str, str]) -> None:
    """The archive downloaded and unpacked unless every file is already there and intact."""
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    folder = data_dir / cifar_cls.base_folder
    if all(check_integrity(folder / name, md5) for name, md5 in checksums.items()):
        return
    try:
        download_and_extract_archive(cifar_cls.url, str(data_dir), filename=cifar_cls.filename,
                                     md5=cifar_cls.tgz_md5)
    except TORCHVISION_READ_ERRORS as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"could not download {title} to {data_dir} ({reason}); check the network, or put the files "
                        "there by hand (layout in src/data/sources.py) and set dataset.download=false") from error


CIFAR_SHAPE = (3, 32, 32)  # one image of a CIFAR batch's `data` row, channels first
CIFAR_LABEL_KEYS = ("labels", "fine_labels")  # CIFAR-10's, CIFAR-100's (its fine labels)


def _cifar_split(title: str, folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and labels int64 of the batches `names`."""
    images, labels = [], []
    for name in names:
        entry = _cifar_entry(title, folder / name, "data", *CIFAR_LABEL_KEYS)
        data = np.asarray(entry["data"])
        label_key = next((key for key in CIFAR_LABEL_KEYS if key in entry), None)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != np.prod(CIFAR_SHAPE) or label_key is None \
                or len(entry[label_key]) != len(data):
            raise DataError(f"could not read {title} from {folder / name}: not a CIFAR batch (uint8 rows of "
                            f"{np.prod(CIFAR_SHAPE)} values and one label each); replace it with the original file")
        images.append(data.reshape(-1, *CIFAR_SHAPE))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _cifar_entry(title: str, path: Path, key: str, *others: str) -> Any:
    """The pickled dict of a CIFAR file, its keys as text (the official files give bytes keys to a reader that
    decodes as bytes, re-pickled copies may hold them so), read by `ArraysOnlyUnpickler`; with `others`, the
    dict, else its `key`."""
    try:
        with path.open("rb") as handle:
            entry = ArraysOnlyUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataError(f"could not read {title} from {path} ({first_reason(error)}); the file is damaged or not "
                        "in the expected format: replace it with the original file") from error
    if not isinstance(entry, dict):
        raise DataError(f"could not read {title} from {path}: it holds a {type(entry).__name__}, not a dict")
    entry = {name.decode("latin1") if isinstance(name, bytes) else name: value for name, value in entry.items()}
    if key not in entry:
        raise DataError(f"could not read {title} from {path}: no '{key}' entry (it holds {sorted(map(str, entry))}); "
                        "replace it with the original file")
    return entry if others else entry[key]


def first_reason(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles containers, numbers, text and numpy arrays, and refuses every other class or function: a CIFAR
    file runs no code of its own (pickle would call whatever it names; torchvision's loader uses pickle)."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR file (only arrays load)")
        return super().find_class(module, name)


# The splits of the real data sets: a copy with fewer examples is used as it is, with one warning.
FULL_SIZES = {"MNIST": (60_000, 10_000), "CIFAR-10": (50_000, 10_000), "CIFAR-100": (50_000, 10_000)}


def note_partial_copy(title: str, folder: Path, n_train: int, n_test: int) -> None:
    """Warns (once per process: src/data/dataset.py caches what it loads) when a copy is smaller than the real
    data set, e.g. a 200-example extract named CIFAR-10."""
    full_train, full_test = FULL_SIZES[title]
    if n_train < full_train or n_test < full_test:
        log.warning("note: %s in %s holds %d train and %d test examples, fewer than the real %s/%s split; it is "
                    "used as it is (a partial or re-packed copy?)", title, folder, n_train, n_test,
                    f"{full_train:,}", f"{full_test:,}")


# ------------------------------------------------------------------------------------------------------ npz


def load_cifar10(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    return _load_cifar(cfg, data_dir, class_name="CIFAR10", title="CIFAR-10")


def load_cifar100(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    return _load_cifar(cfg, data_dir, class_name="CIFAR100", title="CIFAR-100")
