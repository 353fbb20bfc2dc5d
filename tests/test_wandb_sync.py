"""Issue 22 §4: every offline run of a sweep (training jobs, the aggregate run, the compare run) is found and
handed to one `wandb sync` by `python -m src.sync`, whatever the job layout; wandb leaves nothing in the sweep but
its run folders, and nothing in the home directory."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import src.estimate as estimate_cli
from src import compare as compare_cli
from src import sync as sync_cli
from src.tracking.sync import find_offline_runs, unique_runs
from src.tracking.wandb import DATA_DIR, PROCESS_FOLDERS, stage_artifacts_in_run
from src.training.job import run_job
from tests.conftest import offline_without_network, run_cli
from tests.test_tracking import _tiny_cfg
from tests.wandb_offline import OfflineRun

# A pack=1 sweep of two jobs and a pack=4 sweep of two jobs (1 epoch of the digits MLP each).
SWEEPS = {"wb1": ("[0]", "[1]"), "wb4": ("[0,1,2,3]", "[4,5,6,7]")}
JOB_DIRS = {"wb1/seed=0", "wb1/seed=1", "wb4/pack=0-3", "wb4/pack=4-7"}
# What wandb keeps in a `wandb/` folder beside its run folders: links to the latest run and its logs.
WANDB_LINKS = {"latest-run", "debug.log", "debug-internal.log"}
WOULD_SYNC = re.compile(r"Would sync (\d+) run\(s\):")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two sweeps trained with logger=wandb, each estimated with --wandb, and compared with --wandb (into
    wb1/compare): 7 offline runs. wandb's own folders are left to meminf (no WANDB_*_DIR set)."""
    root = tmp_path_factory.mktemp("sync")
    out = root / "out"
    with offline_without_network(root / "home"), pytest.MonkeyPatch.context() as monkeypatch:
        for variable in (*PROCESS_FOLDERS, DATA_DIR, "WANDB_DIR"):
            monkeypatch.delenv(variable)
        for name, jobs in SWEEPS.items():
            for seeds in jobs:
                run_job(_tiny_cfg(out, "logger=wandb", f"name={name}", f"seeds={seeds}"))
            assert estimate_cli.main([str(out / name), "--null-perms", "0", "--gallery", "0", "--wandb"]) == 0
        assert compare_cli.main([str(out / "wb1"), str(out / "wb4"), "--wandb"]) == 0
    return out


def test_sync_dry_run_reports_every_run_of_a_pack1_and_a_pack4_sweep(logged: Path) -> None:
    home = str(logged.parent / "home")
    alone = run_cli("wandb", "sync", "--dry-run", "wb1", cwd=logged, HOME=home)
    assert "No runs to sync." in alone.stderr  # what the issue saw: wandb sync does not look into the jobs
    result = run_cli("src.sync", "wb1", "wb4", "--dry-run", cwd=logged, HOME=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["wb1: 4 offline run(s)", "wb4: 3 offline run(s)",
                                          "wandb sync --dry-run of 7 run(s):"]
    [count] = WOULD_SYNC.findall(result.stderr)
    listed = [logged / line.split()[-1] for line in result.stderr.splitlines() if line.endswith(".wandb")]
    assert int(count) == len(listed) == len(set(listed)) == 7
    runs = {path.parent: OfflineRun(path.parent) for path in listed}
    assert Counter(run.run.job_type for run in runs.values()) == {"train": 4, "aggregate": 2, "compare": 1}
    assert {str(folder.parent.parent.relative_to(logged)) for folder, run in runs.items()
            if run.run.job_type == "train"} == JOB_DIRS
    assert {str(folder.parent.parent.relative_to(logged)) for folder, run in runs.items()
            if run.run.job_type != "train"} == {"wb1/estimates", "wb4/estimates", "wb1/compare"}


def stray_files(directory: Path) -> list[str]:
    """Whatever wandb wrote under `directory` outside its run folders and their `wandb/` folders' links."""
    stray = []
    for folder, subfolders, files in os.walk(directory):
        here = Path(folder)
        if here.name == "wandb":
            stray += [str(here / name) for name in subfolders + files if not name.startswith("offline-run-")
                      and not (name in WANDB_LINKS and (here / name).is_symlink())]
            subfolders.clear()  # a run folder holds what its run needs
        else:
            stray += [str(here / name) for name in subfolders + files if "wandb" in name and name != "wandb"]
    return stray


def test_nothing_but_run_folders_is_left_in_the_sweeps_or_home(logged: Path) -> None:
    assert stray_files(logged) == []
    home = logged.parent / "home"
    assert not any((home / folder / "wandb").exists() for folder in (".cache", ".config", ".local/share"))
    for path in logged.rglob("offline-run-*/*.wandb"):
        staged = [Path(entry.local_path) for artifact in OfflineRun(path.parent).artifacts
                  for entry in artifact.manifest.contents if not entry.ref]
        # wandb sync uploads an offline run's artifacts from these copies: they are in the run, and there (a
        # reference, the compare run's file:// entries to the estimates it compares, is not copied)
        assert all(file.is_file() and file.is_relative_to(path.parent) for file in staged), path


def test_a_run_stages_its_artifacts_in_its_own_folder(no_network: list[Any], tmp_path: Path) -> None:
    import wandb

    run = wandb.init(project="meminf", mode="offline", dir=str(tmp_path))
    stage_artifacts_in_run(run)
    (tmp_path / "numbers.csv").write_text("a,b\n1,2\n")
    artifact = wandb.Artifact("numbers", type="estimates")
    artifact.add_file(str(tmp_path / "numbers.csv"))
    run.log_artifact(artifact)
    run.log({"table": wandb.Table(columns=["a"], data=[[1]])})
    run.finish()
    [folder] = (tmp_path / "wandb").glob("offline-run-*")
    staged = [Path(entry.local_path) for artifact in OfflineRun(folder).artifacts
              for entry in artifact.manifest.contents]
    assert len(staged) == 2 and all(path.parent == folder / "artifacts" / "staging" for path in staged)
    assert stray_files(tmp_path / "wandb") == []


def test_runs_are_found_at_any_depth_each_once(tmp_path: Path) -> None:
    layout = {"seed=0/wandb/offline-run-1-a": True, "jobs/0-15/deeper/wandb/offline-run-2-b": True,
              "compare/wandb/offline-run-3-c": True, "seed=1/wandb/offline-run-4-d": False,  # no .wandb log yet
              "seed=2/wandb/run-5-e": True}  # an online run: wandb syncs those itself
    for folder, has_log in layout.items():
        (tmp_path / folder).mkdir(parents=True)
        if has_log:
            (tmp_path / folder / f"run-{folder[-1]}.wandb").write_bytes(b"")
    inside = tmp_path / "seed=0/wandb/offline-run-1-a/files/wandb/offline-run-9-z"  # a run's own files: not a run
    inside.mkdir(parents=True)
    (inside / "run-z.wandb").write_bytes(b"")
    (tmp_path / "seed=0/wandb/latest-run").symlink_to("offline-run-1-a")
    found = find_offline_runs([tmp_path, tmp_path / "seed=0"])
    expected = [tmp_path / folder for folder in ("compare/wandb/offline-run-3-c",
                                                 "jobs/0-15/deeper/wandb/offline-run-2-b",
                                                 "seed=0/wandb/offline-run-1-a")]
    assert found[tmp_path] == expected and found[tmp_path / "seed=0"] == expected[2:]
    assert unique_runs(found) == expected


def test_sync_refuses_a_missing_path_or_one_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert sync_cli.main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nothing'} is not a directory; give sweep, estimates " \
                                      "or compare directories\n"
    assert sync_cli.main([str(tmp_path), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no offline wandb runs") and error.count("\n") == 1
