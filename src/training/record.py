"""One member's record: its outputs and the metadata the record contract asks for (src/contracts/records.py).
numpy only, so that the dry run sizes records through the real writer without importing torch or Lightning."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from omegaconf import DictConfig, OmegaConf

from src.config.paths import sweep_dir
from src.contracts.identity import IDENTITY_VERSION, VERSION_KEY
from src.contracts.records import FORMAT_VERSION, Record
from src.data.dataset import Dataset, record_extras

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


class MemberOutputs(NamedTuple):
    """What one member's record holds beyond the data: final predictions, proxies, per-epoch correctness."""

    train_pred: np.ndarray
    train_prob: np.ndarray
    test_pred: np.ndarray
    test_prob: np.ndarray
    proxies: dict[str, np.ndarray]  # record score name -> float32 (n_train,), see src/contracts/records.py
    epoch_list: np.ndarray  # int64 (E,)
    epoch_train_correct: np.ndarray | None  # bool (E, n_train); None when E = 0
    epoch_test_correct: np.ndarray | None


def _version(module: str, distribution: str) -> str:
    """The imported module's own version string (a training job has imported it), else the installed one."""
    loaded = sys.modules.get(module)
    return str(loaded.__version__) if loaded is not None else version(distribution)


@lru_cache(maxsize=1)
def environment_meta() -> dict[str, Any]:
    """Versions (nothing is imported for them), git commit and host."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "versions": {"python": platform.python_version(), "torch": _version("torch", "torch"),
                     "pytorch_lightning": _version("pytorch_lightning", "pytorch-lightning"),
                     "timm": _version("timm", "timm"), "numpy": np.__version__},
        "git": {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))},
        "host": platform.node(),
    }


def member_record(cfg: DictConfig, dataset: Dataset, seed: int, mask: np.ndarray, exp_hash: str,
                  outputs: MemberOutputs, pack: int, wall_time: float, device: str, torch_threads: int) -> Record:
    """Member `seed`'s record: its outputs and the metadata of src/contracts/records.py."""
    train_pred, test_pred = outputs.train_pred, outputs.test_pred
    train_correct = train_pred == dataset.y_train
    meta = {
        "format_version": FORMAT_VERSION, "dataset": dataset.name, "n_train": len(dataset.y_train),
        "n_test": len(dataset.y_test), "num_classes": dataset.num_classes,
        "data_fingerprint": dataset.fingerprint, "model": str(cfg.model.name),
        "ratio": float(cfg.subset.ratio), "salt": int(cfg.subset.salt), "epochs": int(cfg.trainer.max_epochs),
        "seed": seed, "experiment_hash": exp_hash, VERSION_KEY: IDENTITY_VERSION, "experiment_name": str(cfg.name),
        "record_epochs": outputs.epoch_list.tolist(),
        "sweep_dir": str(sweep_dir(cfg)), "pack": pack,
        "test_acc": float((test_pred == dataset.y_test).mean()),
        "train_in_acc": float(train_correct[mask].mean()),
        "train_out_acc": float(train_correct[~mask].mean()) if (~mask).any() else None,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid(),
        "torch_threads": torch_threads, "device": device,
        "config": {**OmegaConf.to_container(cfg, resolve=True), "seed": seed, "seeds": None},
        "wall_time_s": round(wall_time, 3), **environment_meta(),
    }
    return Record(
        meta=meta, subset_mask=mask, train_label=dataset.y_train, train_pred=train_pred,
        train_prob=outputs.train_prob, test_label=dataset.y_test, test_pred=test_pred, test_prob=outputs.test_prob,
        flipped_idx=dataset.flipped_idx, flipped_orig_label=dataset.y_train_orig[dataset.flipped_idx],
        extras=record_extras(dataset), epoch_list=outputs.epoch_list,
        epoch_train_correct=outputs.epoch_train_correct, epoch_test_correct=outputs.epoch_test_correct,
        proxies=outputs.proxies,
    )
