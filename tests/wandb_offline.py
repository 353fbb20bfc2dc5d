"""Reading what wandb wrote offline, for the tests: wandb 0.31 ships no reader of its run log, and an offline run
writes no config.yaml or summary file. `OfflineRun` decodes a run directory's `.wandb` file; the `no_network`
fixture (tests/conftest.py) keeps wandb offline and under the test's tmp_path."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

# The .wandb file is a LevelDB-style log (wandb-core's store): a 7-byte file header ":W&B", magic 0xBEE1,
# version; then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first,
# 3 middle, 4 last); a block tail shorter than a chunk header is zero padding. Each record is a protobuf
# wandb.proto.wandb_internal_pb2.Record.
WANDB_LOG_BLOCK = 32768
WANDB_LOG_HEADER = 7
WANDB_FULL, WANDB_FIRST, WANDB_MIDDLE, WANDB_LAST = 1, 2, 3, 4
FLUSH_WAIT_S = 30


def wandb_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:WANDB_LOG_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1
    records, pending, pos = [], b"", WANDB_LOG_HEADER
    while pos + WANDB_LOG_HEADER <= len(data):
        left = WANDB_LOG_BLOCK - pos % WANDB_LOG_BLOCK
        if left < WANDB_LOG_HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + WANDB_LOG_HEADER])
        chunk = data[pos + WANDB_LOG_HEADER:pos + WANDB_LOG_HEADER + length]
        if kind and len(chunk) < length:  # a chunk wandb-core is still writing
            break
        pos += WANDB_LOG_HEADER + length
        if kind in (WANDB_FULL, WANDB_LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            records.append(record)
            pending = b""
        elif kind in (WANDB_FIRST, WANDB_MIDDLE):
            pending += chunk
        else:  # zeros: the unwritten end of the file
            break
    return records


def finished_records(path: Path) -> list[Any]:
    """The records of a finished run: wandb-core may still be flushing the file when finish() returns."""
    deadline = time.monotonic() + FLUSH_WAIT_S
    from google.protobuf.message import DecodeError

    while True:
        try:
            records = wandb_records(path)
        except DecodeError:  # a chunk read while it was being written: read the file again
            if time.monotonic() > deadline:
                raise
            records = []
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def record_key(item: Any) -> str:
    """The dotted key of a config or summary item (wandb writes nested keys as a path)."""
    return item.key or "/".join(item.nested_key)


class OfflineRun:
    """What an offline run directory holds: its run record, summary, history keys and artifacts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        files = list(directory.glob("*.wandb"))
        assert len(files) == 1, files
        self.records = finished_records(files[0])
        kinds = [record.WhichOneof("record_type") for record in self.records]
        self.run = next(record.run for record, kind in zip(self.records, kinds, strict=True) if kind == "run")
        self.summary: dict[str, Any] = {}
        self.history_keys: set[str] = set()
        self.artifacts = []
        for record, kind in zip(self.records, kinds, strict=True):
            if kind == "summary":
                for item in record.summary.update:
                    path = [item.key] if item.key else list(item.nested_key)
                    node = self.summary
                    for key in path[:-1]:
                        node = node.setdefault(key, {})
                    node[path[-1]] = json.loads(item.value_json)
            elif kind == "history":
                self.history_keys.update(item.key or item.nested_key[0] for item in record.history.item)
            elif kind == "artifact":
                self.artifacts.append(record.artifact)
        assert "exit" in kinds  # finished

    def table(self, key: str) -> dict[str, Any]:
        """A logged wandb.Table: `columns` and `data`, from the file under files/ that its summary entry names."""
        return json.loads((self.directory / "files" / self.summary[key]["path"]).read_text())

    def artifact_files(self, kind: str) -> list[str]:
        return sorted(entry.path for artifact in self.artifacts if artifact.type == kind
                      for entry in artifact.manifest.contents)


def offline_runs(directory: Path) -> list[OfflineRun]:
    return [OfflineRun(run_dir) for run_dir in sorted((directory / "wandb").glob("offline-run-*"))]
