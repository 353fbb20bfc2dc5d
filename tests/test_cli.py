"""The commands a user types: a real multirun composed from conf/, its relaunch, the aggregator, bad input."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from src.contracts.records import find_records, read_record
from tests.conftest import TINY, run_cli


def sweep_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["src.run", "-m", *TINY, f"paths.output_dir={tmp_path / 'out'}", "name=e2e", *extra]


def test_multirun_relaunch_and_aggregate(tmp_path: Path) -> None:
    launched = run_cli(*sweep_args(tmp_path, "seed=0..3", "dataset.label_noise=0.05"), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    sweep = tmp_path / "out" / "e2e"
    records = find_records(sweep)
    assert [r.parent.name for r in records] == [f"seed={k}" for k in range(4)]
    assert {read_record(r).seed for r in records} == {0, 1, 2, 3}
    assert not list(sweep.rglob(".hydra")) and not list(sweep.rglob("*.tmp.*"))

    relaunched = run_cli(*sweep_args(tmp_path, "seed=0..5", "dataset.label_noise=0.05"), cwd=tmp_path)
    assert relaunched.returncode == 0, relaunched.stderr
    assert "6 seeds, 4 done, 2 to train" in relaunched.stderr
    assert [read_record(r).seed for r in find_records(sweep)] == [0, 1, 2, 3, 4, 5]

    aggregated = run_cli("src.estimate", str(sweep), cwd=tmp_path)
    assert aggregated.returncode == 0, aggregated.stderr
    summary = json.loads((sweep / "estimates" / "summary.json").read_text())
    assert summary["runs_used"] == 6
    with np.load(sweep / "estimates" / "estimates.npz", allow_pickle=False) as est:
        assert est["mem"].shape == (1437,)
        assert int(est["flipped"].sum()) == round(0.05 * 1437)
    for name in ("memorization.csv", "pairs.csv", "gallery.png"):
        assert (sweep / "estimates" / name).stat().st_size > 0


def test_packed_sweep_groups_seeds_and_writes_single_run_records(tmp_path: Path) -> None:
    launched = run_cli(*sweep_args(tmp_path, "seed=0..5", "pack=4"), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    assert "6 to train in 2 job(s) of up to 4 model(s)" in launched.stderr
    sweep = tmp_path / "out" / "e2e"
    assert sorted(p.name for p in sweep.glob("pack=*")) == ["pack=0-3", "pack=4-5"]
    records = [read_record(r) for r in find_records(sweep)]
    assert [r.seed for r in records] == list(range(6))
    assert [r.meta["pack"] for r in records] == [4, 4, 4, 4, 2, 2]
    relaunched = run_cli(*sweep_args(tmp_path, "seed=0..7", "pack=4"), cwd=tmp_path)
    assert "8 seeds, 6 done, 2 to train in 1 job(s) of up to 2 model(s) (pack=4 clamped" in relaunched.stderr
    assert len(find_records(sweep)) == 8


def test_a_sweep_over_another_key_is_planned_and_packed_per_combination(tmp_path: Path) -> None:
    args = ["src.run", "-m", *TINY, f"paths.output_dir={tmp_path / 'out'}", "subset.ratio=0.5,0.25", "seed=0..3",
            "pack=2"]
    launched = run_cli(*args, cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    for ratio in ("0.5", "0.25"):
        sweep = tmp_path / "out" / f"digits_mlp_r{ratio}"
        assert f"sweep {sweep}: 4 seeds, 0 done, 4 to train in 2 job(s) of up to 2 model(s)" in launched.stderr
        records = [read_record(path) for path in find_records(sweep)]
        assert [record.seed for record in records] == [0, 1, 2, 3]
        assert {record.meta["pack"] for record in records} == {2}
        assert {float(record.meta["ratio"]) for record in records} == {float(ratio)}
    relaunched = run_cli(*args[:-2], "seed=0..4", "pack=2", cwd=tmp_path)
    assert relaunched.returncode == 0, relaunched.stderr
    assert relaunched.stderr.count("5 seeds, 4 done, 1 to train in 1 job(s) of up to 1 model(s)") == 2
    assert len(find_records(tmp_path / "out")) == 10


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path) -> None:
    launched = run_cli(*sweep_args(tmp_path, "seed=0..3", "pack=2", "hydra/launcher=joblib",
                                   "hydra.launcher.n_jobs=2"), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    records = [read_record(r) for r in find_records(tmp_path / "out" / "e2e")]
    assert [r.seed for r in records] == [0, 1, 2, 3]
    # jobs x threads <= cores: 2 parallel jobs get half the cores each.
    assert {r.meta["torch_threads"] for r in records} == {max(1, (os.cpu_count() or 1) // 2)}


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path: Path) -> None:
    launched = run_cli(*sweep_args(tmp_path, "seed=0..3", "pack=2", "hydra/launcher=submitit_local"), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    assert [read_record(r).seed for r in find_records(tmp_path / "out" / "e2e")] == [0, 1, 2, 3]


def write_npz(path: Path, kind: str) -> Path:
    """A small npz data set, broken in one way."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((40, 1, 8, 8), dtype=np.float32), "y_train": rng.integers(0, 3, 40),
              "x_test": rng.random((10, 1, 8, 8), dtype=np.float32), "y_test": rng.integers(0, 3, 10)}
    if kind == "empty":
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][:0], arrays["y_train"][:0]
    elif kind == "labels":
        arrays["y_train"][3] = -1
    elif kind == "shape":
        arrays["x_test"] = rng.random((10, 1, 9, 9), dtype=np.float32)
    elif kind == "nan":
        arrays["x_train"][0, 0, 0, 0] = np.nan
    np.savez(path, **arrays)
    return path


BAD_RUNS = {  # case: (arguments, a phrase the one-line error must contain)
    "ratio zero": (["-m", "seed=0..1", "subset.ratio=0"], "subset.ratio"),
    "a bad value of a swept key": (["-m", "seed=0..1", "subset.ratio=0.5,0"], "subset.ratio=0.0 is outside"),
    "an unknown option of a swept group": (["-m", "seed=0..1", "optim=sgd,nope"], "optim=nope is unknown"),
    "ratio above one": (["subset.ratio=1.5"], "subset.ratio"),
    "unknown dataset": (["-m", "seed=0..1", "dataset=nope"], "dataset=nope is unknown; choose one of cifar10"),
    "unknown model": (["model=nope"], "model=nope is unknown; choose one of cnn_small"),
    "unknown optimizer": (["-m", "seed=0..1", "optim=nope"], "optim=nope is unknown; choose one of adamw, sgd"),
    "optimizer class that does not exist": (["optim._target_=torch.optim.Nope"], "optim._target_=torch.optim.Nope"),
    "missing data": (["-m", "seed=0..1", "dataset=cifar10", "model=cnn_small"], "dataset.download"),
    "missing data directory": (["dataset=mnist", "model=cnn_small", "paths.data_dir=/nonexistent/dir"],
                               "/nonexistent/dir"),
    "reversed range": (["-m", "seed=5..2"], "seed=5..2"),
    "range without -m": (["seed=0..3"], "add -m"),
    "negative seed": (["seed=-1"], "seed="),
    "seed too large": (["-m", "seed=4294967296..4294967297"], "seed="),
    "label noise of one": (["dataset.label_noise=1.0"], "label_noise"),
    "vectors into a convnet": (["dataset=longtail", "model=resnet18"], "model=mlp"),
    "empty data set": (["dataset=npz", "dataset.path={npz:empty}"], "empty"),
    "labels out of range": (["dataset=npz", "dataset.path={npz:labels}"], "label"),
    "images of the wrong shape": (["dataset=npz", "dataset.path={npz:shape}"], "shape"),
    "NaN inputs": (["dataset=npz", "dataset.path={npz:nan}"], "NaN"),
    "output directory not writable": (["-m", "seed=0..1", "paths.output_dir={file}/out"], "cannot write"),
    "bad pack": (["-m", "seed=0..3", "pack=0"], "pack="),
}


def expand_placeholders(args: list[str], tmp_path: Path) -> list[str]:
    expanded = []
    for arg in args:
        for kind in ("empty", "labels", "shape", "nan"):
            if f"{{npz:{kind}}}" in arg:
                arg = arg.replace(f"{{npz:{kind}}}", str(write_npz(tmp_path / f"{kind}.npz", kind)))
        if "{file}" in arg:
            (tmp_path / "a_file").write_text("not a directory")
            arg = arg.replace("{file}", str(tmp_path / "a_file"))
        expanded.append(arg)
    return expanded


@pytest.mark.parametrize("case", BAD_RUNS)
def test_bad_input_one_line_error_and_nothing_written(tmp_path: Path, case: str) -> None:
    args, expected = BAD_RUNS[case]
    result = run_cli("src.run", *[a for a in TINY if not a.startswith(("dataset=", "model"))],
                     f"paths.output_dir={tmp_path / 'out'}", f"paths.data_dir={tmp_path / 'data'}",
                     *expand_placeholders(args, tmp_path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not find_records(tmp_path)


def test_a_record_of_another_experiment_stops_the_sweep_before_it_starts(tmp_path: Path) -> None:
    assert run_cli(*sweep_args(tmp_path, "seed=0"), cwd=tmp_path).returncode == 0
    other = run_cli(*sweep_args(tmp_path, "seed=1..3", "optim.lr=0.01"), cwd=tmp_path)
    assert other.returncode == 2 and "overwrite=true" in other.stderr
    assert [r.parent.name for r in find_records(tmp_path)] == ["seed=0"]


def test_aggregator_refuses_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("src.estimate", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert not (tmp_path / "empty" / "estimates").exists()


def test_aggregator_excludes_another_experiment_and_strict_refuses(tmp_path: Path) -> None:
    assert run_cli(*sweep_args(tmp_path, "seed=0..2"), cwd=tmp_path).returncode == 0
    assert run_cli(*sweep_args(tmp_path, "seed=3", "optim.lr=0.01", "overwrite=true"), cwd=tmp_path).returncode == 0
    sweep = tmp_path / "out" / "e2e"
    lenient = run_cli("src.estimate", str(sweep), cwd=tmp_path)
    assert lenient.returncode == 0, lenient.stderr
    assert "seed=3" in lenient.stdout + lenient.stderr
    assert json.loads((sweep / "estimates" / "summary.json").read_text())["runs_used"] == 3
    strict = run_cli("src.estimate", str(sweep), "--strict", "--out", str(tmp_path / "strict"), cwd=tmp_path)
    assert strict.returncode == 2 and not (tmp_path / "strict").exists()


@pytest.mark.parametrize("word", ["flase", "no"])
def test_a_misspelt_boolean_never_replaces_finished_records(tmp_path: Path, word: str) -> None:
    assert run_cli(*sweep_args(tmp_path, "seed=0..1"), cwd=tmp_path).returncode == 0
    before = {path: path.read_bytes() for path in find_records(tmp_path)}
    for extra in ([], ["--dry-run"]):
        result = run_cli(*sweep_args(tmp_path, "seed=0..1", f"overwrite={word}"), *extra, cwd=tmp_path)
        assert result.returncode == 2 and f"overwrite='{word}' is not a boolean" in result.stderr, result.stderr
    saved = run_cli(*sweep_args(tmp_path, "seed=2", f"record.save_model={word}"), cwd=tmp_path)
    assert saved.returncode == 2 and not list(tmp_path.rglob("model.pt"))
    assert {path: path.read_bytes() for path in find_records(tmp_path)} == before


def test_an_os_error_before_launch_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import src.run
    import src.sweep.plan

    def unreadable(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "outputs/x/seed=0")

    monkeypatch.setattr(src.sweep.plan, "check_sweep_command", unreadable)
    monkeypatch.setattr("sys.argv", ["src.run", "-m", "seed=0..1"])
    with pytest.raises(SystemExit) as exited:
        src.run.main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("error: cannot access outputs/x/seed=0 (Permission denied); fix its permissions "
                                       "or write elsewhere (--out, or paths.output_dir for src.run)\n")
