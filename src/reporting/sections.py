"""The sections of the report page: summary, histograms, galleries, pairs, per-epoch, removal and compare."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from src.contracts.estimates import (
    MEM_FRACTION_THRESHOLDS,
    RUN_HEALTH,
    Estimates,
    effect_line,
    health_line,
    unhealthy_runs,
)
from src.data.images import Images
from src.errors import MeminfError
from src.estimators.subsample.reliability import format_reliability
from src.reporting.page import Page, chart_png, esc
from src.util.tables import fmt

HIST_BINS = np.linspace(-1, 1, 41)  # mem lies in [-1, 1]; bins 0.05 wide
PAIR_ARRAYS = ("pair_train_idx", "pair_test_idx", "pair_infl", "pair_infl_se")
PER_EPOCH_KEY = "mem_epoch"  # optional (epochs, n_train): mem from the predictions after each recorded epoch
EPOCH_LIST_KEY = "epoch_list"  # optional (epochs,): which epochs those are (default 1, 2, ...)
COMPARE_METRICS = ("pearson", "spearman", "jaccard_mem", "jaccard_pairs")
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

def read_compare(directory: Path) -> dict[str, Any]:
    path = directory / "compare.json"
    try:
        document = json.loads(path.read_text())
        rows = [{key: row[key] for key in ("a", "b", "relation", "common", *COMPARE_METRICS,
                                           *(f"floor_{metric}" for metric in COMPARE_METRICS))}
                for row in document["pairs"]]
        inputs = [{**{key: item[key] for key in ("label", "model", "dataset", "runs", "mean_test_acc",
                                                 "experiment_name", "experiment_hash", "estimator")},
                   "estimates_fingerprint": item.get("estimates_fingerprint"),  # None: an older src.compare
                   "warnings": item.get("warnings")} for item in document["inputs"]]
        return {"rows": rows, "inputs": inputs, "notes": [str(note) for note in document["notes"]]}
    except OSError as err:
        raise MeminfError(f"{path}: unreadable ({err}); run python -m src.compare ... --out {directory}") from err
    except (ValueError, KeyError, TypeError) as err:
        raise MeminfError(f"{path}: not a compare.json of this meminf version ({err!r}); rerun src.compare") from err


def summary_section(page: Page, est: Estimates) -> None:
    summary = est.summary
    page.heading("summary", "Summary")
    page.table(["", "value"], [[label, fmt(summary.get(key))] for key, label in SUMMARY_ROWS],
               row_keys=[key for key, _ in SUMMARY_ROWS], table_id="summary-table")
    thresholds = summary.get("thresholds", {})
    pairs, expected = summary.get("pairs"), summary.get("expected_false_pairs")
    if pairs is None:
        page.add(f'<p id="pairs-vs-chance">Estimator {esc(est.estimator)} gives no influence pairs.</p>')
    elif expected is None:
        chance = "no chance estimate (the aggregator ran no shuffles)"
    else:
        share = f"{expected / pairs:.0%}" if pairs else "n/a"
        chance = (f"{fmt(expected, '.1f')} expected by chance (shuffles: "
                  f"{', '.join(str(count) for count in summary.get('null_pair_counts', []))}), "
                  f"so about {fmt(pairs - expected, '.1f')} beyond chance: {share} of the pairs below could be "
                  "chance alone")
    if pairs is not None:
        page.add(f'<p id="pairs-vs-chance">{pairs} high-influence pairs (infl ≥ {esc(thresholds.get("theta_infl"))},'
                 f' mem ≥ {esc(thresholds.get("theta_mem"))}, same class); {esc(chance)}.</p>')
    reliability = format_reliability(summary["reliability"]) if summary.get("reliability") else None
    if reliability:
        page.add(f'<p id="reliability">{esc(reliability)}.</p>')
    accuracies = est.arrays.get("test_acc", np.zeros(0))
    if accuracies.size:
        page.add(f"<p>Test accuracy over the {accuracies.size} runs: {fmt(accuracies.min())} to "
                 f"{fmt(accuracies.max())}.</p>")
    if summary.get("train_in_acc_warning"):
        page.add(f'<p class="note">warning: {esc(summary["train_in_acc_warning"])}</p>')
    health_section(page, summary)


def health_section(page: Page, summary: dict[str, Any]) -> None:
    """The runs that did not train (the summary's run_health), what leaving them out changed, or that all
    trained; nothing for estimates written before the check."""
    health = summary.get(RUN_HEALTH)
    if health is None:
        return
    unhealthy = unhealthy_runs(summary)
    if not unhealthy:
        page.add(f'<p id="run-health">All {health["runs_checked"]} runs healthy ({esc(health["rule"])}).</p>')
        return
    page.add(f'<p class="note" id="run-health">warning: {esc(health_line(summary))}</p>')
    effect = effect_line(summary)
    if effect:
        page.add(f'<p class="note" id="run-health-effect">{esc(effect)}</p>')
    page.table(["unhealthy seed", "test acc", "in-subset train acc", "why"],
               [[run["seed"], fmt(run.get("test_acc")), fmt(run.get("train_in_acc")), "; ".join(run["reasons"])]
                for run in unhealthy], table_id="unhealthy-runs")


def histogram_section(page: Page, est: Estimates, theta: float) -> None:
    mem = est.arrays["mem"]
    defined = mem[~np.isnan(mem)]

    def draw(figure: Any) -> None:
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


def class_rows(est: Estimates, theta: float) -> list[list[Any]]:
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


def class_section(page: Page, est: Estimates, theta: float) -> None:
    rows = class_rows(est, theta)
    classes = [page.images.label(row[0]) for row in rows]

    def draw(figure: Any) -> None:
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


def train_caption(est: Estimates, images: Images, index: int) -> str:
    label, orig = int(est.arrays["train_label"][index]), int(est.arrays["orig_label"][index])
    was = f" (was {esc(images.label(orig))})" if orig != label else ""
    se = f" ± {fmt(est.arrays['mem_se'][index], '.2f')}" if est.has("mem_se") else ""
    return (f"#{index} label {esc(images.label(label))}{was}{path_line(images, 'train', index)}<br>"
            f"mem {fmt(est.arrays['mem'][index], '.2f')}{se}")


def gallery_section(page: Page, est: Estimates, count: int, least: bool) -> None:
    order = est.most_memorized(count, least=least)
    anchor, title = ("least", "Least memorized") if least else ("most", "Most memorized")
    page.heading(anchor, f"{title} training examples ({order.size})")
    captions = [train_caption(est, page.images, int(index)) for index in order]
    page.add(f'<div class="grid" id="gallery-{anchor}">', *page.examples("train", order.tolist(), captions), "</div>")


def pairs_section(page: Page, est: Estimates, tests_shown: int, influencers_shown: int) -> None:
    arrays = est.arrays
    if not est.has(*PAIR_ARRAYS):
        page.heading("pairs", "High-influence pairs")
        page.add(f"<p>Estimator {esc(est.estimator)} gives no influence pairs.</p>")
        return
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


def epoch_rows(est: Estimates, per_epoch: np.ndarray, theta: float) -> list[list[Any]]:
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


def epoch_section(page: Page, est: Estimates, theta: float) -> None:
    per_epoch = est.arrays[PER_EPOCH_KEY]
    page.heading("epochs", "Memorization by epoch")
    if per_epoch.ndim != 2 or per_epoch.shape[1] != est.n_train or per_epoch.dtype.kind != "f":
        page.add(f'<p class="note">{PER_EPOCH_KEY} has dtype {esc(per_epoch.dtype)} shape '
                 f"{esc(per_epoch.shape)}, expected floats (epochs, {est.n_train}); not shown.</p>")
        return
    rows = epoch_rows(est, per_epoch, theta)

    def draw(figure: Any) -> None:
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


def provenance_note(page: Page, anchor: str, warning: str | None) -> None:
    """The one-line warning about what an embedded analysis was made from (src/reporting/provenance.py)."""
    if warning is not None:
        page.add(f'<p class="note" id="{anchor}-provenance">warning: {esc(warning)}</p>')


def removal_section(page: Page, directory: Path, warning: str | None = None) -> None:
    from src.analyses.removal_table import read_removal_csv, summarize

    summary = summarize(read_removal_csv(directory / "removal.csv"))
    page.heading("removal", "Removal experiment")
    provenance_note(page, "removal", warning)
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


def compare_section(page: Page, directory: Path, warning: str | None = None) -> None:
    document = read_compare(directory)
    page.heading("compare", "Cross-architecture agreement")
    provenance_note(page, "compare", warning)
    png = directory / "compare.png"
    if png.is_file():
        page.add("<p>" + page.picture("compare.png", png.read_bytes(), "agreement matrices") + "</p>")
    page.table(["input", "model", "data set", "runs", "mean test acc", "health"],
               [[item["label"], item["model"], item["dataset"], item["runs"], fmt(item["mean_test_acc"]),
                 "not checked" if item["warnings"] is None else "; ".join(item["warnings"]) or "ok"]
                for item in document["inputs"]], table_id="compare-inputs")
    page.table(["a", "b", "relation", "common", *(f"{metric} [floor]" for metric in COMPARE_METRICS)],
               [[row["a"], row["b"], row["relation"], row["common"],
                 *(f"{fmt(row[metric], '.3f')} [{fmt(row[f'floor_{metric}'], '.3f')}]"
                   for metric in COMPARE_METRICS)] for row in document["rows"]], table_id="compare-table")
    page.add(*(f'<p class="note">note: {esc(note)}</p>' for note in document["notes"]))


def sections(est: Estimates, options: argparse.Namespace) -> list[tuple[str, str]]:
    """(anchor, title) of the page's sections, for the links at the top."""
    optional = [("epochs", "by epoch", est.arrays.get(PER_EPOCH_KEY, np.zeros(0)).size > 0),
                ("removal", "removal", options.removal is not None),
                ("compare", "architectures", options.compare is not None)]
    return [("summary", "summary"), ("histogram", "histogram"), ("by-class", "by class"),
            ("most", "most memorized"), ("least", "least memorized"), ("pairs", "pairs"),
            *((anchor, title) for anchor, title, shown in optional if shown)]


def build_page(sweep_dir: Path, est: Estimates, images: Images, options: argparse.Namespace,
               warnings: dict[str, str] | None = None) -> Page:
    """The page; `warnings`: per embedded section's anchor, what it was made from (src/reporting/provenance.py)."""
    warnings = warnings or {}
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
        removal_section(page, options.removal, warnings.get("removal"))
    if "compare" in shown:
        compare_section(page, options.compare, warnings.get("compare"))
    return page
