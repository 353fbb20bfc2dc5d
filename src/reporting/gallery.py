"""A PNG grid of training examples (the most memorized ones), each titled with its index, trained label,
original label where it was flipped, and mem +- se.

Rendered with matplotlib's Agg canvas directly (no pyplot state). Each cell is CELL_INCHES at DPI, so a
grid of `count` images is exactly `gallery_size(count)` pixels whatever the image size (8 px to 224 px:
matplotlib resamples into the cell). One channel is drawn grey, three as RGB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from src.contracts.io import write_atomic
from src.errors import DataError
from src.util.plotting import new_figure, png_bytes

CELL_INCHES = (1.6, 2.1)  # width, height: the image plus three lines of title
DPI = 100
MAX_COLUMNS = 8
NAME_CHARS = 14
TITLE_POINTS = 7
TITLE_INCHES = 0.5  # room above each image for the title lines


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of the grid for `count` images."""
    columns = max(1, min(MAX_COLUMNS, count))
    return max(1, math.ceil(count / columns)), columns


def gallery_size(count: int) -> tuple[int, int]:
    """(height, width) in pixels of the PNG for `count` images."""
    rows, columns = grid_shape(count)
    return round(rows * CELL_INCHES[1] * DPI), round(columns * CELL_INCHES[0] * DPI)


def _check_images(images: np.ndarray, order: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"gallery images must be (N, C, H, W) with 1 or 3 channels, got shape {images.shape}")
    if len(images) != order.size:
        raise DataError(f"{len(images)} gallery images for {order.size} training indices")


def _label_name(label: int, class_names: Sequence[str] | None) -> str:
    return str(label) if class_names is None else str(class_names[label])[:NAME_CHARS]


def _title(index: int, label: int, orig_label: int, mem: float, mem_se: float,
           class_names: Sequence[str] | None) -> str:
    was = f"(was {_label_name(orig_label, class_names)})" if orig_label != label else ""
    return f"#{index} {_label_name(label, class_names)}\n{was}\nmem {mem:.2f} ± {mem_se:.2f}"


def render_gallery(images: np.ndarray, order: np.ndarray, labels: np.ndarray, orig_labels: np.ndarray,
                   mem: np.ndarray, mem_se: np.ndarray, class_names: Sequence[str] | None = None) -> bytes:
    """PNG bytes of a grid: images[k] ((N, C, H, W) floats in [0, 1]) is training example order[k]; the
    per-example arrays are indexed by training index."""
    images, order = np.asarray(images), np.asarray(order, dtype=np.int64)
    _check_images(images, order)
    rows, columns = grid_shape(order.size)
    figure = new_figure((columns * CELL_INCHES[0], rows * CELL_INCHES[1]), DPI)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - TITLE_INCHES / (rows * CELL_INCHES[1]),
                           wspace=0.1, hspace=TITLE_INCHES / (CELL_INCHES[1] - TITLE_INCHES))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, stored, index in zip(axes, images, order.tolist(), strict=False):
        image = np.clip(stored.astype(np.float32), 0, 1)
        if image.shape[0] == 1:
            ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(image.transpose(1, 2, 0))
        ax.set_title(_title(index, int(labels[index]), int(orig_labels[index]), float(mem[index]),
                            float(mem_se[index]), class_names), fontsize=TITLE_POINTS)
    return png_bytes(figure, DPI)


def write_gallery(path: str | Path, images: np.ndarray, order: np.ndarray, labels: np.ndarray,
                  orig_labels: np.ndarray, mem: np.ndarray, mem_se: np.ndarray,
                  class_names: Sequence[str] | None = None) -> Path:
    png = render_gallery(images, order, labels, orig_labels, mem, mem_se, class_names)
    return write_atomic(path, lambda handle: handle.write(png))
