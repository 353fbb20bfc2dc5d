"""wandb without credentials and without the network: training jobs (one run per job, packed too), the
aggregator and the comparison log offline runs whose contents are read back from the `.wandb` file; progress
bars follow `progress` (auto: a single run on a terminal, never a multirun)."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import src.estimate as estimate_cli
from src import compare as compare_cli
from src.contracts.records import find_records, read_meta, read_record, write_record
from src.errors import MeminfError
from src.tracking.progress import progress_enabled
from src.tracking.wandb import TOP_EXAMPLES, has_wandb_credentials, wandb_mode
from src.training.job import run_job
from tests.conftest import CONF, ROOT, TINY, cli_env, run_cli
from tests.wandb_offline import offline_runs, record_key

TERMINAL_ROWS, TERMINAL_COLUMNS = 24, 120


def _tiny_cfg(output_dir: Path, *overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*TINY, "trainer.max_epochs=1", f"paths.output_dir={output_dir}",
                                            *overrides])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five digits records (1 epoch, one packed job) and their estimates, written once for this module."""
    output = tmp_path_factory.mktemp("sweep")
    run_job(_tiny_cfg(output, "name=tracked", "seeds=[0,1,2,3,4]"))
    directory = output / "tracked"
    assert estimate_cli.main([str(directory), "--null-perms", "1"]) == 0
    return directory


def test_mode_auto_is_offline_without_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not has_wandb_credentials() and wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    assert wandb_mode("disabled") == "disabled"
    with pytest.raises(MeminfError, match="unknown"):
        wandb_mode("sometimes")


@pytest.mark.parametrize("seeds", ["[0]", "[0,1]"])
def test_training_job_logs_one_offline_run(no_network: list[Any], tmp_path: Path, seeds: str) -> None:
    written = run_job(_tiny_cfg(tmp_path / "out", "logger=wandb", "name=tracked", f"seeds={seeds}"))
    pack = len(written)
    job_dir = written[0].parent if pack == 1 else tmp_path / "out" / "tracked" / f"pack=0-{pack - 1}"
    runs = offline_runs(job_dir)
    assert len(runs) == 1  # one run per job, whatever the pack
    run = runs[0]
    assert run.run.run_group == "tracked" and run.run.job_type == "train" and run.run.display_name == \
        f"tracked/{job_dir.name}"
    assert set(run.run.tags) == {"dataset=digits", "model=mlp", "ratio=0.7", f"pack={pack}", "estimator=subsample"}
    config = {record_key(item): json.loads(item.value_json) for item in run.run.config.update}
    assert config["seeds"] == json.loads(seeds)
    assert {"train/loss", "train/acc", "epoch"} <= run.history_keys
    assert run.summary["epoch"] == 0


def test_estimate_wandb_run_matches_summary_json(no_network: list[Any], sweep: Path) -> None:
    out = sweep.parent / "estimates-wandb"
    assert estimate_cli.main([str(sweep), "--out", str(out), "--null-perms", "1", "--wandb"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    with np.load(out / "estimates.npz", allow_pickle=False) as archive:
        mem = archive["mem"]
    [run] = offline_runs(out)
    assert run.run.job_type == "aggregate" and run.run.run_group == "tracked"
    assert set(run.run.tags) == {"dataset=digits", "model=mlp", "ratio=0.7", "estimator=subsample"}
    config = {record_key(item): json.loads(item.value_json) for item in run.run.config.update}
    assert config["estimate"]["K"] == summary["runs_used"] == 5
    for key, name in (("examples_with_estimate", "examples_with_estimate"), ("memorized", "memorized"),
                      ("pairs", "pairs"), ("test_acc", "mean_test_acc"), ("train_acc_in_subset", "mean_train_in_acc"),
                      ("pairs_by_chance", "expected_false_pairs")):
        assert run.summary[key] == summary[name], key
    assert run.summary["mem_fraction"] == summary["memorized"] / summary["examples_with_estimate"]
    assert run.summary["reliability/pearson"] == summary["reliability"]["pearson"]
    assert run.summary["mem_mean"] == pytest.approx(float(np.nanmean(mem)), abs=1e-12)
    assert run.summary["mem_median"] == pytest.approx(float(np.nanmedian(mem)), abs=1e-12)
    assert run.summary["mem_histogram"]["_type"] == "histogram"
    assert sum(run.summary["mem_histogram"]["values"]) == int(np.sum(~np.isnan(mem)))
    assert run.summary["most_memorized"]["nrows"] == TOP_EXAMPLES
    assert run.summary["top_pairs"]["nrows"] == min(summary["pairs"], 32)
    assert {"most_memorized", "top_pairs", "mem_histogram"} <= run.history_keys
    assert not any(key.startswith(("mem/", "mem_se")) for key in run.summary)  # no per-example metrics
    assert run.artifact_files("estimates") == ["estimates.npz", "memorization.csv", "pairs.csv", "summary.json"]
    assert run.summary["gallery"]["_type"] == "image-file"  # gallery.png
    images = [path for path in run.artifact_files("run_table") if path.endswith(".png")]
    assert len(images) >= TOP_EXAMPLES  # the 8x8 digits of the most memorized examples


def test_estimate_wandb_run_names_unhealthy_runs(no_network: list[Any], sweep: Path, tmp_path: Path) -> None:
    """Issue 20 §1: a run that predicts nothing right is named in the aggregate run (summary and a table)."""
    broken = tmp_path / "broken"
    for path in find_records(sweep):
        record = read_record(path)
        if record.seed == 3:
            wrong = (record.train_label + 1) % int(record.meta["num_classes"])
            wrong_test = (record.test_label + 1) % int(record.meta["num_classes"])
            record = dataclasses.replace(record, train_pred=wrong, test_pred=wrong_test,
                                         meta={**record.meta, "test_acc": 0.0, "train_in_acc": 0.0})
        write_record(broken / path.relative_to(sweep), record)
    out = tmp_path / "estimates"
    assert estimate_cli.main([str(broken), "--out", str(out), "--null-perms", "1", "--wandb"]) == 0
    [run] = offline_runs(out)
    assert run.summary["run_health/unhealthy_runs"] == 1 and run.summary["run_health/unhealthy_seeds"] == [3]
    assert run.summary["run_health/runs_checked"] == 5 and run.summary["run_health/excluded_runs"] == 0
    runs = run.table("runs")
    assert [row[runs["columns"].index("healthy")] for row in runs["data"]] == [True, True, True, False, True]
    assert run.summary["unhealthy_runs"]["nrows"] == 1 and "unhealthy_runs" in run.history_keys


def test_compare_wandb_run_matches_compare_json(no_network: list[Any], sweep: Path, tmp_path: Path) -> None:
    estimates = str(sweep / "estimates")
    assert compare_cli.main([estimates, estimates, "--labels", "a,b", "--out", str(tmp_path / "cmp"),
                             "--wandb"]) == 0
    document = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    [run] = offline_runs(tmp_path / "cmp")
    assert run.run.job_type == "compare" and run.run.run_group == "compare:digits"
    [row] = document["pairs"]
    for metric in ("common", "pearson", "spearman", "jaccard_mem"):
        assert run.summary[f"first_pair/{metric}"] == row[metric]
    assert run.summary["first_pair/spearman"] == pytest.approx(1.0)
    assert run.summary["matrix_spearman"]["nrows"] == 2 and run.summary["pairs"]["nrows"] == 1
    assert run.artifact_files("compare") == ["compare.csv", "compare.json", "compare.png", "inputs/a/estimates.npz",
                                             "inputs/b/estimates.npz"]


def test_estimate_without_wandb_starts_no_run(sweep: Path) -> None:
    assert not (sweep / "estimates" / "wandb").exists()


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_auto_shows_bars_only_for_a_single_run_on_a_terminal() -> None:
    assert progress_enabled("auto", Stream(tty=True), multirun=False)
    assert not progress_enabled("auto", Stream(tty=True), multirun=True)
    assert not progress_enabled("auto", Stream(tty=False), multirun=False)
    assert progress_enabled(True, Stream(tty=False), multirun=True)
    assert not progress_enabled(False, Stream(tty=True), multirun=False)
    with pytest.raises(MeminfError, match="auto, true or false"):
        progress_enabled("sometimes", Stream(tty=True), multirun=False)


def run_on_terminal(*args: str, cwd: Path) -> tuple[int, str]:
    """`python -m <args>` with stdout and stderr on a pseudo-terminal; the exit code and all it printed."""
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, in which tqdm draws nothing: give it a terminal's size.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", TERMINAL_ROWS, TERMINAL_COLUMNS, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL,
                               stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        try:
            chunk = os.read(leader, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(timeout=120), output.decode(errors="replace")


@pytest.mark.slow
def test_progress_bar_on_a_terminal_for_one_run_never_in_a_multirun(tmp_path: Path) -> None:
    base = [*TINY, "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'out'}"]
    code, single = run_on_terminal("src.run", *base, "name=single", cwd=ROOT)
    assert code == 0, single
    assert "Epoch 0: 100%" in single
    code, multi = run_on_terminal("src.run", "-m", *base, "name=multi", "seed=0..1", "pack=1", cwd=ROOT)
    assert code == 0, multi
    assert "Epoch 0" not in multi and "it/s" not in multi
    assert "progress multi: 2/2 models (2/2 jobs), 0 in flight, 0 failed; " in multi  # per-seed lines: run.log
    job_log = (tmp_path / "out" / "multi" / "seed=1" / "run.log").read_text()
    assert "job seeds 1: 1 model(s), mean in-subset acc" in job_log and "job seeds 1:" not in multi
    assert [read_meta(path)["seed"] for path in find_records(tmp_path / "out" / "multi")] == [0, 1]


def test_aggregator_bars_follow_progress_both_ways(tmp_path: Path) -> None:
    """--progress draws the aggregator's bars on stderr even when it is no terminal; --no-progress never."""
    assert run_cli("src.run", "-m", *TINY, f"paths.output_dir={tmp_path}", "name=bars", "seed=0..2",
                   cwd=tmp_path).returncode == 0
    forced = run_cli("src.estimate", str(tmp_path / "bars"), "--progress", "--no-cache", "--gallery", "0",
                     cwd=tmp_path)
    silent = run_cli("src.estimate", str(tmp_path / "bars"), "--no-progress", "--no-cache", "--gallery", "0",
                     cwd=tmp_path)
    assert forced.returncode == silent.returncode == 0
    assert "records: 100%" in forced.stderr and "influence: 100%" in forced.stderr
    assert "records:" not in silent.stderr and "influence:" not in silent.stderr
