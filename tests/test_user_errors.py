"""User mistakes, tried as a new user would, one table per command: each is refused with one `error:` line on
stderr and exit code 2 (130 for an interrupt), before anything launches, and the output tree is byte for byte
what it was before the call."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.util.cli import INTERRUPTED, CtrlC, cli_exit_code
from tests.conftest import TINY, cli_env, options_having, run_cli, unprivileged

ROOT = Path(__file__).resolve().parent.parent

RUN_CASES = {
    "misspelt boolean": (["overwrite=flase"], "overwrite='flase' is not a boolean"),
    "boolean as a word": (["record.save_model=no"], "record.save_model='no' is not a boolean"),
    "ratio not a number": (["subset.ratio=abc"], "subset.ratio=abc must be a number"),
    "repeats not a number": (["subset.repeats=abc"], "subset.repeats=abc must be an integer"),
    "repeats zero": (["subset.repeats=0"], "subset.repeats=0 must be an integer >= 1"),
    "repeats a boolean": (["subset.repeats=true"], "subset.repeats=True must be an integer"),
    "label noise not a number": (["dataset.label_noise=abc"], "dataset.label_noise=abc must be a number"),
    "lr not a number": (["optim.lr=abc"], "optim.lr='abc' must be a number"),
    "lr zero": (["optim.lr=0"], "optim.lr=0 is outside (0, inf)"),
    "negative weight decay": (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 is outside [0, inf)"),
    "momentum one": (["optim.momentum=1.0"], "optim.momentum=1.0 is outside [0, 1)"),
    "betas of one": (["optim=adamw", "optim.betas=[0.9,1.0]"], "optim.betas=[0.9, 1.0] must be two numbers"),
    "trainer key misspelt": (["trainer.max_epoch=1"], "trainer.max_epoch is not a setting; did you mean "
                                                      "trainer.max_epochs?"),
    "trainer key added misspelt": (["+trainer.max_epoch=1"], "did you mean trainer.max_epochs?"),
    "root key added misspelt": (["+batch_sise=64"], "batch_sise is not a setting; did you mean batch_size?"),
    "optimizer key misspelt": (["+optim.momentun=0.5"], "did you mean optim.momentum?"),
    "model misspelt": (["model=mpl"], "model=mpl is unknown; choose one of"),
    "GPU on a CPU machine": (["trainer=gpu"], "needs a GPU and this machine has none"),
    "DDP with packing": (["trainer=ddp", "trainer.accelerator=cpu", "pack=2"], "packing and DDP do not combine"),
    "a model too large for 8 px digits": (["model=inception_v3"], "cannot run on inputs of shape"),
    "a seed twice": (["seed=0,0,1"], "names a seed twice"),
    "a seed range with a dash": (["seed=0-31"], "seed=0-31: a range of seeds is written a..b (inclusive): -m "
                                                "seed=0..31"),
    "seed and seeds": (["seeds=[0,1]"], "seed=... and seeds=[...] both given"),
    "unknown record score": (["record.scores=[bogus]"], "record.scores=['bogus'] must name each of"),
    "hydra setting of the wrong type": (["hydra.sweeper.max_batch_size=abc"],
                                        "hydra.sweeper.max_batch_size=abc must be an integer"),
    "-m with --cfg": (["--cfg", "job"], "--cfg prints for one job and does not combine with -m"),
}


def tree(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() if path.is_file() else b""
            for path in sorted(directory.rglob("*"))}


def one_error(result: subprocess.CompletedProcess[str], expected: str, code: int = 2) -> None:
    assert result.returncode == code, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", RUN_CASES)
def test_run_refuses_before_launch(case: str, tmp_path: Path) -> None:
    extra, expected = RUN_CASES[case]
    seeds = [] if any(arg.startswith("seed=") for arg in extra) else ["seed=0..1"]
    before = tree(tmp_path)
    for dry in ([], ["--dry-run"]):
        if dry and "--cfg" in extra:
            continue
        result = run_cli("src.run", "-m", *TINY, f"paths.output_dir={tmp_path / 'out'}", *extra, *seeds, *dry,
                         cwd=tmp_path)
        one_error(result, expected)
        assert tree(tmp_path) == before, "a refused launch left files behind"


def test_a_failing_job_leaves_no_directory(tmp_path: Path) -> None:
    """A job that fails inside (every member's loss diverges) leaves no seed, pack or sweep directory."""
    failing = run_cli("src.run", "-m", *TINY, f"paths.output_dir={tmp_path / 'out'}", "seed=2..3", "name=other",
                      "optim.lr=1e30", "trainer.max_epochs=1", cwd=tmp_path)
    assert failing.returncode == 2 and "training loss became" in failing.stderr, failing.stderr[-2000:]
    assert not (tmp_path / "out" / "other").exists()


def terminal_sigint() -> None:
    """SIGINT as a user's Ctrl-C finds it in a terminal. A shell's background job starts with SIGINT ignored and
    a test runner may start the tests with it blocked; a child keeps both, and Python keeps them too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_says_what_finished_and_exits_130(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "src.run", "-m", *TINY, "trainer.max_epochs=50", "pack=1",
                                f"paths.output_dir={tmp_path / 'out'}", "name=stopped", "seed=0..5"], cwd=tmp_path,
                               env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=terminal_sigint)
    deadline = time.time() + 120
    while not list((tmp_path / "out" / "stopped").glob("seed=*/run.log")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    # -SIGINT when the Ctrl-C landed in exec() of a string during an import (a dataclass being made): CPython
    # then ends the process by SIGINT whatever sys.exit said; a shell shows both as 130.
    assert process.returncode in (INTERRUPTED, -signal.SIGINT), stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "relaunch the same command to train the rest" in lines[0], stderr[-2000:]
    assert "Traceback" not in stderr
    seed_dirs = list((tmp_path / "out" / "stopped").glob("seed=*"))
    assert all((seed_dir / "record.npz").is_file() for seed_dir in seed_dirs), "the interrupted job left its folder"
    assert lines[0].startswith(f"interrupted: {len(seed_dirs)} record(s) in")


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """SIGINT as Python has it in a terminal (terminal_sigint), for this test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    signal.signal(signal.SIGINT, previous)


def swallowing_ctrl_c() -> None:
    """A Ctrl-C that lands in library code which catches what it raises (the CI run of 2026-12-01: CtrlC)."""
    with contextlib.suppress(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


@pytest.mark.usefixtures("python_sigint")
def test_a_swallowed_ctrl_c_stops_the_next_job_and_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    trained: list[int] = []

    def sweep() -> None:
        for seed in range(3):
            if seed == 1:
                swallowing_ctrl_c()
            CtrlC.check()  # src/run.py's job start
            trained.append(seed)

    assert cli_exit_code(sweep, lambda: "1 record(s)") == INTERRUPTED
    assert trained == [0] and capsys.readouterr().err == "interrupted: 1 record(s)\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's handler is back


@pytest.mark.usefixtures("python_sigint")
def test_a_ctrl_c_swallowed_in_the_last_job_still_exits_130_and_does_not_outlive_its_command() -> None:
    assert cli_exit_code(swallowing_ctrl_c) == INTERRUPTED
    assert cli_exit_code(lambda: None) == 0


def test_where_sigint_is_ignored_it_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert cli_exit_code(lambda: signal.raise_signal(signal.SIGINT)) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four digits records, estimated."""
    root = tmp_path_factory.mktemp("small")
    assert run_cli("src.run", "-m", *TINY, f"paths.output_dir={root}", "name=small", "seed=0..3",
                   "trainer.max_epochs=1", cwd=root).returncode == 0
    assert run_cli("src.estimate", str(root / "small"), "--gallery", "0", cwd=root).returncode == 0
    return root / "small"


def estimate_cases(small: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    one = tmp_path / "one"
    assert run_cli("src.run", *TINY, f"paths.output_dir={tmp_path}", "name=one", "trainer.max_epochs=1",
                   cwd=tmp_path).returncode == 0
    full = tmp_path / "full"
    assert run_cli("src.run", "-m", *TINY, f"paths.output_dir={tmp_path}", "name=full", "subset.ratio=1.0",
                   "trainer.max_epochs=1", "seed=0..1", cwd=tmp_path).returncode == 0
    (tmp_path / "a_file").write_text("not a folder")
    return {
        "one record": ([str(one)], "train at least"),
        "ratio 1.0": ([str(full)], "none was ever left out"),
        "theta out of range": ([str(small), "--theta-mem", "2"], "--theta-mem 2 must lie in (0, 1]"),
        "--out a file": ([str(small), "--out", str(tmp_path / "a_file")], "is a file where a folder is needed"),
        "no such sweep": ([str(tmp_path / "nope")], "does not exist"),
    }


def test_estimate_refuses_with_one_line(small: Path, tmp_path: Path) -> None:
    for case, (args, expected) in estimate_cases(small, tmp_path).items():
        before = tree(tmp_path)
        result = run_cli("src.estimate", *args, "--gallery", "0", cwd=tmp_path)
        one_error(result, expected)
        assert tree(tmp_path) == before, f"{case}: files changed"


def test_an_unwritable_estimates_folder_is_one_line(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = subprocess.run([*unprivileged(), sys.executable, "-m", "src.estimate", str(small), "--out", str(out),
                                 "--gallery", "0"], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                                timeout=300)
    finally:
        out.chmod(0o755)
    one_error(result, f"cannot access {out / 'stats.npz'} (Permission denied)")
    assert not list(out.iterdir())


def test_a_text_file_is_not_read_as_a_pickle(small: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    (sweep / "seed=0").mkdir(parents=True)
    (sweep / "seed=0" / "record.npz").write_text("not an archive")
    result = run_cli("src.estimate", str(sweep), "--strict", cwd=tmp_path)
    one_error(result, "no numpy archive of plain arrays")
    assert "allow_pickle" not in result.stderr
    data = tmp_path / "data.npz"
    data.write_text("x,y\n1,2\n")
    loaded = run_cli("src.run", *TINY, "dataset=npz", f"dataset.path={data}", f"paths.output_dir={tmp_path / 'o'}",
                     cwd=tmp_path)
    one_error(loaded, "no numpy archive of plain arrays")


def test_analysis_commands(small: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert run_cli("src.run", "-m", *TINY, f"paths.output_dir={tmp_path}", "name=other", "seed=0..3",
                   "trainer.max_epochs=1", "optim.lr=0.05", cwd=tmp_path).returncode == 0
    assert run_cli("src.estimate", str(other), "--gallery", "0", cwd=tmp_path).returncode == 0
    before = tree(small)
    refused = run_cli("src.report", str(small), "--estimates", str(other / "estimates"), cwd=tmp_path)
    one_error(refused, "of which")
    assert tree(small) == before
    for command in (["src.compare", str(small), str(other), "--theta-mem", "0"],
                    ["src.removal", str(small), "--theta", "1.5"]):
        one_error(run_cli(*command, cwd=tmp_path), "must lie in (0, 1]")
    compared = run_cli("src.compare", str(small), str(other), cwd=tmp_path)
    assert compared.returncode == 0 and (small / "compare" / "compare.json").is_file(), compared.stderr
    assert not (tmp_path / "compare").exists()
    scored = run_cli("src.cscore", str(small), cwd=tmp_path)
    assert scored.returncode == 0 and (small / "cscore" / "cscore.csv").is_file(), scored.stderr
    (small / "cscore" / "cscore.png").write_bytes(b"stale")
    assert run_cli("src.cscore", str(small), cwd=tmp_path).returncode == 0
    assert not (small / "cscore" / "cscore.png").exists(), "a rerun without --mem left the old plot"


def test_a_stale_gallery_does_not_survive_a_rerun(small: Path) -> None:
    (small / "estimates" / "gallery.png").write_bytes(b"stale")
    assert run_cli("src.estimate", str(small), "--gallery", "0", cwd=small).returncode == 0
    assert not (small / "estimates" / "gallery.png").exists()


def test_mixed_experiments_are_named(tmp_path: Path) -> None:
    common = ["src.run", "-m", *TINY, "trainer.max_epochs=1", f"paths.output_dir={tmp_path}", "name=mixed"]
    assert run_cli(*common, "seed=0..5", cwd=tmp_path).returncode == 0
    refused = run_cli(*common, "batch_size=32", "seed=0..3", cwd=tmp_path)
    one_error(refused, "batch_size: 64 → 32")
    replaced = run_cli(*common, "batch_size=32", "overwrite=true", "seed=0..1", cwd=tmp_path)
    assert replaced.returncode == 0
    assert "4 record(s) in" in replaced.stderr and "stay of another experiment (seeds 2, 3, 4, 5" in replaced.stderr
    estimated = run_cli("src.estimate", str(tmp_path / "mixed"), "--gallery", "0", cwd=tmp_path)
    assert estimated.returncode == 0 and "batch_size 32 (sweep: 64)" in estimated.stdout, estimated.stdout[-2000:]


def test_evaluate_prints_what_was_asked(small: Path, tmp_path: Path) -> None:
    noisy = tmp_path / "noisy"
    assert run_cli("src.run", "-m", *TINY, f"paths.output_dir={tmp_path}", "name=noisy", "seed=0..3",
                   "trainer.max_epochs=1", "dataset.label_noise=0.1", cwd=tmp_path).returncode == 0
    assert run_cli("src.estimate", str(noisy), "--gallery", "0", cwd=tmp_path).returncode == 0
    result = run_cli("src.evaluate", str(noisy), "--parts", "noise", "--estimates", str(noisy / "estimates"),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"noise AUROC(mem of {noisy / 'estimates'})" in result.stdout


def test_every_boolean_of_every_option_refuses_a_word(tmp_path: Path) -> None:
    """The property, through the command line: every key whose default is a boolean refuses `yes`, in a config
    that has the key (a torchvision dataset's download switch with that dataset)."""
    from src.config.checks import BOOLEAN_KEYS, BOOLEAN_OR_AUTO_KEYS

    for key in (*BOOLEAN_KEYS, *BOOLEAN_OR_AUTO_KEYS):
        having = options_having(key)
        result = run_cli("src.run", *TINY, *having, f"++{key}=yes", f"paths.output_dir={tmp_path / 'o'}",
                         "--dry-run", cwd=tmp_path)
        one_error(result, f"{key}='yes' is not a boolean")
    assert not (tmp_path / "o").exists()
    assert os.listdir(tmp_path) == []
