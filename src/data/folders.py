"""Image folders (torchvision's ImageFolder layout): scanned with torchvision's own helpers, each image decoded
once (PIL: RGB, shorter side resized, centre crop) in worker processes and cached as a uint8 .npy.

See src/data/sources.py (sources `folder` and `imagenet`) for the layout and the cache key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.io import write_atomic
from src.data.raw import RawData, setting
from src.errors import ConfigError, DataError
from src.util.cli import first_line

log = logging.getLogger(__name__)

IMAGE_SPLITS = (("train", "train"), ("test", "val"))  # (RawData split, folder under the root)
IMAGE_CHANNELS = 3  # every image becomes RGB (grey replicated), as torchvision's ImageFolder loader does
CACHE_DIR_NAME = "meminf_cache"  # under paths.data_dir
CACHE_FORMAT = 1  # part of the cache key: bump it when decode_image changes, so old caches are not reused

@dataclass(frozen=True)
class ImageFolder:
    """Both splits of an image folder, per RawData split ("train", "test"): images, labels, files."""

    classes: tuple[str, ...]
    x: dict[str, np.ndarray]  # uint8 (N, 3, S, S)
    y: dict[str, np.ndarray]  # int64 (N,)
    paths: dict[str, tuple[str, ...]]  # relative to the root


def read_image_folder(root: Path, size: int, workers: int, data_dir: Path, source: str, title: str,
                      fix: str) -> ImageFolder:
    """``<root>/{train,val}/<class>/<image>``, decoded once to uint8 and cached under ``<data_dir>/meminf_cache``."""
    classes, samples = scan_image_folder(root, title, fix)
    x, y, paths = {}, {}, {}
    for split, folder in IMAGE_SPLITS:
        files = [Path(path) for path, _ in samples[folder]]
        x[split] = _cached_images(files, root, data_dir / CACHE_DIR_NAME, f"{source}-{folder}", size, workers)
        y[split] = np.array([label for _, label in samples[folder]], dtype=np.int64)
        paths[split] = tuple(str(Path(path).relative_to(root)) for path, _ in samples[folder])
    return ImageFolder(tuple(classes), x, y, paths)


def scan_image_folder(root: Path, title: str, fix: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names (sorted train/ folder names, ImageFolder's class index) and (path, label) per folder."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    missing = [folder for _, folder in IMAGE_SPLITS if not (root / folder).is_dir()]
    if missing:
        raise DataError(f"{title} not found: expected {root}/{{train,val}}/<class>/<image> (missing "
                        f"{', '.join(str(root / folder) for folder in missing)}); {fix}")
    try:
        classes, class_to_idx = find_classes(root / "train")
        extra = sorted(set(find_classes(root / "val")[0]) - set(classes))
    except FileNotFoundError as error:
        raise DataError(f"{title}: {first_line(error)} Put each class's images in <class>/ folders") from error
    if extra:
        raise DataError(f"{root / 'val'} has class folders {extra[:3]} that {root / 'train'} lacks; "
                        "give train/ and val/ the same class folders")
    try:
        samples = {"train": make_dataset(root / "train", class_to_idx, IMG_EXTENSIONS)}
    except FileNotFoundError as error:  # a train/ class folder without images
        raise DataError(f"{root / 'train'}: {first_line(error).split('.')[0]}; add images to those class "
                        "folders or remove them") from error
    samples["val"] = make_dataset(root / "val", class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    if not samples["val"]:
        raise DataError(f"{title}: {root / 'val'} holds no images; put the test images in val/<class>/")
    return classes, samples


def decode_image(path: str, size: int) -> np.ndarray | str:
    """(3, size, size) uint8 of one image file, or why it cannot be read.

    RGB (grey replicated), shorter side resized to ``size`` (PIL bilinear, antialiased), centre crop: what
    torchvision's ``Resize(size)`` + ``CenterCrop(size)`` give on ImageFolder's RGB images (a test checks it).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return first_line(error)
    width, height = rgb.size
    long_side = int(size * max(width, height) / min(width, height))
    new_width, new_height = (size, long_side) if width <= height else (long_side, size)
    resized = rgb.resize((new_width, new_height), Image.Resampling.BILINEAR)
    top, left = round((new_height - size) / 2.0), round((new_width - size) / 2.0)
    cropped = resized.crop((left, top, left + size, top + size))
    return np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1)


def _cache_key(files: list[Path], root: Path, size: int) -> str:
    """Hash of the file list with each file's size and mtime, the root and the decoding."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps([CACHE_FORMAT, size, str(root.resolve())]).encode())
    for path in files:
        try:
            stat = path.stat()
        except OSError as error:
            raise DataError(f"cannot read image {path} ({error.strerror}); restore or delete it") from error
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cached_images(files: list[Path], root: Path, cache_dir: Path, tag: str, size: int, workers: int) -> np.ndarray:
    """The decoded images of ``files`` from ``<cache_dir>/<tag>-<size>px-<key>.npy``, decoding them on a miss."""
    cache = cache_dir / f"{tag}-{size}px-{_cache_key(files, root, size)}.npy"
    expected = (len(files), IMAGE_CHANNELS, size, size)
    if cache.is_file():
        try:
            images = np.load(cache, allow_pickle=False)
        except (OSError, ValueError) as error:
            log.warning("decoding again: image cache %s is unreadable (%s)", cache, first_line(error))
        else:
            if images.shape == expected and images.dtype == np.uint8:
                return images
            log.warning("decoding again: image cache %s holds %s %s", cache, images.dtype, images.shape)
    started = time.perf_counter()
    images = _decode_all(files, size, workers)
    log.info("decoded %d images of %s in %.1f s (%d workers)", len(files), tag, time.perf_counter() - started,
             workers)
    try:
        write_atomic(cache, lambda handle: np.save(handle, images, allow_pickle=False))
    except OSError as error:
        log.warning("not cached (%s): cannot write %s; make paths.data_dir writable to decode only once",
                    error.strerror or error, cache)
    return images


def _decode_all(files: list[Path], size: int, workers: int) -> np.ndarray:
    """Decode in ``workers`` spawned processes (in this process when 0); the first unreadable file is a DataError."""
    images = np.empty((len(files), IMAGE_CHANNELS, size, size), dtype=np.uint8)
    decode = partial(decode_image, size=size)
    with (multiprocessing.get_context("spawn").Pool(workers) if workers else contextlib.nullcontext()) as pool:
        # Pool.map's own default chunk: four chunks per worker.
        chunk = max(1, math.ceil(len(files) / (4 * max(1, workers))))
        decoded = pool.imap(decode, map(str, files), chunksize=chunk) if pool else map(decode, map(str, files))
        for index, result in enumerate(decoded):
            if isinstance(result, str):
                raise DataError(f"cannot read image {files[index]} ({result}); replace or delete the file")
            images[index] = result
    return images


def load_folder(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    root = Path(setting(cfg, "root")).expanduser()
    return _load_image_folder(cfg, data_dir, root, f"image folder {root}", "set dataset.root=<dir>")


def load_imagenet(cfg: Mapping[str, Any], data_dir: Path) -> RawData:
    return _load_image_folder(cfg, data_dir, data_dir / "imagenet", "ImageNet",
                              "sort val/ into class folders like train/ and set paths.data_dir")


def _load_image_folder(cfg: Mapping[str, Any], data_dir: Path, root: Path, title: str, fix: str) -> RawData:
    """Both splits of ``<root>/{train,val}/<class>/<image>``, decoded once to uint8 and cached as .npy."""
    size, workers = int(setting(cfg, "image_size")), int(setting(cfg, "num_workers"))
    if size < 1 or workers < 0:
        raise ConfigError(f"dataset.image_size={size} and dataset.num_workers={workers} must be >= 1 and >= 0")
    folder = read_image_folder(root, size, workers, data_dir, str(setting(cfg, "source")), title, fix)
    return RawData(x_train=folder.x["train"], y_train=folder.y["train"], x_test=folder.x["test"],
                   y_test=folder.y["test"], num_classes=len(folder.classes), class_names=folder.classes,
                   train_paths=folder.paths["train"], test_paths=folder.paths["test"])
