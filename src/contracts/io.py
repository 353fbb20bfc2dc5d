"""How every output file is written: atomically (temp file beside it, fsync, rename), never half-written.

A temp file is named `<name>.tmp.<host>.<pid>` in the target's directory, so a killed writer leaves at most a
temp file that no reader picks up (readers only open final names) and that `remove_stale_temps` deletes.
`MEMINF_FAULT=<point>:<n>` SIGKILLs the process the n-th time it reaches a fault point (`mid_write`,
`before_rename`): the kill-and-resume tests use it; unset, it does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO

import numpy as np

FAULT_ENV = "MEMINF_FAULT"
_FAULT_COUNTS: dict[str, int] = {}


def content_hash(arrays: Iterable[np.ndarray]) -> str:
    """Hash of arrays (dtype, shape and bytes): equal iff the arrays are. Data fingerprints use it too."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp.{socket.gethostname()}.{os.getpid()}")


def inject_fault(point: str) -> None:
    """SIGKILL this process the n-th time it reaches `point` when MEMINF_FAULT=<point>:<n> (module docstring)."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec.startswith(f"{point}:"):
        return
    _FAULT_COUNTS[point] = _FAULT_COUNTS.get(point, 0) + 1
    if _FAULT_COUNTS[point] == int(spec.split(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object], faults: bool = True) -> Path:
    """Call `write(file_object)` on a temp file beside `path`, fsync it, then rename it onto `path`. `faults`
    False: no injected fault here (a sweep's status files, which the fault tests do not count)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            if faults:
                inject_fault("mid_write")
            handle.flush()
            os.fsync(handle.fileno())
        if faults:
            inject_fault("before_rename")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


def write_files(out_dir: str | Path, payloads: Mapping[str, bytes], owned: Iterable[str] = ()) -> list[Path]:
    """Write every (name -> bytes) payload atomically into `out_dir`; returns the written paths. The files named
    in `owned` (what the command may write) but not written this time are removed, so that a rerun replaces its
    outputs as a whole (no stale gallery.png beside new estimates); other files are left alone."""
    written = [write_atomic(Path(out_dir) / name, lambda handle, data=data: handle.write(data))
               for name, data in payloads.items()]
    for name in set(owned) - set(payloads):
        (Path(out_dir) / name).unlink(missing_ok=True)
    return written


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temp files a killed writer left beside `path` (any host, any pid); returns them."""
    path = Path(path)
    stale = sorted(path.parent.glob(f"{path.name}.tmp.*")) if path.parent.is_dir() else []
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


def load_error(err: BaseException) -> str:
    """Why np.load(allow_pickle=False) refused a file, in words: numpy reads a file that is no .npz/.npy (text,
    a pickle) as pickled data and names its allow_pickle escape hatch, which is never the fix here."""
    text = " ".join(str(err).split())
    if "pickle" in text:
        return "it is no numpy archive of plain arrays (a text file, a pickle, or damaged)"
    return text or type(err).__name__
