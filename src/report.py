"""A static HTML page of one sweep's estimates: summary, memorization, galleries, high-influence pairs, and
(when given) removal curves and cross-architecture agreement.

    python -m src.report <sweep dir> [--estimates DIR] [--compare DIR] [--removal DIR] [--out DIR]
        [--gallery 32] [--pairs 12] [--influencers 6]

Inputs: the estimates (`--estimates`, default <sweep dir>/estimates: estimates.npz and summary.json, as
`python -m src.estimate` wrote them); a `python -m src.compare` output dir (`--compare`: compare.json and
compare.png); a removal experiment's dir (`--removal`: removal.csv, summarized by `src.removal.summarize`,
and removal.png when present). A per-epoch section appears when the estimates hold `mem_epoch` (E, n_train)
with E > 0 (the epochs from `epoch_list` when it has E entries, else 1..E).
Images come from the data set named by the metadata of the sweep's records (`src.data.dataset_from_meta`);
when it cannot be loaded here, or holds vectors, the page says so in one line and shows the numbers only.

Output (default <sweep dir>/report/): index.html with every PNG beside it, linked relatively (no external
URL, no script but one inline line that counts loaded images into <body data-images-loaded/-total>).
Example images are one PNG each, grey or RGB, enlarged by an integer factor with nearest-neighbour to at
least MIN_DISPLAY_PX on the longer side (larger images keep their size). Every string that comes from data
(names, labels, paths) is HTML-escaped. The page is built in a temp dir beside --out and renamed onto it
when complete; an existing --out is replaced only when it is a report this command wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import io
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from src.compare import estimates_dir
from src.data import Dataset, dataset_from_meta, split_images
from src.errors import MeminfError, cli_exit_code
from src.estimate import MEM_FRACTION_THRESHOLDS, most_memorized
from src.records import ARCHIVE_ERRORS, find_records, read_meta

PAGE_NAME = "index.html"
IMAGE_DIR = "img"
# <meta name="generator"> of every page: an existing --out is replaced only when its index.html carries it.
GENERATOR = "meminf src.report"
# Longer side, in pixels, below which example images are enlarged (integer nearest-neighbour factor): an
# 8 px digit becomes 64 px, a 28 px MNIST digit 84 px, a 32 px CIFAR image 64 px, 224 px stays as it is.
MIN_DISPLAY_PX = 64
ESTIMATE_ARRAYS = ("mem", "mem_se", "mem_soft", "train_label", "orig_label", "flipped", "test_label",
                   "pair_train_idx", "pair_test_idx", "pair_infl", "pair_infl_se", "test_acc")
PER_EPOCH_KEY = "mem_epoch"  # optional (epochs, n_train): mem from the predictions after each recorded epoch
EPOCH_LIST_KEY = "epoch_list"  # optional (epochs,): which epochs those are (default 1, 2, ...)
COMPARE_METRICS = ("pearson", "spearman", "jaccard_mem", "jaccard_pairs")
HIST_BINS = np.linspace(-1, 1, 41)  # mem lies in [-1, 1]; bins 0.05 wide
CHART_INCHES = (8.0, 3.2)
CHART_DPI = 100
CLASS_TICKS_UPRIGHT = 12  # up to this many classes, their names fit upright under the bars of one chart
SUMMARY_ROWS = (
    ("experiment_name", "experiment"), ("dataset", "data set"), ("model", "model"),
    ("runs_used", "runs used"), ("problems_excluded", "records excluded"), ("n_train", "training examples"),
    ("n_test", "test examples"), ("n_flipped", "flipped training labels"), ("ratio", "subset ratio"),
    ("mean_test_acc", "mean test accuracy"), ("mean_train_in_acc", "mean in-subset training accuracy"),
    ("examples_with_estimate", "examples with a mem estimate"),
    ("examples_without_estimate", "examples without (never in or never out)"),
    *((f"frac_mem_ge_{theta}", f"fraction with mem ≥ {theta}") for theta in MEM_FRACTION_THRESHOLDS),
    ("memorized", "memorized (mem ≥ θ_mem)"), ("pairs", "high-influence pairs"),
    ("expected_false_pairs", "pairs expected by chance"), ("pair_train_examples", "training examples in pairs"),
    ("pair_test_examples", "test examples in pairs"),
)
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


def fmt(value: Any, spec: str = ".4f") -> str:
    """A number for the page: ints as they are, floats by `spec`, None or NaN as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, str)):
        return str(value)
    return str(value) if isinstance(value, (int, np.integer)) else format(float(value), spec)


# ---------------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class SweepEstimates:
    """What `python -m src.estimate` wrote for one sweep."""

    path: Path
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def n_train(self) -> int:
        return int(self.summary["n_train"])


def load_estimates(directory: Path) -> SweepEstimates:
    directory = estimates_dir(directory)
    npz, summary_path = directory / "estimates.npz", directory / "summary.json"
    try:
        with np.load(npz, allow_pickle=False) as archive:
            missing = [key for key in ESTIMATE_ARRAYS if key not in archive.files]
            if missing:
                raise MeminfError(f"{npz}: missing arrays {', '.join(missing)}; rerun python -m src.estimate")
            arrays = {key: archive[key] for key in archive.files if key != "summary"}
        summary = json.loads(summary_path.read_text())
    except (*ARCHIVE_ERRORS, zipfile.BadZipFile) as err:
        raise MeminfError(f"{directory}: unreadable estimates ({err}); rerun python -m src.estimate") from err
    if not isinstance(summary, dict) or not all(key in summary for key, _ in SUMMARY_ROWS):
        raise MeminfError(f"{summary_path}: not a summary of this meminf version; rerun python -m src.estimate")
    n_train, n_test = summary["n_train"], summary["n_test"]
    for key, n in (("mem", n_train), ("mem_se", n_train), ("mem_soft", n_train), ("train_label", n_train),
                   ("orig_label", n_train), ("flipped", n_train), ("test_label", n_test)):
        if arrays[key].shape != (n,):
            raise MeminfError(f"{npz}: '{key}' has shape {arrays[key].shape}, expected ({n},); "
                              "rerun python -m src.estimate")
    return SweepEstimates(directory, summary, arrays)


@dataclass(frozen=True)
class Images:
    """The data set's images and class names, or why there are none (`problem`)."""

    dataset: Dataset | None = None
    problem: str | None = None

    def get(self, split: str, indices: Sequence[int]) -> np.ndarray | None:
        return None if self.dataset is None else split_images(self.dataset, split, np.asarray(indices, np.int64))

    def path(self, split: str, index: int) -> str | None:
        """The example's image file relative to the data set root (image-folder data sets), else None."""
        paths = None if self.dataset is None else getattr(self.dataset, f"{split}_paths", None)
        return None if paths is None else str(paths[index])

    def label(self, label: int) -> str:
        """The class index, followed by its name when the data set names it otherwise."""
        names = None if self.dataset is None else self.dataset.class_names
        return str(label) if names is None or str(names[label]) == str(label) else f"{label} {names[label]}"


def load_images(sweep_dir: Path, summary: Mapping[str, Any]) -> Images:
    """The data set of the sweep's records, found through the first record of that sweep (its fingerprint)."""
    meta = None
    for path in find_records(sweep_dir):
        with contextlib.suppress(MeminfError):
            candidate = read_meta(path)
            if candidate.get("data_fingerprint") == summary.get("data_fingerprint"):
                meta = candidate
                break
    if meta is None:
        return Images(problem=f"no record of this sweep under {sweep_dir} names its data set")
    try:
        dataset = dataset_from_meta(meta)
    except (MeminfError, OSError) as err:
        return Images(problem=str(err))
    if not dataset.is_image:
        return Images(problem="the data are feature vectors, not images")
    return Images(dataset=dataset)


def read_compare(directory: Path) -> dict[str, Any]:
    path = directory / "compare.json"
    try:
        document = json.loads(path.read_text())
        rows = [{key: row[key] for key in ("a", "b", "relation", "common", *COMPARE_METRICS,
                                           *(f"floor_{metric}" for metric in COMPARE_METRICS))}
                for row in document["pairs"]]
        inputs = [{key: item[key] for key in ("label", "model", "dataset", "runs", "mean_test_acc")}
                  for item in document["inputs"]]
        return {"rows": rows, "inputs": inputs, "notes": [str(note) for note in document["notes"]]}
    except OSError as err:
        raise MeminfError(f"{path}: unreadable ({err}); run python -m src.compare ... --out {directory}") from err
    except (ValueError, KeyError, TypeError) as err:
        raise MeminfError(f"{path}: not a compare.json of this meminf version ({err!r}); rerun src.compare") from err


# ---------------------------------------------------------------------------------------------- images

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


def chart_png(draw: Callable[[Figure], None], inches: tuple[float, float] = CHART_INCHES) -> bytes:
    figure = Figure(figsize=inches, dpi=CHART_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    draw(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ page

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


def summary_section(page: Page, est: SweepEstimates) -> None:
    summary = est.summary
    page.heading("summary", "Summary")
    page.table(["", "value"], [[label, fmt(summary[key])] for key, label in SUMMARY_ROWS],
               row_keys=[key for key, _ in SUMMARY_ROWS], table_id="summary-table")
    thresholds = summary.get("thresholds", {})
    pairs, expected = summary["pairs"], summary["expected_false_pairs"]
    if expected is None:
        chance = "no chance estimate (the aggregator ran no shuffles)"
    else:
        share = f"{expected / pairs:.0%}" if pairs else "n/a"
        chance = (f"{fmt(expected, '.1f')} expected by chance (shuffles: "
                  f"{', '.join(str(count) for count in summary.get('null_pair_counts', []))}), "
                  f"so about {fmt(pairs - expected, '.1f')} beyond chance: {share} of the pairs below could be "
                  "chance alone")
    page.add(f'<p id="pairs-vs-chance">{pairs} high-influence pairs (infl ≥ {esc(thresholds.get("theta_infl"))}, '
             f'mem ≥ {esc(thresholds.get("theta_mem"))}, same class); {esc(chance)}.</p>')
    accuracies = est.arrays["test_acc"]
    if accuracies.size:
        page.add(f"<p>Test accuracy over the {accuracies.size} runs: {fmt(accuracies.min())} to "
                 f"{fmt(accuracies.max())}.</p>")
    if summary.get("train_in_acc_warning"):
        page.add(f'<p class="note">warning: {esc(summary["train_in_acc_warning"])}</p>')


def histogram_section(page: Page, est: SweepEstimates, theta: float) -> None:
    mem = est.arrays["mem"]
    defined = mem[~np.isnan(mem)]

    def draw(figure: Figure) -> None:
        ax = figure.subplots()
        ax.hist(defined, bins=HIST_BINS, color="#4477aa")
        ax.axvline(theta, color="#cc3311", linestyle="--", label=f"θ_mem = {theta}")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)  # a bin of one example stays visible
        ax.set_xlim((min(0.0, float(defined.min())) if defined.size else -1.0) - 0.1, 1.05)  # mem < 0 is rare
        ax.set_xlabel("mem")
        ax.set_ylabel("training examples (log scale)")
        ax.set_title(f"mem of {defined.size} training examples with an estimate")
        ax.legend()

    page.heading("histogram", "Memorization histogram")
    page.add("<p>" + page.picture("mem_hist.png", chart_png(draw), "histogram of mem") + "</p>")


def class_rows(est: SweepEstimates, theta: float) -> list[list[Any]]:
    """Per trained class: examples, with an estimate, mean mem, fraction with mem ≥ θ, flipped labels."""
    mem, labels, flipped = est.arrays["mem"], est.arrays["train_label"], est.arrays["flipped"]
    rows = []
    for label in range(int(est.summary["num_classes"])):
        members = labels == label
        values = mem[members & ~np.isnan(mem)]
        rows.append([label, int(members.sum()), values.size, *mean_and_fraction(values, theta),
                     int(flipped[members].sum())])
    return rows


def mean_and_fraction(values: np.ndarray, theta: float) -> tuple[float | None, float | None]:
    """Mean of mem values (NaN already left out) and the fraction ≥ θ; None for no values."""
    if values.size == 0:
        return None, None
    return float(values.mean()), float(np.mean(values >= theta))


def class_section(page: Page, est: SweepEstimates, theta: float) -> None:
    rows = class_rows(est, theta)
    classes = [page.images.label(row[0]) for row in rows]

    def draw(figure: Figure) -> None:
        left, right = figure.subplots(1, 2)
        positions = np.arange(len(rows))
        for ax, column, title in ((left, 3, "mean mem"), (right, 4, f"fraction with mem ≥ {theta}")):
            ax.bar(positions, [np.nan if row[column] is None else row[column] for row in rows], color="#4477aa")
            many = len(rows) > CLASS_TICKS_UPRIGHT
            ax.set_xticks(positions, classes, rotation=90 if many else 0, fontsize=6 if many else 9)
            ax.set_title(title)
            ax.set_xlabel("trained label")

    page.heading("by-class", "Memorization by class")
    page.add("<p>" + page.picture("mem_by_class.png", chart_png(draw), "memorization by class") + "</p>")
    page.table(["class", "examples", "with estimate", "mean mem", f"fraction mem ≥ {theta}", "flipped"],
               [[classes[k], *(fmt(cell) for cell in row[1:])] for k, row in enumerate(rows)],
               table_id="class-table")


def path_line(images: Images, split: str, index: int) -> str:
    path = images.path(split, index)
    return "" if path is None else f'<br><span class="path">{esc(path)}</span>'


def train_caption(est: SweepEstimates, images: Images, index: int) -> str:
    label, orig = int(est.arrays["train_label"][index]), int(est.arrays["orig_label"][index])
    was = f" (was {esc(images.label(orig))})" if orig != label else ""
    return (f"#{index} label {esc(images.label(label))}{was}{path_line(images, 'train', index)}<br>"
            f"mem {fmt(est.arrays['mem'][index], '.2f')} ± {fmt(est.arrays['mem_se'][index], '.2f')}")


def gallery_section(page: Page, est: SweepEstimates, count: int, least: bool) -> None:
    mem, soft = est.arrays["mem"], est.arrays["mem_soft"]
    order = most_memorized(-mem, -soft, count) if least else most_memorized(mem, soft, count)
    anchor, title = ("least", "Least memorized") if least else ("most", "Most memorized")
    page.heading(anchor, f"{title} training examples ({order.size})")
    captions = [train_caption(est, page.images, int(index)) for index in order]
    page.add(f'<div class="grid" id="gallery-{anchor}">', *page.examples("train", order.tolist(), captions), "</div>")


def pairs_section(page: Page, est: SweepEstimates, tests_shown: int, influencers_shown: int) -> None:
    arrays = est.arrays
    infl, test_idx, train_idx = arrays["pair_infl"], arrays["pair_test_idx"], arrays["pair_train_idx"]
    order = np.lexsort((train_idx, test_idx, -infl))  # strongest pair first
    tests = list(dict.fromkeys(test_idx[order].tolist()))[:tests_shown]
    page.heading("pairs", f"High-influence pairs (the {len(tests)} test examples with the strongest)")
    if not tests:
        page.add("<p>No high-influence pairs.</p>")
    for test in tests:
        mine = order[test_idx[order] == test]
        shown = mine[:influencers_shown]
        test_caption = (f"test #{test} label {esc(page.images.label(int(arrays['test_label'][test])))}"
                        f"{path_line(page.images, 'test', test)}")
        captions = [f"{train_caption(est, page.images, int(train_idx[p]))}<br>"
                    f"infl {fmt(infl[p], '.2f')} ± {fmt(arrays['pair_infl_se'][p], '.2f')}" for p in shown]
        more = f"<p>+{mine.size - shown.size} more</p>" if mine.size > shown.size else ""
        page.add(f'<div class="pair" data-test="{test}">', *page.examples("test", [test], [test_caption], "test"),
                 *page.examples("train", train_idx[shown].tolist(), captions), more, "</div>")


def epoch_rows(est: SweepEstimates, per_epoch: np.ndarray, theta: float) -> list[list[Any]]:
    """Per epoch: its number, mean mem, fraction with mem ≥ θ, mean mem of flipped and of clean examples."""
    epochs = est.arrays.get(EPOCH_LIST_KEY)
    if epochs is None or epochs.shape != (len(per_epoch),):
        epochs = np.arange(1, len(per_epoch) + 1)
    flipped = est.arrays["flipped"].astype(bool)
    rows = []
    for epoch, values in zip(epochs.tolist(), per_epoch, strict=True):
        defined = ~np.isnan(values)
        mean_all, fraction = mean_and_fraction(values[defined], theta)
        mean_flipped = mean_and_fraction(values[defined & flipped], theta)[0]
        mean_clean = mean_and_fraction(values[defined & ~flipped], theta)[0]
        rows.append([epoch, mean_all, fraction, mean_flipped, mean_clean])
    return rows


def epoch_section(page: Page, est: SweepEstimates, theta: float) -> None:
    per_epoch = est.arrays[PER_EPOCH_KEY]
    page.heading("epochs", "Memorization by epoch")
    if per_epoch.ndim != 2 or per_epoch.shape[1] != est.n_train or per_epoch.dtype.kind != "f":
        page.add(f'<p class="note">{PER_EPOCH_KEY} has dtype {esc(per_epoch.dtype)} shape '
                 f"{esc(per_epoch.shape)}, expected floats (epochs, {est.n_train}); not shown.</p>")
        return
    rows = epoch_rows(est, per_epoch, theta)

    def draw(figure: Figure) -> None:
        left, right = figure.subplots(1, 2)
        epochs = [row[0] for row in rows]
        for column, label in ((1, "all"), (3, "flipped labels"), (4, "clean labels")):
            left.plot(epochs, [np.nan if row[column] is None else row[column] for row in rows], marker="o",
                      label=label)
        left.legend()
        right.plot(epochs, [np.nan if row[2] is None else row[2] for row in rows], marker="o")
        for ax, title in ((left, "mean mem"), (right, f"fraction with mem ≥ {theta}")):
            ax.set_xticks(epochs)
            ax.set_xlabel("epoch")
            ax.set_title(title)

    page.add("<p>" + page.picture("mem_by_epoch.png", chart_png(draw), "memorization by epoch") + "</p>")
    page.table(["epoch", "mean mem", f"fraction mem ≥ {theta}", "mean mem, flipped labels", "mean mem, clean labels"],
               [[fmt(cell) for cell in row] for row in rows], table_id="epoch-table")


def removal_section(page: Page, directory: Path) -> None:
    from src.removal import read_removal_csv, summarize

    summary = summarize(read_removal_csv(directory / "removal.csv"))
    page.heading("removal", "Removal experiment")
    png = directory / "removal.png"
    if png.is_file():
        page.add("<p>" + page.picture("removal.png", png.read_bytes(), "removal curves") + "</p>")

    def interval(entry: dict[str, Any], key: str) -> str:
        return f"{fmt(entry[key])} ± {fmt(entry[f'{key}_ci95'])}"

    page.table(["selection", "level", "control", "removed", "influenced tests", "seeds", "draws",
                "test acc (± 95% t)", "influenced acc (± 95% t)", "removed − control: test acc",
                "removed − control: influenced acc"],
               [[entry["selection"], fmt(entry["level"], "g"), entry["control"], entry["n_removed"],
                 entry["n_influenced"], entry["seeds"], entry["draws"], interval(entry, "test_acc"),
                 interval(entry, "influenced_acc"), interval(entry, "removed_minus_control_test_acc"),
                 interval(entry, "removed_minus_control_influenced_acc")] for entry in summary],
               table_id="removal-table")


def compare_section(page: Page, directory: Path) -> None:
    document = read_compare(directory)
    page.heading("compare", "Cross-architecture agreement")
    png = directory / "compare.png"
    if png.is_file():
        page.add("<p>" + page.picture("compare.png", png.read_bytes(), "agreement matrices") + "</p>")
    page.table(["input", "model", "data set", "runs", "mean test acc"],
               [[item["label"], item["model"], item["dataset"], item["runs"], fmt(item["mean_test_acc"])]
                for item in document["inputs"]])
    page.table(["a", "b", "relation", "common", *(f"{metric} [floor]" for metric in COMPARE_METRICS)],
               [[row["a"], row["b"], row["relation"], row["common"],
                 *(f"{fmt(row[metric], '.3f')} [{fmt(row[f'floor_{metric}'], '.3f')}]"
                   for metric in COMPARE_METRICS)] for row in document["rows"]], table_id="compare-table")
    page.add(*(f'<p class="note">note: {esc(note)}</p>' for note in document["notes"]))


def sections(est: SweepEstimates, options: argparse.Namespace) -> list[tuple[str, str]]:
    """(anchor, title) of the page's sections, for the links at the top."""
    optional = [("epochs", "by epoch", est.arrays.get(PER_EPOCH_KEY, np.zeros(0)).size > 0),
                ("removal", "removal", options.removal is not None),
                ("compare", "architectures", options.compare is not None)]
    return [("summary", "summary"), ("histogram", "histogram"), ("by-class", "by class"),
            ("most", "most memorized"), ("least", "least memorized"), ("pairs", "pairs"),
            *((anchor, title) for anchor, title, shown in optional if shown)]


def build_page(sweep_dir: Path, est: SweepEstimates, images: Images, options: argparse.Namespace) -> Page:
    summary = est.summary
    theta = float(summary["thresholds"]["theta_mem"])
    page = Page(images)
    page.add(f"<h1>meminf report: {esc(summary['experiment_name'])}</h1>",
             f"<p>Sweep {esc(sweep_dir)}; estimates {esc(est.path)}; {esc(summary['dataset'])}, "
             f"{esc(summary['model'])}.</p>")
    if images.problem is not None:
        page.add(f'<p class="note" id="no-images">Images not shown: {esc(images.problem)}.</p>')
    page.add("<p>" + " · ".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in sections(est, options))
             + "</p>")
    summary_section(page, est)
    histogram_section(page, est, theta)
    class_section(page, est, theta)
    gallery_section(page, est, options.gallery, least=False)
    gallery_section(page, est, options.gallery, least=True)
    pairs_section(page, est, options.pairs, options.influencers)
    shown = {anchor for anchor, _ in sections(est, options)}
    if "epochs" in shown:  # mem_epoch with E = 0: the sweep recorded no epochs
        epoch_section(page, est, theta)
    if "removal" in shown:
        removal_section(page, options.removal)
    if "compare" in shown:
        compare_section(page, options.compare)
    return page


# ---------------------------------------------------------------------------------------------- output

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


# ------------------------------------------------------------------------------------------------- CLI

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="directory holding the sweep's records")
    parser.add_argument("--estimates", type=Path, default=None, help="estimates dir (default <sweep dir>/estimates)")
    parser.add_argument("--compare", type=Path, default=None, help="a python -m src.compare --out dir")
    parser.add_argument("--removal", type=Path, default=None, help="a removal experiment dir (removal.csv)")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default <sweep dir>/report)")
    parser.add_argument("--gallery", type=int, default=32, help="examples in each gallery")
    parser.add_argument("--pairs", type=int, default=12, help="test examples shown with their influencers")
    parser.add_argument("--influencers", type=int, default=6, help="influencers shown per test example")
    args = parser.parse_args(argv)
    for name in ("gallery", "pairs", "influencers"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    return args


def run(args: argparse.Namespace) -> None:
    est = load_estimates(args.estimates if args.estimates is not None else args.sweep_dir)
    out = args.out if args.out is not None else args.sweep_dir / "report"
    check_replaceable(out)
    images = load_images(args.sweep_dir, est.summary)
    page = build_page(args.sweep_dir, est, images, args)
    path = write_report(out, page, f"meminf report: {est.summary['experiment_name']}")
    if images.problem is not None:
        print(f"images not shown: {images.problem}")
    print(f"wrote {path} ({len(page.files)} images and charts)")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return cli_exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
