"""Every experiment config (conf/experiment/*.yaml) end to end: a sweep of two seeds for one epoch through the
real command line, then its estimates. The data stay the experiment's own (MNIST-5k, a CIFAR-100 file set the
test writes, last-layer features made by the last-layer command; the digits for a model recipe, which names no
data set); only the length of training is cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.test_datasets import CIFAR_LAYOUTS, write_fake_cifar

CONF = Path(__file__).resolve().parent.parent / "conf"
EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))
SHORT = ["trainer.max_epochs=1", "logger=none"]
# What each experiment needs besides SHORT: its data, a record.epochs that one epoch allows, a small influence pass.
EXTRA = {
    "fz_cifar100": ["dataset.verify_checksums=false", "trainer.max_epochs=1", "schedule.warmup_epochs=0"],
    "mem_epochs_mnist": ["record.epochs=[1]"],
    "turnover_mnist": ["estimator.influence_cap=20"],
    # The model recipes set no data set, so the digits stand in for the default MNIST-5k: one epoch of vit_small
    # on MNIST-5k, with every one of its 5,000 images evaluated, took 561 s for two seeds here (2 cores, load ~4).
    **{recipe: ["dataset=digits"] for recipe in ("cnn_small_adamw", "mobilenetv2_adamw", "vit_small_adamw")},
}


def write_cifar100(data_dir: Path) -> None:
    layout = CIFAR_LAYOUTS["cifar100"]
    write_fake_cifar(data_dir / layout["folder"], {"train": 24, "test": 6}, layout["label_key"], layout["meta"],
                     layout["num_classes"])


def lastlayer_features(tmp_path: Path) -> list[str]:
    """The last-layer sweep's dataset overrides, from features of a one-epoch fz_mnist model."""
    made = run_cli("src.lastlayer", "features", "experiment=fz_mnist", *SHORT, f"paths.output_dir={tmp_path}",
                   cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    command = next(line for line in made.stdout.splitlines() if line.startswith("sweep: "))
    return [word for word in command.split() if word.startswith("dataset.")]


def test_every_experiment_is_listed() -> None:
    assert {"fz_mnist", "fz_cifar100", "mem_epochs_mnist", "lastlayer_mnist", "turnover_mnist"} <= set(EXPERIMENTS)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_sweeps_and_estimates(experiment: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    extra = list(EXTRA.get(experiment, []))
    if experiment == "fz_cifar100":
        write_cifar100(data_dir)
    if experiment == "lastlayer_mnist":
        extra += lastlayer_features(tmp_path)
    common = [f"experiment={experiment}", *SHORT, *extra, f"paths.output_dir={tmp_path / 'out'}",
              f"paths.data_dir={data_dir}"]
    swept = run_cli("src.run", "-m", *common, "seed=0..1", cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr[-3000:]
    sweep = tmp_path / "out" / experiment
    if experiment == "turnover_mnist":
        runs = sorted((sweep / "turnover").glob("seed=*/estimates.npz"))
        assert len(runs) == 2
        estimated = run_cli("src.estimate", str(runs[0].parent), "--estimator", "turnover", cwd=tmp_path)
    else:
        assert len(list(sweep.glob("seed=*/record.npz"))) == 2
        estimated = run_cli("src.estimate", str(sweep), "--gallery", "0", cwd=tmp_path)
    assert estimated.returncode == 0, estimated.stderr[-3000:]
