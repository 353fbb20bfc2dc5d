"""benchmarks/gpu_check.py (issue 13 §5) at tiny sizes on the CPU, so that the GPU check cannot rot (its grouped
packs are src/models/grouped.py's, tested in tests/test_grouped.py)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"
TINY_RUN_TIMEOUT_S = 300  # ~15 s on 2 quiet cores; the machine is shared, so generous before calling it hung
# tiny configurations: 2 models x (vmap at packs 1, 2 + grouped at pack 2) x bf16 off/on x channels_last off/on
EAGER_CONFIGS = 2 * 3 * 2 * 2
# The same tolerances as tests/test_packing.py: fused kernels sum in another order than the single ones
ATOL, RTOL = 2e-4, 1e-3


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))  # the benchmark imports its neighbour machine.py as a script does
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path_factory.mktemp("gpu_check") / "lines.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=TINY_RUN_TIMEOUT_S)
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return done, lines


def test_tiny_run_succeeds_and_writes_a_line_per_configuration(tiny_run: tuple) -> None:
    done, lines = tiny_run
    assert done.returncode == 0, done.stderr[-3000:]
    eager = [line for line in lines if not line["compile"]]
    keys = {(ln["model"], ln["method"], ln["pack"], ln["precision"], ln["channels_last"]) for ln in eager}
    assert len(eager) == len(keys) == EAGER_CONFIGS
    assert {ln["model"] for ln in lines} == {"resnet18", "cnn_small"}
    assert {(ln["method"], ln["pack"]) for ln in eager} == {("vmap", 1), ("vmap", 2), ("grouped", 2)}
    assert all(ln["status"] == "ok" for ln in eager), [ln for ln in eager if ln["status"] != "ok"]
    assert all(ln["s_per_step"] > 0 and ln["timed_steps"] >= 1 for ln in eager)
    # one compiled line per model, of its fastest eager configuration; --tiny skips compiling
    compiled = [line for line in lines if line["compile"]]
    assert sorted(ln["model"] for ln in compiled) == ["cnn_small", "resnet18"]
    assert all(ln["status"] == "skipped" for ln in compiled)
    for line in compiled:
        fastest = min((ln for ln in eager if ln["model"] == line["model"]), key=lambda ln: ln["s_per_model_epoch"])
        assert (line["method"], line["pack"], line["precision"], line["channels_last"]) == (
            fastest["method"], fastest["pack"], fastest["precision"], fastest["channels_last"])


def test_tiny_run_checks_member_k_against_seed_k_alone(tiny_run: tuple) -> None:
    _, lines = tiny_run
    fp32 = [ln for ln in lines if ln["status"] == "ok" and ln["precision"] == "fp32"]
    assert len(fp32) == EAGER_CONFIGS // 2
    for line in fp32:
        check = line["check"]
        assert check["kind"] == "fp32" and check["passed"], line
        assert check["max_abs_state_diff"] <= ATOL and check["max_abs_logit_diff"] <= ATOL, line
    # pack 1 through Members is the plain module: bit for bit seed k alone
    assert all(ln["check"]["max_abs_state_diff"] == 0 for ln in fp32 if ln["pack"] == 1 and not ln["channels_last"])
    bf16 = [ln for ln in lines if ln["status"] == "ok" and ln["precision"] == "bf16"]
    assert bf16 and all(ln["check"]["kind"] == "bf16" and ln["check"]["passed"] for ln in bf16)


def test_tiny_run_prints_the_speedup_table(tiny_run: tuple) -> None:
    done, lines = tiny_run
    header = next(line for line in done.stdout.splitlines() if line.startswith("|") and "speed-up" in line)
    assert "s/model" in header
    rows = [line for line in done.stdout.splitlines() if line.startswith("|") and line not in (header,)
            and not line.startswith("|-")]
    assert len(rows) == len(lines)
    baselines = [ln for ln in lines if ln["method"] == "vmap" and ln["pack"] == 1 and ln["precision"] == "fp32"
                 and not ln["channels_last"] and not ln["compile"]]
    assert len(baselines) == 2 and all(ln["speedup"] == 1.0 for ln in baselines)
    assert any("1.00x" in row for row in rows)
    assert "best resnet18:" in done.stdout and "best cnn_small:" in done.stdout


@pytest.mark.parametrize("argv", [["--budget-s", "0"], ["--models", "vgg"], ["--device", "tpu"],
                                  ["--threads", "0"], ["--no-such-option"]])
def test_a_bad_argument_is_one_error_line(gpu_check: ModuleType, argv: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_error_line(gpu_check: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--device", "cuda", "--tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda: CUDA is not available") and "\n" not in err, err
