"""The HTML report: every referenced file exists and decodes to the expected size and pixels, the numbers
on the page equal summary.json and naive recomputations, strings from data are escaped, the page renders
without the data, optional sections (removal, compare, per epoch) show their inputs, and output is atomic."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections import OrderedDict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import src.data.dataset
import src.data.images
from src.analyses.removal_table import COLUMNS as REMOVAL_COLUMNS
from src.analyses.removal_table import RemovalRow, summarize, write_outputs
from src.compare import main as compare_main
from src.contracts.estimates import Estimates, read_estimates
from src.contracts.records import FORMAT_VERSION, Record, record_path, write_record
from src.data.dataset import Dataset, load_dataset, split_images
from src.data.subsets import subset_mask
from src.estimate import main as estimate_main
from src.report import main
from src.util.tables import csv_rows

HOSTILE = "<script>alert('x')</script>&\"<b>bold</b>"
RUNS = 8
RATIO = 0.5
PLANTED_PAIRS = 6


# ----------------------------------------------------------------------------------------------- sweeps

def digits_cfg(label_noise: float = 0.05) -> dict[str, Any]:
    return {"name": "digits", "source": "digits", "split_seed": 0, "n_train": 1437, "label_noise": label_noise,
            "noise_seed": 0}


def npz_cfg(tmp_path: Path, size: int, n_train: int, n_test: int, nhwc: bool) -> dict[str, Any]:
    """An npz data set of random RGB images: uint8 NHWC or float32 NCHW."""
    rng = np.random.default_rng(size)
    shape = (size, size, 3) if nhwc else (3, size, size)
    images = [rng.integers(0, 256, (n, *shape), dtype=np.uint8) for n in (n_train, n_test)]
    if not nhwc:
        images = [(x / 255).astype(np.float32) for x in images]
    path = tmp_path / f"rgb{size}.npz"
    np.savez(path, x_train=images[0], y_train=np.arange(n_train) % 3, x_test=images[1], y_test=np.arange(n_test) % 3)
    return {"name": "npz", "source": "npz", "path": str(path), "num_classes": None, "label_noise": 0.0,
            "noise_seed": 0}


def write_sweep(sweep_dir: Path, dataset_cfg: dict[str, Any], data_dir: Path, name: str = "tiny",
                broken: tuple[int, ...] = ()) -> Dataset:
    """RUNS records of planted predictions on the real data set: a fifth of the training examples are right
    only when in the subset (memorized); PLANTED_PAIRS test examples are right only when a memorized training
    example of their class is in (influence 1); other test examples are right at random. The seeds in `broken`
    predict nothing right."""
    dataset = load_dataset(dataset_cfg, data_dir)
    y, y_test, classes = dataset.y_train, dataset.y_test, dataset.num_classes
    n, n_test = y.size, y_test.size
    rng = np.random.default_rng(1)
    flipped = np.isin(np.arange(n), dataset.flipped_idx)
    memorized = (rng.random(n) < 0.2) | flipped  # flipped labels are learnt only by models that saw them
    influencers = {j: int(np.flatnonzero(memorized & (y == y_test[j]))[0]) for j in range(min(PLANTED_PAIRS, n_test))
                   if np.any(memorized & (y == y_test[j]))}
    for seed in range(RUNS):
        mask = subset_mask(seed, n, RATIO)
        train_correct = mask | (~memorized & (rng.random(n) < 0.9))
        test_correct = rng.random(n_test) < 0.7
        for j, i in influencers.items():
            test_correct[j] = mask[i]
        if seed in broken:
            train_correct, test_correct = np.zeros(n, dtype=bool), np.zeros(n_test, dtype=bool)
        meta = {"format_version": FORMAT_VERSION, "dataset": dataset.name, "n_train": n, "n_test": n_test,
                "num_classes": classes, "data_fingerprint": dataset.fingerprint, "model": "planted",
                "ratio": RATIO, "salt": 0, "epochs": 1, "seed": seed, "experiment_hash": "h0",
                "experiment_name": name, "test_acc": float(test_correct.mean()),
                "train_in_acc": float(train_correct[mask].mean()), "versions": {}, "git": {}, "wall_time_s": 0.0,
                "config": {"dataset": dataset_cfg, "paths": {"data_dir": str(data_dir)}}}
        write_record(record_path(sweep_dir, seed), Record(
            meta=meta, subset_mask=mask, train_label=y, train_pred=np.where(train_correct, y, (y + 1) % classes),
            train_prob=np.where(train_correct, np.where(flipped, 0.95, 0.9), 0.1).astype(np.float32),
            test_label=y_test,
            test_pred=np.where(test_correct, y_test, (y_test + 1) % classes),
            test_prob=np.full(n_test, 0.5, dtype=np.float32), flipped_idx=dataset.flipped_idx,
            flipped_orig_label=dataset.y_train_orig[dataset.flipped_idx]))
    assert estimate_main([str(sweep_dir), "--gallery", "0", "--null-perms", "1"]) == 0
    return dataset


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset]:
    root = tmp_path_factory.mktemp("digits")
    dataset = write_sweep(root / "sweep", digits_cfg(), root / "data")
    return root / "sweep", dataset


# ------------------------------------------------------------------------------------------------- page

VOID = {"img", "br", "meta", "link", "input", "hr"}


@dataclasses.dataclass
class Parsed:
    images: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # attrs + "within": enclosing ids
    tables: dict[str, list[list[str]]] = dataclasses.field(default_factory=dict)
    keyed_rows: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    tags: dict[str, int] = dataclasses.field(default_factory=dict)
    captions: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # enclosing id -> figcaption texts
    body: dict[str, str] = dataclasses.field(default_factory=dict)
    text: str = ""


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Parsed()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.row: list[str] | None = None
        self.cell: list[str] | None = None
        self.caption: list[str] | None = None
        self.texts: list[str] = []

    def _within(self) -> list[str]:
        return [attrs["id"] for _, attrs in self.stack if "id" in attrs]

    def handle_starttag(self, tag: str, attr_list: list[tuple[str, str | None]]) -> None:
        attrs = {key: value or "" for key, value in attr_list}
        self.page.tags[tag] = self.page.tags.get(tag, 0) + 1
        if tag == "img":
            self.page.images.append({**attrs, "within": self._within(),
                                     "test": next((a["data-test"] for _, a in self.stack if "data-test" in a), None)})
        if tag == "body":
            self.page.body = attrs
        if tag == "tr":
            self.row = []
            if "data-key" in attrs:
                self.page.keyed_rows[attrs["data-key"]] = self.row
        if tag in ("td", "th"):
            self.cell = []
        if tag == "figcaption":
            self.caption = []
        if tag not in VOID:
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        if tag == "tr" and self.row is not None:
            table = next((a.get("id") for t, a in reversed(self.stack) if t == "table"), None)
            if table:
                self.page.tables.setdefault(table, []).append(self.row)
            self.row = None
        if tag == "figcaption" and self.caption is not None:
            within = self._within()
            self.page.captions.setdefault(within[-1] if within else "", []).append("".join(self.caption))
            self.caption = None
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        for part in (self.cell, self.caption):
            if part is not None:
                part.append(data)


def parse(path: Path) -> Parsed:
    parser = PageParser()
    parser.feed(path.read_text())
    parser.page.text = "".join(parser.texts)
    return parser.page


def check_files(report: Path, page: Parsed) -> dict[str, np.ndarray]:
    """Every <img> is a relative path to a file under the report that decodes to its width x height; returns
    the decoded pixels by src."""
    decoded = {}
    assert "://" not in (report / "index.html").read_text()
    for image in page.images:
        src = image["src"]
        path = (report / src).resolve()
        assert not src.startswith("/") and path.is_relative_to(report.resolve()) and path.is_file(), src
        with Image.open(path) as opened:
            opened.verify()
        with Image.open(path) as opened:
            opened.load()
            assert opened.size == (int(image["width"]), int(image["height"])), src
            decoded[src] = np.asarray(opened)
    return decoded


def example_indices(page: Parsed, within: str, split: str = "train") -> list[int]:
    prefix = f"img/{split}_"
    return [int(image["src"].removeprefix(prefix).removesuffix(".png")) for image in page.images
            if within in image["within"] and image["src"].startswith(prefix)]


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def naive_order(mem: np.ndarray, soft: np.ndarray, descending: bool) -> list[int]:
    sign = -1 if descending else 1
    defined = [i for i in range(mem.size) if not math.isnan(mem[i])]
    return sorted(defined, key=lambda i: (sign * mem[i], sign * soft[i], i))


def expected_pixels(dataset: Dataset, split: str, index: int, factor: int) -> np.ndarray:
    """The stored image as uint8 HWC (or HW), enlarged by `factor` with np.repeat (nearest-neighbour)."""
    image = np.round(np.clip(split_images(dataset, split, np.array([index]))[0], 0, 1) * 255).astype(np.uint8)
    image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


# ------------------------------------------------------------------------------------------------ tests

def test_digits_report_matches_summary_and_naive_numbers(digits: tuple[Path, Dataset]) -> None:
    sweep, dataset = digits
    assert main([str(sweep), "--gallery", "10", "--pairs", "3"]) == 0
    report = sweep / "report"
    page = parse(report / "index.html")
    pixels = check_files(report, page)
    summary = json.loads((sweep / "estimates" / "summary.json").read_text())
    est = load_npz(sweep / "estimates" / "estimates.npz")
    assert len(page.keyed_rows) >= 15
    for key, cells in page.keyed_rows.items():
        value = summary[key]
        if isinstance(value, float):
            assert float(cells[-1]) == pytest.approx(value, abs=5e-5), key
        else:
            assert cells[-1] == str(value), key
    assert f"{summary['pairs']} high-influence pairs" in page.text and summary["pairs"] >= PLANTED_PAIRS - 1
    mem, soft = est["mem"], est["mem_soft"]
    assert np.isnan(mem).any()  # 8 runs at ratio 0.5 leave some examples never in or never out
    assert example_indices(page, "gallery-most") == naive_order(mem, soft, descending=True)[:10]
    assert example_indices(page, "gallery-least") == naive_order(mem, soft, descending=False)[:10]
    flipped_shown = [i for i in example_indices(page, "gallery-most") if est["flipped"][i]]
    captions = page.captions["gallery-most"]
    assert flipped_shown and all(any(f"#{i} label" in c and f"(was {est['orig_label'][i]})" in c for c in captions)
                                 for i in flipped_shown)
    for row in page.tables["class-table"][1:]:
        label = int(row[0])
        values = mem[(est["train_label"] == label) & ~np.isnan(mem)]
        assert int(row[1]) == np.sum(est["train_label"] == label) and int(row[2]) == values.size
        assert float(row[3]) == pytest.approx(values.mean(), abs=5e-5)
        assert float(row[4]) == pytest.approx(np.mean(values >= 0.25), abs=5e-5)
    strongest = int(est["pair_test_idx"][est["pair_infl"] == est["pair_infl"].max()].min())  # ties: lowest index
    first = next(image for image in page.images if image["test"] is not None)
    assert int(first["test"]) == strongest and first["src"] == f"img/test_{strongest}.png"
    for name in (f"img/train_{example_indices(page, 'gallery-most')[0]}.png", f"img/test_{strongest}.png"):
        split, index = name.removeprefix("img/").removesuffix(".png").split("_")
        assert pixels[name].shape == (64, 64)  # 8 px grey, enlarged 8 times
        assert np.array_equal(pixels[name], expected_pixels(dataset, split, int(index), 8))
    assert page.tags["script"] == 1 and "no-images" not in (report / "index.html").read_text()
    assert est["mem_epoch"].shape == (0, mem.size) and "epoch-table" not in page.tables  # no epochs recorded


@pytest.mark.parametrize(("size", "n_train", "nhwc", "factor"), [(32, 40, True, 2), (224, 6, False, 1)])
def test_rgb_images_keep_pixels_and_size(tmp_path: Path, size: int, n_train: int, nhwc: bool, factor: int) -> None:
    dataset = write_sweep(tmp_path / "sweep", npz_cfg(tmp_path, size, n_train, 4, nhwc), tmp_path / "data")
    out = tmp_path / "out"
    assert main([str(tmp_path / "sweep"), "--out", str(out), "--gallery", "3"]) == 0
    page = parse(out / "index.html")
    pixels = check_files(out, page)
    shown = example_indices(page, "gallery-most")
    assert len(shown) == 3
    for index in shown:
        assert pixels[f"img/train_{index}.png"].shape == (size * factor, size * factor, 3)
        assert np.array_equal(pixels[f"img/train_{index}.png"], expected_pixels(dataset, "train", index, factor))


def test_without_data_the_page_says_so_and_renders_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = npz_cfg(tmp_path, 32, 30, 6, True)
    write_sweep(tmp_path / "sweep", cfg, tmp_path / "data")
    Path(cfg["path"]).unlink()
    monkeypatch.setattr(src.data.dataset, "_CACHE", OrderedDict())  # as in a fresh process: the data are gone
    assert main([str(tmp_path / "sweep"), "--gallery", "5"]) == 0
    report = tmp_path / "sweep" / "report"
    page = parse(report / "index.html")
    check_files(report, page)
    assert {image["src"] for image in page.images} == {"mem_hist.png", "mem_by_class.png"}
    assert len(page.captions["gallery-most"]) == 5 and page.keyed_rows["runs_used"][-1] == str(RUNS)
    note = [line for line in (report / "index.html").read_text().splitlines() if 'id="no-images"' in line]
    assert len(note) == 1 and "npz file not found" in note[0]


def test_strings_from_data_are_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = tmp_path / f"sweep{HOSTILE.replace('/', '_')}"
    write_sweep(sweep, npz_cfg(tmp_path, 32, 30, 6, True), tmp_path / "data", name=HOSTILE)
    real = src.data.images.dataset_from_meta

    def hostile_dataset(meta: dict) -> Dataset:
        dataset = real(meta)
        return dataclasses.replace(dataset, class_names=tuple(f"{HOSTILE}{c}" for c in range(dataset.num_classes)),
                                   train_paths=tuple(f"{HOSTILE}/{i}.png" for i in range(len(dataset.y_train))),
                                   test_paths=tuple(f"t{HOSTILE}/{i}.png" for i in range(len(dataset.y_test))))

    monkeypatch.setattr(src.data.images, "dataset_from_meta", hostile_dataset)
    compare_dir = tmp_path / "compare"
    assert estimate_main([str(sweep), "--out", str(tmp_path / "est2"), "--gallery", "0", "--null-perms", "1"]) == 0
    assert compare_main([str(sweep), str(tmp_path / "est2"), "--labels", f"{HOSTILE},b", "--out",
                         str(compare_dir)]) == 0
    assert main([str(sweep), "--compare", str(compare_dir), "--gallery", "4"]) == 0
    page = parse(sweep / "report" / "index.html")
    check_files(sweep / "report", page)
    assert page.tags["script"] == 1 and "b" not in page.tags  # only the page's own script; no injected tags
    assert f"meminf report: {HOSTILE}" in page.text and f"label 0 {HOSTILE}0" in page.text
    assert f"{HOSTILE}/" in page.text and f"t{HOSTILE}/" in page.text  # image paths shown, escaped
    assert page.tables["compare-table"][1][0] == HOSTILE


def test_removal_compare_and_epoch_sections(digits: tuple[Path, Dataset], tmp_path: Path) -> None:
    sweep, _ = digits
    estimates = tmp_path / "estimates"
    est = load_npz(sweep / "estimates" / "estimates.npz")
    rng = np.random.default_rng(0)
    mem_epoch = np.stack([est["mem"] * fraction for fraction in (0.2, 0.6, 1.0)])
    mem_epoch[:, rng.random(mem_epoch.shape[1]) < 0.1] = np.nan
    estimates.mkdir()
    np.savez(estimates / "estimates.npz", **{**est, "mem_epoch": mem_epoch, "epoch_list": np.array([1, 3, 10])})
    (estimates / "summary.json").write_text((sweep / "estimates" / "summary.json").read_text())
    removal = tmp_path / "removal"
    removal.mkdir()
    rows = [("none", None, "removed", 0, seed, 0, 0.9 + 0.01 * seed, None, 0) for seed in range(3)]
    rows += [("theta", 0.25, control, draw, seed, 100, 0.8 + 0.01 * seed + 0.02 * draw, 0.5 + 0.1 * seed, 7)
             for control, draws in (("removed", 1), ("random", 2)) for draw in range(draws) for seed in range(3)]
    (removal / "removal.csv").write_text(csv_rows(REMOVAL_COLUMNS, rows, exact=True))
    Image.new("RGB", (40, 30), (200, 10, 10)).save(removal / "removal.png")
    compare_dir = tmp_path / "compare"
    assert compare_main([str(sweep), str(estimates), "--out", str(compare_dir)]) == 0
    out = tmp_path / "report"
    assert main([str(sweep), "--estimates", str(estimates), "--removal", str(removal), "--compare",
                 str(compare_dir), "--out", str(out), "--gallery", "2", "--pairs", "1"]) == 0
    page = parse(out / "index.html")
    pixels = check_files(out, page)
    assert pixels["removal.png"].shape == (30, 40, 3) and {"compare.png", "mem_by_epoch.png"} <= set(pixels)
    epochs = page.tables["epoch-table"][1:]
    assert [int(row[0]) for row in epochs] == [1, 3, 10]
    for row, values in zip(epochs, mem_epoch, strict=True):
        defined = values[~np.isnan(values)]
        flipped = values[est["flipped"] & ~np.isnan(values)]
        assert float(row[1]) == pytest.approx(defined.mean(), abs=5e-5)
        assert float(row[2]) == pytest.approx(np.mean(defined >= 0.25), abs=5e-5)
        assert float(row[3]) == pytest.approx(flipped.mean(), abs=5e-5)
    removal_rows = page.tables["removal-table"][1:]
    assert [row[:3] for row in removal_rows] == [["none", "n/a", "removed"], ["theta", "0.25", "removed"],
                                                 ["theta", "0.25", "random"]]
    # random: per seed the mean over its two draws (0.81 + 0.01 s), then the mean over seeds 0..2
    assert removal_rows[2][7].startswith(f"{0.82:.4f} ± ")
    assert removal_rows[2][9].startswith(f"{-0.01:.4f} ± ")  # removed - random, paired by seed
    compare = json.loads((compare_dir / "compare.json").read_text())
    row = compare["pairs"][0]
    assert page.tables["compare-table"][1][:4] == [row["a"], row["b"], row["relation"], str(row["common"])]
    assert page.tables["compare-table"][1][5].startswith(f"{compare['pairs'][0]['spearman']:.3f}")


def test_unhealthy_runs_are_named_in_the_report(digits: tuple[Path, Dataset], tmp_path: Path) -> None:
    """Issue 20 §1: the summary names the runs at chance, in a table; the compare section says which input has
    them."""
    sweep = tmp_path / "broken"
    write_sweep(sweep, digits_cfg(), tmp_path / "data", name="broken", broken=(2,))
    compare_dir = tmp_path / "compare"
    assert compare_main([str(digits[0]), str(sweep), "--out", str(compare_dir)]) == 0
    out = tmp_path / "report"
    assert main([str(sweep), "--compare", str(compare_dir), "--out", str(out), "--gallery", "2", "--pairs", "1"]) == 0
    page = parse(out / "index.html")
    [[seed, test_acc, train_acc, why]] = page.tables["unhealthy-runs"][1:]
    assert (seed, test_acc, train_acc) == ("2", "0.0000", "0.0000") and why.startswith("test acc 0.0000 at chance")
    assert f"warning: 1 of {RUNS} runs unhealthy (seed 2: test acc 0.0000 at chance" in page.text
    assert [row[-1] for row in page.tables["compare-inputs"][1:]] == [
        "ok", "1 unhealthy run(s) used (seed 2); under-fit (in-subset train acc 0.8750 < 0.99)"]
    healthy = tmp_path / "healthy"
    assert main([str(digits[0]), "--out", str(healthy), "--gallery", "2", "--pairs", "1"]) == 0
    assert "unhealthy-runs" not in parse(healthy / "index.html").tables
    assert f"All {RUNS} runs healthy" in parse(healthy / "index.html").text


# ---------------------------------------------------------------------------- what embedded analyses were made from

@pytest.fixture(scope="module")
def earlier(digits: tuple[Path, Dataset], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Estimates of the digits sweep's experiment from its first half of runs (as before the sweep was extended)."""
    sweep, _ = digits
    root = tmp_path_factory.mktemp("earlier")
    for seed in range(RUNS // 2):
        target = record_path(root / "sweep", seed)
        target.parent.mkdir(parents=True)
        target.write_bytes(record_path(sweep, seed).read_bytes())
    assert estimate_main([str(root / "sweep"), "--out", str(root / "estimates"), "--gallery", "0",
                          "--null-perms", "1"]) == 0
    return root / "estimates"


def removal_of(directory: Path, est: Estimates) -> Path:
    """A removal experiment's outputs, written by its writer as if made from `est`."""
    rows = [RemovalRow("none", None, "removed", 0, seed, 0, 0.9, None, 0) for seed in range(2)]
    write_outputs(directory, rows, summarize(rows), est.provenance())
    return directory


def report_warnings(sweep: Path, out: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, Parsed]:
    capsys.readouterr()
    assert main([str(sweep), *args, "--out", str(out), "--gallery", "1", "--pairs", "0"]) == 0
    return capsys.readouterr().err, parse(out / "index.html")


def test_a_removal_made_from_earlier_estimates_is_shown_with_a_warning(
        digits: tuple[Path, Dataset], earlier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, _ = digits
    current = read_estimates(sweep)
    err, page = report_warnings(sweep, tmp_path / "own", capsys, "--removal",
                                str(removal_of(tmp_path / "own_removal", current)))
    assert err == "" and "removal-provenance" not in (tmp_path / "own" / "index.html").read_text()
    err, page = report_warnings(sweep, tmp_path / "old", capsys, "--removal",
                                str(removal_of(tmp_path / "old_removal", read_estimates(earlier))))
    expected = (f"the removal experiment in {tmp_path / 'old_removal'} selected from other estimates of this "
                f"experiment ({RUNS // 2} runs; this page: {RUNS} runs)")
    assert err.startswith(f"warning: {expected}") and err.count("\n") == 1
    assert expected in page.text and page.tables["removal-table"][1][0] == "none"
    (tmp_path / "old_removal" / "removal_source.json").unlink()  # as written before src.removal recorded it
    err, _ = report_warnings(sweep, tmp_path / "old", capsys, "--removal", str(tmp_path / "old_removal"))
    assert "records no estimates it was made from" in err and err.count("\n") == 1


def test_a_comparison_made_from_earlier_estimates_is_shown_with_a_warning(
        digits: tuple[Path, Dataset], earlier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, _ = digits
    assert compare_main([str(earlier), str(earlier), "--labels", "early,again", "--out", str(tmp_path / "cmp")]) == 0
    err, page = report_warnings(sweep, tmp_path / "report", capsys, "--compare", str(tmp_path / "cmp"))
    expected = (f"the comparison in {tmp_path / 'cmp'} used other estimates of this experiment (early: {RUNS // 2} "
                f"runs, again: {RUNS // 2} runs; this page: {RUNS} runs)")
    assert err.startswith(f"warning: {expected}") and err.count("\n") == 1 and expected in page.text
    assert compare_main([str(sweep), str(earlier), "--out", str(tmp_path / "cmp")]) == 0
    err, page = report_warnings(sweep, tmp_path / "report", capsys, "--compare", str(tmp_path / "cmp"))
    assert err == "" and "compare-table" in page.tables


def test_analyses_of_another_experiment_are_refused(digits: tuple[Path, Dataset], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_compare import write_estimates as planted_estimates

    sweep, _ = digits
    others = [planted_estimates(tmp_path / name, range(10), range(10), seeds=range(first, first + 8))
              for name, first in (("x", 0), ("y", 100))]
    assert compare_main([*map(str, others), "--out", str(tmp_path / "cmp")]) == 0
    removal = removal_of(tmp_path / "removal", read_estimates(others[0]))
    for option, directory, message in (("--compare", tmp_path / "cmp", "does not involve this page's estimates"),
                                       ("--removal", removal, "was made from estimates of planted")):
        capsys.readouterr()
        assert main([str(sweep), option, str(directory), "--out", str(tmp_path / "report")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        assert not (tmp_path / "report").exists()


def test_output_replaces_only_reports_and_leaves_no_temp(digits: tuple[Path, Dataset], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    sweep, _ = digits
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert main([str(sweep), "--out", str(foreign), "--gallery", "1", "--pairs", "0"]) == 2
    assert "is not a meminf report" in capsys.readouterr().err
    assert [path.name for path in foreign.iterdir()] == ["keep.txt"]
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--gallery", "1", "--pairs", "0"]) == 0
    (out / "img" / "stale.png").write_bytes(b"old")
    assert main([str(sweep), "--out", str(out), "--gallery", "1", "--pairs", "0"]) == 0
    assert not (out / "img" / "stale.png").exists() and (out / "index.html").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["foreign", "report"]
    assert main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no estimates.npz") and err.count("\n") == 1


def test_image_png_enlarges_small_images_only() -> None:
    from src.reporting.page import display_factor, image_png

    assert [display_factor(side, side) for side in (8, 28, 32, 63, 64, 224)] == [8, 3, 2, 2, 1, 1]
    with Image.open(io.BytesIO(image_png(np.full((1, 8, 12), 0.5)))) as opened:
        assert opened.mode == "L" and opened.size == (72, 48)
        assert np.all(np.asarray(opened) == 128)
