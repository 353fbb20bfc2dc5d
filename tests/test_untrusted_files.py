"""Records, estimates, the stats cache and checkpoints load without pickle; CIFAR batches (pickles by format)
through one unpickler that loads arrays only.

Each crafted file holds an object whose unpickling calls `Path.touch(marker)`: harmless, and visible. The
payload is shown to run when pickle is allowed; every documented way the project (or a user) loads these
files must reject it without creating the marker. A static check keeps every `np.load` / `torch.load` in
src/ pickle-free.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from src.contracts.records import read_meta, read_record, record_arrays, record_path
from src.errors import DataError, RecordError
from src.estimate import main
from src.estimators.subsample.cache import CACHE_NAME
from src.estimators.subsample.load import load_sweep
from tests.test_estimate import small_sweep

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SRC = PROJECT_ROOT / "src"
CLI_ARGS = ("--theta-mem", "0.1", "--theta-infl", "0.1", "--null-perms", "1", "--gallery", "0")
RECORD_PAYLOAD_KEYS = ("meta", "train_prob", "flipped_idx", "extra_train_note")
CRAFTED_SEED = 100


class TouchOnUnpickle:
    """Unpickling it runs `Path.touch(marker)`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return Path.touch, (self.marker,)


def payload(marker: Path, shape: tuple[int, ...] = ()) -> np.ndarray:
    """An object array of the payload (np.save/np.savez pickle it)."""
    array = np.empty(shape, dtype=object)
    array[...] = TouchOnUnpickle(marker)
    return array


def crafted_record(path: Path, key: str, marker: Path) -> Path:
    """A record of seed 100 whose member `key` is an object array that runs code when unpickled."""
    arrays = record_arrays(small_sweep().record(0, seed=CRAFTED_SEED))
    arrays[key] = payload(marker, () if key == "meta" else (3,))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez(handle, allow_pickle=True, **arrays)
    return path


def npz_members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    return small_sweep(n_runs=6).write(tmp_path / "sweep")


# ------------------------------------------------------------------------------ the payloads are live

def test_crafted_npz_runs_code_when_pickle_is_allowed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = crafted_record(tmp_path / "record.npz", "train_prob", marker)
    with np.load(path, allow_pickle=True) as archive:
        archive["train_prob"]
    assert marker.exists()


def test_crafted_checkpoint_runs_code_when_weights_only_is_off(tmp_path: Path) -> None:
    import torch
    marker = tmp_path / "ran"
    torch.save({"weight": torch.zeros(2), "bias": TouchOnUnpickle(marker)}, tmp_path / "model.pt")
    torch.load(tmp_path / "model.pt", weights_only=False)
    assert marker.exists()


# -------------------------------------------------------------------------------------------- records

@pytest.mark.parametrize("key", RECORD_PAYLOAD_KEYS)
def test_crafted_record_rejected_without_running_code(sweep_dir: Path, tmp_path: Path, key: str) -> None:
    marker = tmp_path / "ran"
    path = crafted_record(record_path(sweep_dir, CRAFTED_SEED), key, marker)
    with pytest.raises(RecordError, match="pickle") as info:
        read_record(path)
    assert info.value.path == str(path)
    if key == "meta":
        with pytest.raises(RecordError, match="pickle"):
            read_meta(path)
    stats, problems = load_sweep(sweep_dir)
    assert [problem.file for problem in problems] == [str(path)] and "pickle" in problems[0].reason
    assert stats.seeds == list(range(6))
    assert not marker.exists()


def test_cli_skips_crafted_records_without_running_code(sweep_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    crafted = [crafted_record(sweep_dir / f"crafted_{key}" / "seed=100" / "record.npz", key, marker)
               for key in RECORD_PAYLOAD_KEYS]
    result = subprocess.run([sys.executable, "-m", "src.estimate", str(sweep_dir), "--out", str(tmp_path / "out"),
                             *CLI_ARGS], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for path in crafted:
        lines = [line for line in result.stdout.splitlines() if line.startswith(f"skipped {path}: ")]
        assert len(lines) == 1 and "pickle" in lines[0], lines
    assert not marker.exists()


# ------------------------------------------------------------------------------------ estimates files

@pytest.fixture
def outputs(sweep_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    assert main([str(sweep_dir), "--out", str(out), *CLI_ARGS]) == 0
    return out


def test_written_outputs_hold_no_objects(outputs: Path) -> None:
    names = ["estimates.npz", "influence.npy"]
    names.append(CACHE_NAME)
    for name in names:
        if name.endswith(".npz"):
            members = npz_members(outputs / name)
        else:
            members = {name: np.load(outputs / name, allow_pickle=False)}
        assert members, name
        for key, values in members.items():
            assert not values.dtype.hasobject, (name, key)


@pytest.mark.parametrize("key", ["mem", "summary", "topk_idx"])
def test_crafted_estimates_npz_rejected(outputs: Path, tmp_path: Path, key: str) -> None:
    marker = tmp_path / "ran"
    arrays = npz_members(outputs / "estimates.npz")
    arrays[key] = payload(marker, arrays[key].shape)
    path = outputs / "estimates.npz"
    np.savez(path, allow_pickle=True, **arrays)
    with np.load(path, allow_pickle=False) as archive, pytest.raises(ValueError, match="allow_pickle"):
        archive[key]
    assert not marker.exists()


@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_crafted_influence_npy_rejected(outputs: Path, tmp_path: Path, mmap_mode: str | None) -> None:
    marker = tmp_path / "ran"
    path = outputs / "influence.npy"
    np.save(path, payload(marker, (4, 3)), allow_pickle=True)
    with pytest.raises(ValueError, match=r"allow_pickle|object"):
        np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ stats cache

def cache_name() -> str:
    return CACHE_NAME


@pytest.mark.parametrize("key", ["cache", "seeds", "packed_masks", "unknown member"])
def test_crafted_stats_cache_ignored_without_running_code(sweep_dir: Path, outputs: Path, tmp_path: Path,
                                                          key: str) -> None:
    cache = outputs / cache_name()
    assert cache.exists(), "the CLI wrote no stats cache"
    marker = tmp_path / "ran"
    arrays = npz_members(cache)
    if key == "unknown member":
        arrays["zz_payload"] = payload(marker, (2,))
    else:
        arrays[key] = payload(marker, arrays[key].shape)
    np.savez(cache, allow_pickle=True, **arrays)
    fresh = tmp_path / "fresh"  # no cache there: the estimates of a full read

    assert main([str(sweep_dir), "--out", str(outputs), *CLI_ARGS]) == 0
    assert not marker.exists()
    assert main([str(sweep_dir), "--out", str(fresh), *CLI_ARGS]) == 0
    expected, got = npz_members(fresh / "estimates.npz"), npz_members(outputs / "estimates.npz")
    assert sorted(got) == sorted(expected)
    for name, values in expected.items():
        assert got[name].tobytes() == values.tobytes(), name
    if key != "unknown member":  # the unusable cache was replaced by a clean one
        assert all(not values.dtype.hasobject for values in npz_members(cache).values())
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("wrapped", [False, True])
def test_crafted_checkpoint_rejected_by_weights_only(tmp_path: Path, wrapped: bool) -> None:
    import torch
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    evil = TouchOnUnpickle(marker)
    torch.save({"weight": torch.zeros(2), "bias": evil} if wrapped else evil, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()


def test_project_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    import torch

    from src.training.job import save_weights

    state = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).state_dict()
    path = save_weights(state, tmp_path / "seed=0" / "model.pt")
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def test_crafted_cifar_batch_rejected_without_running_code(tmp_path: Path) -> None:
    """A CIFAR batch whose unpickling would run code is a one-line DataError (torchvision's loader would run it)."""
    from src.data.sources import load_raw
    from tests.test_datasets import dataset_config, write_cifar_source

    write_cifar_source("cifar10", tmp_path)
    marker = tmp_path / "ran"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(pickle.dumps({"data": TouchOnUnpickle(marker), "labels": [0, 1]}))
    with pytest.raises(DataError, match=r"could not read CIFAR-10 from .*data_batch_2 .*is not allowed") as info:
        load_raw(dataset_config("cifar10", verify_checksums=False), tmp_path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    pickle.loads(batch.read_bytes())
    assert marker.exists()  # the payload does run when pickle is allowed


# ---------------------------------------------------------------------------------------- static check

NP_LOADS = {"np.load", "numpy.load"}
TORCH_LOADS = {"torch.load"}
PICKLE_LOADS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads"}


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def load_calls() -> list[tuple[str, str, ast.Call]]:
    """(file:line, dotted name, call) of every call of a loader in src/."""
    calls = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and dotted(node.func) in NP_LOADS | TORCH_LOADS | PICKLE_LOADS:
                calls.append((f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}", dotted(node.func), node))
    return calls


def keyword_is(call: ast.Call, name: str, value: bool) -> bool:
    return any(keyword.arg == name and isinstance(keyword.value, ast.Constant) and keyword.value.value is value
               for keyword in call.keywords)


def test_every_load_in_src_refuses_pickle() -> None:
    calls = load_calls()
    assert any(name in NP_LOADS for _, name, _ in calls), "found no np.load in src/: is the check still looking?"
    bad = []
    for where, name, call in calls:
        if name in NP_LOADS and not keyword_is(call, "allow_pickle", False):
            bad.append(f"{where}: {name} without allow_pickle=False")
        if name in TORCH_LOADS and not keyword_is(call, "weights_only", True):
            bad.append(f"{where}: {name} without weights_only=True")
        if name in PICKLE_LOADS:
            bad.append(f"{where}: {name}")
    assert not bad, "\n".join(bad)


# The one unpickler in src/: it refuses every global but numpy's array reconstruction (tested above).
RESTRICTED_UNPICKLERS = {"src/data/torchvision_sources.py:ArraysOnlyUnpickler"}


def test_every_unpickler_in_src_is_the_restricted_one() -> None:
    found = set()
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef) and any("Unpickler" in dotted(base) for base in node.bases):
                assert any(isinstance(item, ast.FunctionDef) and item.name == "find_class" for item in node.body)
                found.add(f"{path.relative_to(PROJECT_ROOT)}:{node.name}")
    assert found == RESTRICTED_UNPICKLERS


def test_loaders_are_not_imported_under_other_names() -> None:
    """`from numpy import load` or `import pickle as p` would hide a call from the check above."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module in ("numpy", "torch", "pickle", "_pickle"):
                bad += [f"{path.name}:{node.lineno} from {node.module} import {alias.name}"
                        for alias in node.names if alias.name in ("load", "loads", "Unpickler")]
            if isinstance(node, ast.Import):
                bad += [f"{path.name}:{node.lineno} import {alias.name} as {alias.asname}" for alias in node.names
                        if alias.name in ("numpy", "torch", "pickle") and alias.asname not in (None, "np")]
    assert not bad, "\n".join(bad)
