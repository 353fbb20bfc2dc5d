"""Shared fixtures: the real `conf/` composed (src/config/compose.py) and shrunk to CPU-test size."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from src.config.compose import compose_config

ROOT = Path(__file__).resolve().parent.parent
LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")  # what a test under `no_network` may connect to
CONF = ROOT / "conf"
# Small and fast: the 8×8 digits, the MLP (64-512-256-10 there), 2 epochs, no logger.
TINY = ["dataset=digits", "model=mlp", "trainer.max_epochs=2", "logger=none",
        "batch_size=64"]


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    def _compose(*overrides: str, tiny: bool = True) -> DictConfig:
        base = [*TINY, f"paths.output_dir={tmp_path / 'outputs'}", f"paths.data_dir={tmp_path / 'data'}"]
        return compose_config([*(base if tiny else []), *overrides])
    return _compose


# Group options that bring in the settings the default composition lacks (a torchvision data set's switches,
# the GPU and DDP trainers' flags).
OPTIONS_WITH_MORE_KEYS = ([], ["dataset=cifar10"], ["trainer=gpu"], ["trainer=ddp"])


def options_having(key: str) -> list[str]:
    """Overrides of TINY under which the composed config has `key` ([] if none does: a Trainer flag no config
    file sets, added with `+key=...`)."""
    from omegaconf import OmegaConf

    return next((extra for extra in OPTIONS_WITH_MORE_KEYS
                 if OmegaConf.select(compose_config([*TINY, *extra]), key, default=None) is not None), [])


# Root reads and writes files whatever their modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): a process started with
# this prefix has neither, so permission cases behave for root (CI runs as root) as for any other user.
DROP_DAC = "-dac_override,-dac_read_search"


def unprivileged() -> list[str]:
    """Command prefix for permission cases: empty for an ordinary user, setpriv without the DAC capabilities for
    root (util-linux's setpriv is part of every Debian machine)."""
    return [] if os.geteuid() != 0 else ["setpriv", "--bounding-set", DROP_DAC, "--inh-caps", DROP_DAC]


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}


def run_cli(*args: str, cwd: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """`python -m <args>` in a subprocess with wandb kept offline (and `env` added to the environment)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=cli_env(**env), capture_output=True,
                          text=True, timeout=timeout)


@contextlib.contextmanager
def offline_without_network(home: Path) -> Iterator[list[Any]]:
    """wandb offline with HOME and its folders under `home`; any connection other than a unix socket or localhost
    raises and is kept (the list yielded, empty at the end). A context, so that module fixtures use it too."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
            monkeypatch.delenv(name, raising=False)
        for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR", "ARTIFACT_DIR"):
            (home / name).mkdir(parents=True)
            monkeypatch.setenv(f"WANDB_{name}", str(home / name))
        monkeypatch.setenv("WANDB_SILENT", "true")
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("NETRC", str(home / "no-netrc"))
        refused: list[Any] = []
        connect, create_connection = socket.socket.connect, socket.create_connection

        def local(family: int, address: Any) -> bool:
            return family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in LOCAL_HOSTS)

        def guarded_connect(self: socket.socket, address: Any) -> None:
            if not local(self.family, address):
                refused.append(address)
                raise OSError(f"network blocked in tests: {address}")
            return connect(self, address)

        def guarded_create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            if address[0] not in LOCAL_HOSTS:
                refused.append(address)
                raise OSError(f"network blocked in tests: {address}")
            return create_connection(address, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", guarded_connect)
        monkeypatch.setattr(socket, "create_connection", guarded_create_connection)
        yield refused
        assert refused == [], f"connections attempted: {refused}"


@pytest.fixture
def no_network(tmp_path: Path) -> Iterator[list[Any]]:
    """wandb offline under tmp_path/home, no connections (offline_without_network)."""
    with offline_without_network(tmp_path / "home") as refused:
        yield refused
