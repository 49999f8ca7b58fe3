"""TensorBoard event files, written without TensorFlow, torch or the tensorboard package.

The format is written here: a TFRecord file (length, masked CRC-32C of the length, payload, masked CRC-32C
of the payload) of `Event` protocol buffers, each a wall time, a step and a `Summary` of scalar values. Only
the few protobuf fields needed are encoded; TensorFlow's own reader checks the files in the tests.

Why not a library (measured with the pinned stack, torch 2.13 and TensorFlow 2.21 in one venv, protobuf
7.36.2; each in a fresh process: import, one writer, three scalars; see docs/long-runs.md):
- tensorboardX 2.6.5 (needs numpy, packaging, protobuf>=3.20: no conflict, and TensorFlow reads its files
  back) imports torch whenever torch is installed: its package `__init__` loads `tensorboardX.writer`, which
  runs `import torch` to accept tensors, so no part of it can be imported without. From no framework:
  0.72-0.86 s and 1,202 modules, torch among them; after `import tensorflow`: 1.08 s and 805 more modules,
  torch among them. A TensorFlow run would load torch, which the backend isolation test forbids.
- TensorBoard 2.21's own writer (`tensorboard.summary.writer.event_file_writer`; protobuf<8,>=6.31.1 as
  TensorFlow's, no conflict, but four more packages: tensorboard, tensorboard-data-server, markdown,
  werkzeug) imports TensorFlow whenever it is installed: file access goes through `tensorboard.compat.tf`,
  which falls back to its stub only when `import tensorflow` fails. 0.15 s to import, then 2.3-2.6 s and
  3,881 modules at the first write, tensorflow and keras among them: a torch run would load TensorFlow.
- This module: 0.004-0.008 s to import, 90 modules, no protobuf; 1,000 events of 9 scalars in 0.045 s
  (tensorboardX: 0.34 s).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from types import TracebackType

_CRC32C_TABLE: list[int] = []


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses."""
    if not _CRC32C_TABLE:
        for byte in range(256):
            crc = byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
            _CRC32C_TABLE.append(crc)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire_type)
    if wire_type == 2:  # length-delimited
        return key + _varint(len(payload)) + payload
    return key + payload


def _event(wall_time: float, step: int, summary: bytes | None = None, file_version: str | None = None) -> bytes:
    """Event{wall_time=1 (double), step=2 (int64), file_version=3 (string), summary=5 (Summary)}."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step & (2 ** 64 - 1)))
    if file_version is not None:
        out += _field(3, 2, file_version.encode())
    if summary is not None:
        out += _field(5, 2, summary)
    return out


def _scalar_summary(values: dict[str, float]) -> bytes:
    """Summary{repeated Value value=1}, Value{tag=1 (string), simple_value=2 (float)}."""
    return b"".join(_field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
                    for tag, value in values.items())


class EventWriter:
    """Appends scalar events to one events file in `directory`; does nothing unless `enabled` (rank 0)."""

    def __init__(self, directory: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path: Path | None = None
        self._file = None
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)
            name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.hvdtrain"
            self.path = directory / name
            self._file = self.path.open("ab")
            self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        assert self._file is not None
        length = struct.pack("<Q", len(record))
        self._file.write(length + struct.pack("<I", _masked(crc32c(length))) + record
                         + struct.pack("<I", _masked(crc32c(record))))

    def scalars(self, step: int, values: dict[str, float | None], wall_time: float | None = None) -> None:
        """One event at `step` with every value that is not None (NaN/inf are written as they are)."""
        kept = {tag: float(v) for tag, v in values.items() if v is not None}
        if self._file is not None and kept:
            self._write(_event(time.time() if wall_time is None else wall_time, step, _scalar_summary(kept)))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
