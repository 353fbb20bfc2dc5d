"""README.md as it stands: every Python block runs, and every shell command runs on tiny data or, where it
needs a GPU, a cluster or data that is not here, through --dry-run or its --help.

The blocks are extracted from the file at test time, not copied, so the first thing a user types keeps working.
A tiny sweep stands in for `outputs/fz_mnist` (the demo's 64 seeds, on the digits for one epoch) in a scratch directory.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
# What a command needs that a CPU test machine does not have: it goes through --help (python -m src.<x>) instead.
ABSENT = re.compile(r"trainer=gpu|dataset=cifar|dataset=imagenet|hydra/launcher=slurm")
TINY_FZ = ["dataset=digits", "trainer.max_epochs=1", "logger=none"]
ENV = {**cli_env(), "PYTHONPATH": str(ROOT)}


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == language]


def shell_commands() -> list[str]:
    """Every command of the README's bash blocks (comments and continuation lines joined)."""
    commands = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            command = line.split("#", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory whose outputs/fz_mnist is a tiny sweep of the fz_mnist experiment, estimated."""
    root = tmp_path_factory.mktemp("readme")
    trained = run_cli("src.run", "-m", "experiment=fz_mnist", *TINY_FZ, "seed=0..63", cwd=root)
    assert trained.returncode == 0, trained.stderr
    assert run_cli("src.estimate", "outputs/fz_mnist", cwd=root).returncode == 0
    return root


def plan(command: str, workspace: Path) -> list[str]:
    """The argv that tests `command` here (module docstring)."""
    words = shlex.split(command)
    if words[0] == "make":
        return ["make", "-n", "-C", str(ROOT), *words[1:]]
    assert words[:2] == ["python", "-m"], f"README command not understood by this test: {command}"
    module, args = words[2], words[3:]
    inputs = [arg for arg in args if arg.startswith("outputs/")]
    if ABSENT.search(command) or not all((workspace / arg).exists() for arg in inputs):
        return [sys.executable, "-m", module, "--help"]
    if module == "src.run":
        return [sys.executable, "-m", module, *args, "--dry-run"]
    return [sys.executable, "-m", module, *args]


def test_the_readme_shows_commands() -> None:
    commands = shell_commands()
    assert commands[:2] == ["make demo", "make test"], "the README starts with make demo and make test"
    assert len(blocks("python")) >= 1 and len(commands) > 10


def test_the_readme_names_every_data_switch_an_error_proposes() -> None:
    """A data error that says `set dataset.<key>=true|false` points at a setting the README explains."""
    source = "".join(path.read_text() for path in (ROOT / "src" / "data").glob("*.py"))
    proposed = set(re.findall(r"(dataset\.\w+)=(?:true|false)", source))
    assert {"dataset.download", "dataset.verify_checksums"} <= proposed
    assert sorted(key for key in proposed if f"`{key}" not in README.read_text()) == []


def test_the_readme_names_the_columns_of_a_packed_jobs_metrics(tmp_path: Path) -> None:
    """A packed job writes one metrics.csv with the members' means and each member's own columns (`seed=<k>`),
    as the README says."""
    from src.config.compose import compose_config
    from src.training.job import run_job

    cfg = compose_config(["dataset=digits", "model=mlp", "trainer.max_epochs=1", "logger=csv", "seeds=[0,1]",
                          f"paths.output_dir={tmp_path}", "name=packed"])
    run_job(cfg)
    [metrics] = (tmp_path / "packed").rglob("metrics.csv")
    assert metrics.parent.name == "pack=0-1"
    columns = metrics.read_text().splitlines()[0].split(",")
    logged = {re.sub(r"seed=\d+$", "seed=<k>", column) for column in columns if column not in ("epoch", "step")}
    sentence = next(line for line in " ".join(README.read_text().split()).split(". ") if "packed one" in line)
    assert logged and all(f"`{column}`" in sentence for column in logged), (logged, sentence)


def test_every_python_block_runs(workspace: Path) -> None:
    for block in blocks("python"):
        result = subprocess.run([sys.executable, "-c", block], cwd=workspace, env=ENV, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"{block}\n{result.stderr}"


@pytest.mark.slow
def test_every_shell_command_runs(workspace: Path) -> None:
    fresh = workspace / "fresh"  # dry runs plan new sweeps there, beside no records of another experiment
    fresh.mkdir(exist_ok=True)
    for command in shell_commands():
        argv = plan(command, workspace)
        result = subprocess.run(argv, cwd=fresh if "--dry-run" in argv else workspace, env=ENV,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command} (run as {' '.join(argv)}):\n{result.stderr[-2000:]}"
