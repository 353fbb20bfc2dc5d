"""`python -m src.run ... --dry-run`: the plan (seeds done/missing, jobs, storage, compute) without launching
or writing anything; the storage formula against real records; bad input fails with one line."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from src.config.compose import compose_config
from src.config.paths import sweep_dir
from src.contracts.records import find_records, read_meta
from src.data.dataset import load_dataset
from src.sweep.dryrun import record_bytes
from src.sweep.jobstate import JOBS_DIR, RUNNING, JobMarker, Launch, write_launch
from src.training.job import run_job
from tests.conftest import TINY, run_cli

# The sized record's metadata differs in host, wall time, pid, device and git state: within 1% of a real file.
STORAGE_TOLERANCE = 0.01
STARTED = 1_000_000.0  # a synthetic launch's start (Unix time)


def _cfg(output_dir: Path, *overrides: str) -> DictConfig:
    return compose_config([*TINY, "trainer.max_epochs=1", f"paths.output_dir={output_dir}", "name=planned",
                           *overrides])


@pytest.fixture(scope="module")
def two_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeds 0 and 1 of a digits sweep (1 epoch, one packed job); returns paths.output_dir."""
    output = tmp_path_factory.mktemp("dry")
    run_job(_cfg(output, "seeds=[0,1]", "dataset.label_noise=0.05"))
    return output


def _tree(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


def test_the_sized_record_has_the_real_records_layout_and_size(two_records: Path) -> None:
    cfg = _cfg(two_records, "dataset.label_noise=0.05")
    dataset = load_dataset(cfg.dataset, cfg.paths.data_dir)
    for path in find_records(sweep_dir(cfg)):
        estimated = record_bytes(cfg, dataset, read_meta(path)["seed"])
        # The same writer on the same layout: only the metadata's numbers and strings differ in length.
        assert abs(estimated / path.stat().st_size - 1) < STORAGE_TOLERANCE


def test_dry_run_counts_done_seeds_and_writes_nothing(two_records: Path, tmp_path: Path) -> None:
    before = _tree(two_records)
    result = run_cli("src.run", "-m", *TINY, "trainer.max_epochs=1", f"paths.output_dir={two_records}",
                     "name=planned", "dataset.label_noise=0.05", "seed=0..6", "pack=2", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _tree(two_records) == before and not list(tmp_path.iterdir())
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["seeds"] == "7 requested: 2 done, 5 to train"
    assert lines["jobs"] == f"{math.ceil(5 / 2)} job(s) of up to 2 model(s) (pack=2)"
    wall = np.mean([read_meta(path)["wall_time_s"] for path in find_records(two_records / "planned")])
    assert lines["compute"].startswith(f"{wall:.2f} s/model of training only (mean wall_time_s of the latest 2 "
                                       "records at pack 2 on cpu; job start-up not counted) x 5 = ")
    assert float(lines["compute"].split("= ")[1].split()[0]) == pytest.approx(wall * 5, abs=0.5)
    sizes = [path.stat().st_size for path in find_records(two_records / "planned")]
    assert f"measured {np.mean(sizes) / 1000:.1f} kB (2 records)" in lines["storage"]


def test_dry_run_shows_a_job_in_flight_and_estimates_from_the_latest_launch(two_records: Path,
                                                                           tmp_path: Path) -> None:
    """A launch of seeds 0..6 at pack 2 whose first job (seeds 0, 1) ended 20 s after it started, and a live job
    (this test's own process) training seeds 2 and 3: those are in flight, not missing, and the time per model
    is the launch's elapsed 10 s, not the records' training time."""
    output = tmp_path / "out"
    shutil.copytree(two_records, output)
    sweep = output / "planned"
    write_launch(sweep, Launch(STARTED, list(range(7)), list(range(7)), 2, "cpu", "BasicLauncher"))
    for path, written in zip(find_records(sweep), (STARTED + 10, STARTED + 20), strict=True):
        os.utime(path, (written, written))
    (sweep / JOBS_DIR).mkdir()
    (sweep / JOBS_DIR / "pack=2-3.json").write_text(json.dumps(asdict(JobMarker(
        RUNNING, [2, 3], time.time(), socket.gethostname(), os.getpid()))))
    result = run_cli("src.run", "-m", *TINY, "trainer.max_epochs=1", f"paths.output_dir={output}",
                     "name=planned", "dataset.label_noise=0.05", "seed=0..6", "pack=2", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert re.fullmatch(rf"7 requested: 2 done, 2 in flight \(pack=2-3: running [0-9.]+ s \(pid {os.getpid()} on "
                        rf"{socket.gethostname()}\)\), 3 to train", lines["seeds"]), lines["seeds"]
    assert lines["jobs"].endswith("; a launch now would train the 2 in flight again")
    launched = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(STARTED))
    assert lines["compute"] == (f"10.00 s/model elapsed, from its first job (2 models) of the launch of {launched} "
                                "(pack 2, cpu) x 3 = 30.0 s")


def test_dry_run_of_a_new_sweep_creates_no_directory(tmp_path: Path) -> None:
    output = tmp_path / "not" / "yet"
    result = run_cli("src.run", "-m", *TINY, f"paths.output_dir={output}", "seed=0..1999", "pack=16", "--dry-run",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "not").exists()
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["seeds"] == "2000 requested: 0 done, 2000 to train"
    assert lines["jobs"] == "125 job(s) of up to 16 model(s) (pack=16)"
    assert lines["compute"] == "unknown: no finished record at pack 16 on cpu"
    assert "(not created yet)" in lines["sweep"]


@pytest.mark.parametrize(("override", "message"), [
    ("subset.ratio=1.5", "error: subset.ratio=1.5 is outside (0, 1]"),
    ("model=nonexistent", "error: "),
])
def test_dry_run_of_a_bad_config_fails_with_one_line(tmp_path: Path, override: str, message: str) -> None:
    result = run_cli("src.run", "-m", *TINY, f"paths.output_dir={tmp_path / 'out'}", "seed=0..3", override,
                     "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_dry_run_refuses_an_unwritable_output_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("src.run", "-m", *TINY, f"paths.output_dir={blocker / 'out'}", "seed=0..3", "--dry-run",
                     cwd=tmp_path)
    assert result.returncode == 2 and "is not a writable directory" in result.stderr


def test_dry_run_plans_each_combination_of_a_multi_key_sweep_as_the_sweeper_does(tmp_path: Path) -> None:
    """A sweep over two models launched, then dry-run with one more seed: each combination's table counts the
    records the sweeper wrote for it (same experiment), and a sweep with nothing left says so."""
    sweep = [*TINY, "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'out'}", "model=mlp,linear"]
    launched = run_cli("src.run", "-m", *sweep, "seed=0..1", cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    result = run_cli("src.run", "-m", *sweep, "seed=0..2", "pack=16", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tables = [dict(line.split(None, 1) for line in table.splitlines()) for table in result.stdout.split("\n\n")]
    assert [table["combination"] for table in tables] == ["model=mlp", "model=linear"]
    assert [table["seeds"] for table in tables] == ["3 requested: 2 done, 1 to train"] * 2
    assert tables[0]["jobs"] == "1 job(s) of up to 1 model(s) (pack=16 clamped to the 1 seed(s) to train)"
    done = run_cli("src.run", "-m", *sweep, "seed=0..1", "pack=16", "--dry-run", cwd=tmp_path)
    assert [line.split(None, 1)[1] for line in done.stdout.splitlines() if line.startswith("jobs")] == \
        ["none: every seed is done"] * 2
    relaunched = run_cli("src.run", "-m", *sweep, "seed=0..1", "pack=16", cwd=tmp_path)
    assert relaunched.returncode == 0 and relaunched.stderr.count("2 done, 0 to train: nothing launches") == 2
    assert "clamped" not in relaunched.stderr
