"""Kill and resume: a sweep SIGKILLed again and again, at random moments and at injected points
(mid-write, after the temp write before the rename), then relaunched with the same command, ends with
the same estimates as an uninterrupted sweep, bit for bit (pack=1 on CPU), and no stray file."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from src.contracts.records import find_records
from tests.conftest import TINY, cli_env, run_cli

pytestmark = pytest.mark.slow
SEEDS = "seed=0..15"
ESTIMATE_KEYS = ("mem", "mem_se", "mem_soft", "n_in", "n_out", "topk_idx", "topk_infl")


def sweep_command(out: Path, name: str) -> list[str]:
    return ["src.run", "-m", *TINY, "pack=1", f"paths.output_dir={out}", f"name={name}", SEEDS]


def kill_after(seconds: float, command: list[str], cwd: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", *command], cwd=cwd, env=cli_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    process.wait()


def estimates(sweep: Path, cwd: Path) -> dict[str, np.ndarray]:
    result = run_cli("src.estimate", str(sweep), cwd=cwd)
    assert result.returncode == 0, result.stderr
    with np.load(sweep / "estimates" / "estimates.npz", allow_pickle=False) as saved:
        return {key: saved[key] for key in ESTIMATE_KEYS}


def test_killed_sweep_resumes_to_the_uninterrupted_estimates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = sweep_command(out, "killed")
    for fault in ("before_rename:3", "mid_write:2", "before_rename:1"):
        killed = run_cli(*command, cwd=tmp_path, MEMINF_FAULT=fault)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert list((out / "killed").rglob("record.npz.tmp.*")), f"{fault} left no temp file to clean up"
    rng = np.random.default_rng(0)
    for delay in rng.uniform(4, 12, size=3):
        kill_after(float(delay), command, tmp_path)
    finished = run_cli(*command, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert len(find_records(out / "killed")) == 16
    assert not list(out.rglob("*.tmp.*")), "a stale temp file survived the resumed run"

    assert run_cli(*sweep_command(out, "uninterrupted"), cwd=tmp_path).returncode == 0
    resumed, reference = estimates(out / "killed", tmp_path), estimates(out / "uninterrupted", tmp_path)
    for key in ESTIMATE_KEYS:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
