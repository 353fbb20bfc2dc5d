"""wandb without credentials: a training job logs to an offline run and never needs the network."""

import os
from pathlib import Path

import pytest

from src.tracking import has_wandb_credentials, wandb_mode
from tests.conftest import TINY, run_cli


def test_mode_auto_is_offline_without_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not has_wandb_credentials() and wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    assert wandb_mode("disabled") == "disabled"


def test_job_writes_an_offline_wandb_run(tmp_path: Path) -> None:
    env_home = tmp_path / "home"
    env_home.mkdir()
    os.environ.pop("WANDB_MODE", None)
    result = run_cli("src.run", *[a for a in TINY if not a.startswith("logger")], "logger=wandb",
                     f"paths.output_dir={tmp_path / 'out'}", "name=tracked", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "out" / "tracked" / "seed=0" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
