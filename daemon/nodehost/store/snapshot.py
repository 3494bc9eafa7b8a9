"""Snapshots: the whole state at one journal position, written atomically (blocking I/O).

`snap-<lsn>.msgpack` = header (magic, version, lsn, crc32 of the body) + a msgpack body. A
snapshot is written to a temp file in the same directory, fsynced, renamed into place, and
the directory fsynced; the previous generation is kept until the new one is durable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

from ..errors import rebuild
from .journal import _fsync_dir, _write_all

__all__ = ["SnapshotCorrupt", "list_snapshots", "read_newest", "read_snapshot", "write_snapshot"]

log = logging.getLogger(__name__)

MAGIC = b"NHS\x01"
HEADER = struct.Struct("<4sQI")  # magic, lsn, crc32(body)
_NAME = re.compile(r"^snap-(\d{20})\.msgpack$")


class SnapshotCorrupt(Exception):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"snapshot {path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.path, self.reason), {}))


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """(lsn, path) of every snapshot, oldest first; leftover temp files are removed."""
    found: list[tuple[int, Path]] = []
    if not directory.exists():
        return found
    for entry in directory.iterdir():
        if entry.name.startswith(".tmp-"):
            entry.unlink(missing_ok=True)  # a write that never finished
            continue
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
    return sorted(found)


def _read(path: Path) -> tuple[int, bytes]:
    data = path.read_bytes()
    if len(data) < HEADER.size:
        raise SnapshotCorrupt(path, "shorter than its header")
    magic, lsn, crc = HEADER.unpack_from(data, 0)
    body = data[HEADER.size:]
    if magic != MAGIC:
        raise SnapshotCorrupt(path, f"not a nodehost snapshot (magic {magic!r})")
    if zlib.crc32(body) != crc:
        raise SnapshotCorrupt(path, "checksum mismatch")
    return lsn, body


def read_snapshot(path: Path, lsn: int) -> bytes:
    """The body of the snapshot at `path`, named for `lsn`; SnapshotCorrupt if it does not
    validate."""
    found_lsn, body = _read(path)
    if found_lsn != lsn:
        raise SnapshotCorrupt(path, f"says record {found_lsn}, its name {lsn}")
    return body


def read_newest(directory: Path) -> tuple[int, bytes] | None:
    """The newest snapshot that validates: (lsn, body); None when there is none.

    A newest snapshot that does not validate is logged and the one before it is used (its
    journal segments are kept until a newer snapshot is durable).
    """
    for lsn, path in reversed(list_snapshots(directory)):
        try:
            return lsn, read_snapshot(path, lsn)
        except SnapshotCorrupt as exc:
            log.error("%s; trying the previous snapshot", exc)
    return None


def write_snapshot(directory: Path, lsn: int, body: bytes, *, keep: int = 2) -> Path:
    """Write a snapshot durably, then delete all but the newest `keep` generations."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"snap-{lsn:020d}.msgpack"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        _write_all(fd, HEADER.pack(MAGIC, lsn, zlib.crc32(body)))
        _write_all(fd, body)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    for _, old in list_snapshots(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path
