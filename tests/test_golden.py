"""Records and estimates of a fixed sweep are what the code before the package move wrote, bit for bit.

tests/golden/digits8/ holds an 8-seed digits sweep and its estimates made at commit 266488f (its README gives
the command). The same command today must write records whose arrays equal the golden ones and whose
metadata differs only in git, times, host, process, paths, the config's layout and the experiment identity's
version; relaunched on the golden records it must train nothing; and the estimates of both must equal the
golden estimates.npz array for array.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from src.contracts.estimates import read_estimates
from src.contracts.identity import experiment_identity
from src.contracts.records import find_records, read_meta
from tests.conftest import run_cli

GOLDEN = Path(__file__).resolve().parent / "golden" / "digits8"
COMMAND = ["src.run", "-m", "dataset=digits", "model=mlp", "trainer.max_epochs=2", "batch_size=64", "logger=none",
           "name=golden_digits", "dataset.label_noise=0.1", "record.epochs=[1,2]", "seed=0..7"]
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Metadata that may differ between two runs of one experiment: where, when and by which process and commit.
RUN_META = {"git", "created_utc", "wall_time_s", "host", "pid", "sweep_dir", "experiment_hash",
            "experiment_identity_version", "config"}
# Summary keys that identity 2, the estimates contract and the split-half reliability added or recompute.
NEW_SUMMARY = {"experiment_hash", "experiment", "estimator", "estimates_format", "reliability"}


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def assert_same_bits(mine: dict[str, np.ndarray], golden: dict[str, np.ndarray], skip: set[str]) -> None:
    for key, expected in golden.items():
        if key in skip:
            continue
        assert key in mine, key
        assert (mine[key].dtype, mine[key].shape) == (expected.dtype, expected.shape), key
        assert mine[key].tobytes() == expected.tobytes(), key


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    result = run_cli(*COMMAND, f"paths.output_dir={out}", cwd=out, **SINGLE_THREAD)
    assert result.returncode == 0, result.stderr
    return out / "golden_digits"


def test_records_are_reproduced_bit_for_bit(reproduced: Path) -> None:
    for path in sorted(GOLDEN.glob("seed=*/record.npz")):
        golden, mine = arrays_of(path), arrays_of(reproduced / path.parent.name / "record.npz")
        assert_same_bits(mine, golden, skip={"meta"})
        golden_meta, meta = read_meta(path), read_meta(reproduced / path.parent.name / "record.npz")
        assert {key: value for key, value in meta.items() if key not in RUN_META} == \
            {key: value for key, value in golden_meta.items() if key not in RUN_META}
        assert experiment_identity(meta["config"], meta["data_fingerprint"]) == \
            experiment_identity(golden_meta["config"], golden_meta["data_fingerprint"])


def test_records_of_the_earlier_code_count_as_done(tmp_path: Path) -> None:
    sweep = tmp_path / "golden_digits"
    for path in GOLDEN.glob("seed=*/record.npz"):
        (sweep / path.parent.name).mkdir(parents=True)
        shutil.copy(path, sweep / path.parent.name / "record.npz")
    before = {path: path.read_bytes() for path in find_records(sweep)}
    result = run_cli(*COMMAND, f"paths.output_dir={tmp_path}", cwd=tmp_path, **SINGLE_THREAD)
    assert result.returncode == 0, result.stderr
    assert "8 seeds, 8 done, 0 to train" in result.stderr
    assert {path: path.read_bytes() for path in find_records(sweep)} == before


@pytest.mark.parametrize("records", ["reproduced", "golden"])
def test_estimates_equal_the_golden_estimates(reproduced: Path, tmp_path: Path, records: str) -> None:
    sweep = reproduced if records == "reproduced" else GOLDEN
    out = tmp_path / "estimates"
    result = run_cli("src.estimate", str(sweep), "--out", str(out), "--gallery", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    golden = arrays_of(GOLDEN / "estimates.npz")
    assert_same_bits(arrays_of(out / "estimates.npz"), golden, skip={"summary"})
    old, new = read_estimates(GOLDEN).summary, read_estimates(out).summary
    assert {key: value for key, value in new.items() if key not in NEW_SUMMARY} == \
        {key: value for key, value in old.items() if key not in NEW_SUMMARY}


def test_estimates_written_before_the_contract_still_read() -> None:
    est = read_estimates(GOLDEN, ("pair_train_idx", "topk_idx"))
    assert est.estimator == "subsample" and est.summary["estimates_format"] == 0 and est.n_train == 1437
