"""A record write that fails (disk full, no permission) leaves no partial file and says what to do."""

import resource
import signal
import subprocess
import sys
from pathlib import Path

from src.contracts.records import find_records
from tests.conftest import TINY, cli_env, unprivileged

# Larger than Hydra's log lines, smaller than a digits record (~16 KB): only the record write fails.
FILE_SIZE_LIMIT = 8 * 1024


def limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_full_disk_leaves_no_partial_record(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "src.run", *TINY, f"paths.output_dir={out}", "name=full", "seed=0"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "free disk space" in errors[0], result.stderr
    assert not find_records(out) and not list(out.rglob("*.tmp.*"))


def test_read_only_seed_directory_leaves_no_partial_record(tmp_path: Path) -> None:
    out = tmp_path / "out"
    seed_dir = out / "ro" / "seed=0"
    seed_dir.mkdir(parents=True)
    seed_dir.chmod(0o555)
    result = subprocess.run([*unprivileged(), sys.executable, "-m", "src.run", *TINY, f"paths.output_dir={out}",
                             "name=ro", "seed=0"],
                            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "fix permissions" in result.stderr
    assert not find_records(out) and not list(out.rglob("*.tmp.*"))
