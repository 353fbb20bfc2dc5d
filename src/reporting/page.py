"""The HTML page: its builder (`Page`), example images enlarged for display, charts, and writing the page into a
temp directory that is renamed onto --out when complete."""

from __future__ import annotations

import html
import io
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from src.data.images import Images
from src.errors import MeminfError
from src.util.plotting import new_figure, png_bytes

PAGE_NAME = "index.html"
IMAGE_DIR = "img"
# <meta name="generator"> of every page: an existing --out is replaced only when its index.html carries it.
GENERATOR = "meminf src.report"
# Longer side, in pixels, below which example images are enlarged (integer nearest-neighbour factor): an
# 8 px digit becomes 64 px, a 28 px MNIST digit 84 px, a 32 px CIFAR image 64 px, 224 px stays as it is.
MIN_DISPLAY_PX = 64
CHART_INCHES = (8.0, 3.2)
CHART_DPI = 100
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; font-size: 0.9em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; padding: 4px; border: 1px solid #ddd; font-size: 0.8em; max-width: 240px; }
figure.test { border-color: #36c; }
figure img { display: block; image-rendering: pixelated; }
.pair { display: flex; gap: 10px; align-items: flex-start; margin-bottom: 12px; padding-bottom: 8px;
        border-bottom: 1px solid #eee; }
.note { color: #a40; }
.path { color: #555; word-break: break-all; }
"""
COUNT_IMAGES_JS = ("window.addEventListener('load', function () { var all = Array.from(document.images); "
                   "document.body.dataset.imagesLoaded = all.filter(function (i) { return i.complete && "
                   "i.naturalWidth > 0; }).length; document.body.dataset.imagesTotal = all.length; });")


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def display_factor(height: int, width: int) -> int:
    """Integer enlargement that brings the longer side to at least MIN_DISPLAY_PX (1 for large images)."""
    return max(1, math.ceil(MIN_DISPLAY_PX / max(height, width)))


def image_png(image: np.ndarray) -> bytes:
    """PNG of one (C, H, W) image in [0, 1], grey (C=1) or RGB (C=3), enlarged by display_factor with
    nearest-neighbour."""
    pixels = np.round(np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
    channels, height, width = pixels.shape
    picture = Image.fromarray(pixels[0] if channels == 1 else pixels.transpose(1, 2, 0))
    factor = display_factor(height, width)
    picture = picture.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def chart_png(draw: Callable[[Any], None], inches: tuple[float, float] = CHART_INCHES) -> bytes:
    figure = new_figure(inches, CHART_DPI, layout="constrained")
    draw(figure)
    return png_bytes(figure)


class Page:
    """The HTML body being built and the files to write beside it (name -> bytes)."""

    def __init__(self, images: Images) -> None:
        self.images = images
        self.parts: list[str] = []
        self.files: dict[str, bytes] = {}

    def add(self, *parts: str) -> None:
        self.parts.extend(parts)

    def heading(self, anchor: str, title: str) -> None:
        self.add(f'<h2 id="{anchor}">{esc(title)}</h2>')

    def picture(self, name: str, png: bytes, alt: str) -> str:
        self.files[name] = png
        with Image.open(io.BytesIO(png)) as decoded:
            width, height = decoded.size
        return f'<img src="{esc(name)}" width="{width}" height="{height}" alt="{esc(alt)}">'

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], row_keys: Sequence[str] | None = None,
              table_id: str = "") -> None:
        head = "".join(f"<th>{esc(cell)}</th>" for cell in header)
        body = []
        for k, row in enumerate(rows):
            key = f' data-key="{esc(row_keys[k])}"' if row_keys is not None else ""
            cells = "".join(f'<td class="n">{esc(cell)}</td>' if _numeric(cell) else f"<td>{esc(cell)}</td>"
                            for cell in row)
            body.append(f"<tr{key}>{cells}</tr>")
        table_attr = f' id="{esc(table_id)}"' if table_id else ""
        self.add(f"<table{table_attr}><tr>{head}</tr>{''.join(body)}</table>")

    def examples(self, split: str, indices: Sequence[int], captions: Sequence[str],
                 css_class: str = "") -> list[str]:
        """<figure>s of examples of one split: the image (when the data are here) and the caption."""
        stored = self.images.get(split, indices)
        figures = []
        for k, (index, caption) in enumerate(zip(indices, captions, strict=True)):
            image = ""
            if stored is not None:
                image = self.picture(f"{IMAGE_DIR}/{split}_{index}.png", image_png(stored[k]),
                                     f"{split} example {index}")
            css = f' class="{css_class}"' if css_class else ""
            figures.append(f"<figure{css}>{image}<figcaption>{caption}</figcaption></figure>")
        return figures

    def html(self, title: str) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f'<meta name="generator" content="{GENERATOR}"><title>{esc(title)}</title>'
                f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(self.parts)
                + f"\n<script>{COUNT_IMAGES_JS}</script>\n</body></html>\n")


def _numeric(cell: Any) -> bool:
    """Right-aligned cells: numbers, and n/a standing for one."""
    try:
        float(str(cell))
    except ValueError:
        return cell == "n/a"
    return True


def check_replaceable(out: Path) -> None:
    """An existing --out must be empty or a report this command wrote (it is replaced as a whole)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MeminfError(f"--out {out} exists and is not a directory; choose another --out")
    page = out / PAGE_NAME
    ours = page.is_file() and f'<meta name="generator" content="{GENERATOR}">' in page.read_text(errors="replace")
    if not ours and any(out.iterdir()):
        raise MeminfError(f"--out {out} exists and is not a meminf report; choose another --out (it would be "
                          "replaced as a whole)")


def write_report(out: Path, page: Page, title: str) -> Path:
    """Write the files into a temp dir beside `out`, then rename it onto `out` (replacing an earlier report)."""
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp.{socket.gethostname()}."))
    old = out.with_name(f".{out.name}.old.{socket.gethostname()}.{os.getpid()}")
    try:
        for name, data in {**page.files, PAGE_NAME: page.html(title).encode()}.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        tmp.chmod(0o755)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out / PAGE_NAME
