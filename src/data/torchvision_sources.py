"""Data sets read with torchvision's own loaders and folder layouts: MNIST (raw IDX files) and CIFAR-10/100
(python-pickle batches); nothing is downloaded unless `dataset.download: true` (see src/data/sources.py)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from src.data.raw import RawData, setting
from src.errors import DataError

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
    download = bool(setting(cfg, "download"))
    verify = bool(setting(cfg, "verify_checksums"))
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


def load_cifar10(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    return _load_cifar(cfg, data_dir, class_name="CIFAR10", title="CIFAR-10")


def load_cifar100(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    return _load_cifar(cfg, data_dir, class_name="CIFAR100", title="CIFAR-100")
