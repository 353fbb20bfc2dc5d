"""C-scores from sweeps at several subset ratios: equal to a naive loop over the records, Spearman with mem,
and one-line errors for sweeps of other data, a repeated ratio and estimates of other data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from src.contracts.records import record_path, write_record
from src.cscore import main
from src.estimate import main as estimate_main
from tests.test_estimate import Sweep, planted_sweep

N, N_TEST = 80, 20


def sweep_at(ratio: float, n_runs: int) -> Sweep:
    """Same labels for every ratio (drawn first from the same generator), correctness depending on the subset."""
    rng = np.random.default_rng(0)
    return planted_sweep(N, n_runs, N_TEST, rng, rng.uniform(0.5, 1, N), rng.uniform(0, 0.9, N), ratio=ratio,
                         num_classes=4)


def naive_cscore(sweeps: list[Sweep]) -> np.ndarray:
    scores = np.zeros(N)
    for i in range(N):
        accuracies = []
        for sweep in sweeps:
            out = [sweep.train_correct[k, i] for k in sweep.seeds if not sweep.masks[k, i]]
            accuracies.append(np.mean(out) if out else np.nan)
        scores[i] = np.nan if np.isnan(accuracies).any() else np.mean(accuracies)
    return scores


def write_other_data(sweep: Sweep, sweep_dir: Path) -> Path:
    for k in sweep.seeds:
        write_record(record_path(sweep_dir, k), sweep.record(k, data_fingerprint="fp-other"))
    return sweep_dir


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cscore_equals_a_naive_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweeps = [sweep_at(0.5, 10), sweep_at(0.8, 12)]
    dirs = [sweep.write(tmp_path / f"r{sweep.ratio}") for sweep in sweeps]
    assert estimate_main([str(dirs[1]), "--gallery", "0"]) == 0
    out = tmp_path / "cscore"
    assert main([str(dirs[1]), str(dirs[0]), "--out", str(out), "--mem", str(dirs[1])]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["cscore.csv", "cscore.png", "cscore_summary.json"]
    rows = read_rows(out / "cscore.csv")
    assert list(rows[0]) == ["index", "label", "cscore", "acc_out_r0.5", "n_out_r0.5", "acc_out_r0.8", "n_out_r0.8",
                             "mem"]
    cscore = np.array([float(row["cscore"] or "nan") for row in rows])
    expected = naive_cscore(sweeps)
    np.testing.assert_allclose(cscore, expected, rtol=1e-5, equal_nan=True)
    assert 0 < np.isnan(expected).sum() < N  # ratio 0.8 with 12 runs leaves some examples never out
    assert [int(row["n_out_r0.5"]) for row in rows] == (~sweeps[0].masks).sum(axis=0).tolist()

    summary = json.loads((out / "cscore_summary.json").read_text())
    with np.load(dirs[1] / "estimates" / "estimates.npz", allow_pickle=False) as archive:
        mem = archive["mem"]
    both = np.isfinite(expected) & np.isfinite(mem)
    rho = spearmanr(expected[both], mem[both]).statistic
    assert summary["spearman_cscore_mem"] == pytest.approx(rho, abs=1e-12) and rho < -0.5
    assert [item["ratio"] for item in summary["sweeps"]] == [0.8, 0.5]
    assert summary["examples_with_cscore"] == int(np.isfinite(expected).sum())
    assert "Spearman with mem" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["other data", "same ratio", "mem of other data", "no sweep"])
def test_bad_inputs_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    base = sweep_at(0.5, 6).write(tmp_path / "base")
    other = sweep_at(0.8, 6)
    if case == "other data":
        args, message = [str(base), str(write_other_data(other, tmp_path / "other"))], "holds other data"
    elif case == "same ratio":
        args, message = [str(base), str(sweep_at(0.5, 8).write(tmp_path / "again"))], "both have subset ratio 0.5"
    elif case == "mem of other data":
        mem_dir = write_other_data(other, tmp_path / "mem")
        assert estimate_main([str(mem_dir), "--gallery", "0"]) == 0
        args, message = [str(base), "--mem", str(mem_dir)], "holds estimates of other data"
    else:
        args, message = [str(tmp_path / "missing")], "does not exist"
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
