"""Which GPU a one-GPU job trains on when its process sees several: jobs that run at the same time on one
machine (`hydra/launcher=joblib`, or several sweeps) each take a GPU of their own instead of all taking `cuda:0`,
Lightning's choice for `devices: 1`.

A job holds an exclusive lock (flock) on a file per (GPU, slot) in a directory of this user's on the machine
while it trains and writes its records; it takes the first GPU with a free slot 0, so that while fewer jobs run
than there are GPUs each has its own, and with more jobs the GPUs are shared as evenly as the slots allow. The
kernel drops a lock when its process ends, however it ends, so a killed job never holds a GPU. A SLURM task that
was given one GPU sees one: nothing to choose.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig

from src.config.checks import GPU_ACCELERATORS

LOCK_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")  # a GPU's id in a lock file's name (ids may be UUIDs)


def lock_dir() -> Path:
    """Per user and machine: other users' jobs are not seen (their files are not ours to lock)."""
    return Path(tempfile.gettempdir()) / f"meminf-gpus-{os.getuid()}"


def gpu_ids(count: int) -> list[str]:
    """The machine's ids of the `count` GPUs this process sees: those CUDA_VISIBLE_DEVICES lists, else 0..count-1,
    so that two processes shown different GPUs do not lock each other's."""
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    ids = visible if len(visible) >= count else [str(index) for index in range(count)]
    return [LOCK_NAME_UNSAFE.sub("_", gpu) for gpu in ids[:count]]


@contextmanager
def claim_gpu(count: int, directory: Path) -> Iterator[int]:
    """The index (among the `count` GPUs this process sees) of a GPU held for this job until the context ends."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ids = gpu_ids(count)
    for slot in itertools.count():
        for index, gpu in enumerate(ids):
            handle = (directory / f"gpu{gpu}.slot{slot}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                handle.close()  # releases the lock
            return


def wants_one_gpu(trainer: DictConfig) -> bool:
    return (str(trainer.get("accelerator", "cpu")) in GPU_ACCELERATORS and str(trainer.get("devices")) == "1"
            and not str(trainer.get("strategy", "auto")).startswith("ddp"))


@contextmanager
def own_gpu(cfg: DictConfig) -> Iterator[None]:
    """Run the job (inside the context) on a GPU of its own (module docstring): `trainer.devices=[i]` while it
    runs, when it asks for one GPU and this process sees several; otherwise the config is left as it is."""
    count = torch.cuda.device_count() if wants_one_gpu(cfg.trainer) else 0
    if count < 2:
        yield
        return
    asked = cfg.trainer.devices
    with claim_gpu(count, lock_dir()) as index:
        cfg.trainer.devices = [index]
        try:
            yield
        finally:
            cfg.trainer.devices = asked
