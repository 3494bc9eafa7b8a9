"""The journal: append-only segment files of checksummed frames (tier 3; blocking file I/O).

A segment starts with a 16-byte header (magic, format version, the LSN of its first record);
then frames `<u32 length><u32 crc32(payload)><payload>`, numbered one after another. The
writer buffers appended payloads in memory and `flush()` writes them and fdatasyncs: a
record is durable only once `flush()` has returned.

Reading tells a torn tail (the end of the newest segment, written when power went out) from
corruption (a bad frame with good frames after it, or anywhere in an older segment): the
first is truncated and logged, the second raises `JournalCorrupt` naming the file and offset.
The blocking calls here are made from a worker thread by the store, never the event loop.

Beside the segments, `durable.mark` holds the last lsn made durable (magic, lsn, crc32),
rewritten in place after every batch's fdatasync. It is not synced itself (a power loss
can only leave it behind the truth, never ahead of it), and it is what lets start-up tell
a journal that was cut short or lost its newest segment from one that simply ends there.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NodehostError, rebuild

__all__ = [
    "DiskFull",
    "JournalCorrupt",
    "JournalWriter",
    "Segment",
    "SegmentScan",
    "read_journal",
    "read_mark",
    "scan_segment",
    "segments",
    "write_mark",
]

log = logging.getLogger(__name__)

MAGIC = b"NHJ\x01"
VERSION = 1
SEGMENT_HEADER = struct.Struct("<4sIQ")  # magic, version, first lsn
FRAME = struct.Struct("<II")  # payload length, crc32
MAX_RECORD = 64 * 1024 * 1024
_NAME = re.compile(r"^(\d{20})\.journal$")
MARK_NAME = "durable.mark"
MARK = struct.Struct("<4sQI")  # magic, last durable lsn, crc32 of the two
MARK_MAGIC = b"NHD\x01"


class JournalCorrupt(NodehostError):
    """A journal file is damaged somewhere other than its torn tail: refuse to start."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"journal {path} is corrupt at byte {offset}: {reason}. nodehost will not start "
            "on damaged history. To proceed, stop the service, copy the state directory "
            "aside as a backup, then either restore the state directory from a backup or "
            f"truncate the file at byte {offset} (losing the records after it) and start "
            "again."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.path, self.offset, self.reason), {}))


class DiskFull(NodehostError):
    """The journal could not be written for lack of space; nothing was made durable."""


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    first_lsn: int


def segments(directory: Path) -> list[Segment]:
    """The segment files of a journal directory, oldest first."""
    found = []
    for entry in directory.iterdir() if directory.exists() else ():
        m = _NAME.match(entry.name)
        if m:
            found.append(Segment(entry, int(m.group(1))))
    return sorted(found, key=lambda s: s.first_lsn)


def _valid_frame_at(data: bytes | memoryview, offset: int) -> int | None:
    """The end offset of a valid frame starting at `offset`, or None."""
    if offset + FRAME.size > len(data):
        return None
    length, crc = FRAME.unpack_from(data, offset)
    end: int = offset + FRAME.size + length
    if length == 0 or length > MAX_RECORD or end > len(data):
        return None
    if zlib.crc32(data[offset + FRAME.size:end]) != crc:
        return None
    return end


def _any_valid_frame_after(data: bytes, offset: int) -> int | None:
    """Where a valid frame starts after `offset`, if anywhere (a sign of corruption)."""
    for pos in range(offset + 1, len(data) - FRAME.size + 1):
        if _valid_frame_at(data, pos) is not None:
            return pos
    return None


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """What reading a segment found: its good records, and where and why it stops early."""

    payloads: list[bytes]
    valid: int  # bytes of the file that hold the header and the good records
    size: int  # bytes of the file
    problem: tuple[int, str] | None = None  # (byte offset, reason): damage, not a torn tail

    @property
    def torn(self) -> int:
        """Bytes after the good records that look like a torn tail (0 for a clean end)."""
        return 0 if self.problem else self.size - self.valid


def scan_segment(segment: Segment, *, last: bool, limit: int | None = None) -> SegmentScan:
    """Read a segment without changing it, and say how it ends.

    A bad frame with nothing valid after it in the newest segment is a torn tail (the
    good part stops before it); anything else bad is a `problem`.
    """
    data = segment.path.read_bytes()
    if len(data) < SEGMENT_HEADER.size:
        if last:  # created, then power went before its header was durable
            return SegmentScan([], 0, len(data))
        return SegmentScan([], 0, len(data), (0, "the segment header is missing"))
    magic, version, first = SEGMENT_HEADER.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION or first != segment.first_lsn:
        if last and _any_valid_frame_after(data, -1) is None:
            # created just before power went out: its header never became durable
            return SegmentScan([], 0, len(data))
        return SegmentScan([], 0, len(data), (0, f"bad segment header ({magic!r}, version "
                                                 f"{version}, first lsn {first})"))
    payloads: list[bytes] = []
    offset = SEGMENT_HEADER.size
    view = memoryview(data)
    while offset < len(data) and (limit is None or len(payloads) < limit):
        end = _valid_frame_at(view, offset)
        if end is None:
            later = _any_valid_frame_after(data, offset)
            if not last or later is not None:
                where = f"; a valid record follows at byte {later}" if later is not None else ""
                return SegmentScan(payloads, offset, len(data), (offset, f"bad record{where}"))
            return SegmentScan(payloads, offset, len(data))
        payloads.append(bytes(view[offset + FRAME.size:end]))
        offset = end
    return SegmentScan(payloads, offset, len(data) if limit is None else offset)


def read_segment(segment: Segment, *, last: bool,
                 limit: int | None = None) -> tuple[list[bytes], int]:
    """Payloads of a segment and the byte length of its valid part; JournalCorrupt for
    damage that is not a torn tail (which is logged)."""
    scan = scan_segment(segment, last=last, limit=limit)
    if scan.problem is not None:
        raise JournalCorrupt(segment.path, *scan.problem)
    if scan.torn:
        log.warning("journal %s: torn tail of %d bytes at byte %d truncated",
                    segment.path, scan.torn, scan.valid)
    return scan.payloads, scan.valid


def read_journal(directory: Path, *, repair: bool = True,
                 until: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(lsn, payload) of every durable record, oldest first; truncates a torn tail.

    With `until`, stops after that lsn without looking further (the writer may be
    appending there), and repairs nothing."""
    segs = segments(directory)
    expected: int | None = None
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if until is not None:
            if seg.first_lsn > until:
                return
            repair = False
        if expected is not None and seg.first_lsn != expected:
            raise JournalCorrupt(seg.path, 0, f"starts at record {seg.first_lsn}, but the "
                                              f"previous segment ends before {expected}")
        limit = None if until is None else until - seg.first_lsn + 1
        payloads, valid = read_segment(seg, last=last, limit=limit)
        if last and repair and (valid < seg.path.stat().st_size or valid == 0):
            _truncate(seg.path, valid)
        for n, payload in enumerate(payloads):
            yield seg.first_lsn + n, payload
        expected = seg.first_lsn + len(payloads)


def _truncate(path: Path, size: int) -> None:
    if size == 0:
        path.unlink()
        _fsync_dir(path.parent)
        return
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_mark(directory: Path) -> int | None:
    """The last lsn a writer made durable, or None: no mark (a journal of nodehost 0.1 or a
    new one) or an unreadable one (logged)."""
    path = directory / MARK_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) >= MARK.size:
        magic, lsn, crc = MARK.unpack_from(data, 0)
        if magic == MARK_MAGIC and crc == zlib.crc32(data[:MARK.size - 4]):
            return int(lsn)
    log.error("journal %s is unreadable: the end of the journal cannot be checked", path)
    return None


def _pack_mark(lsn: int) -> bytes:
    head = MARK_MAGIC + lsn.to_bytes(8, "little")
    return head + zlib.crc32(head).to_bytes(4, "little")


def write_mark(directory: Path, lsn: int) -> None:
    """Set the mark durably (after start-up accepted a loss: the history ends at `lsn`)."""
    fd = os.open(directory / MARK_NAME, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, _pack_mark(lsn), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(directory)


class JournalWriter:
    """Appends records to the newest segment; `flush()` makes them durable.

    Not thread-safe: `append` is called from the event loop and `flush` from one worker
    thread at a time, never both at once for the same bytes (the store hands a batch over).
    """

    def __init__(self, directory: Path, *, next_lsn: int, segment_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.next_lsn = next_lsn  # lsn of the next record appended
        self.durable_lsn = next_lsn - 1  # last lsn known durable
        self._pending = bytearray()
        self._pending_count = 0
        self._fd: int | None = None
        self._size = 0
        self._segment: Segment | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self._mark = os.open(directory / MARK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        self._mark_failed = False
        if os.fstat(self._mark).st_size < MARK.size:  # new, or from before marks existed
            self._write_mark(self.durable_lsn)
        existing = segments(directory)
        if existing:
            seg = existing[-1]
            if seg.path.stat().st_size < SEGMENT_HEADER.size:
                seg.path.unlink()  # its header never became durable: start it again
                _fsync_dir(directory)
            else:
                self._segment = seg
                self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
                self._size = os.fstat(self._fd).st_size

    # --- called on the event loop ------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Buffer one record; returns its lsn. Durable after the next `flush()`."""
        if not payload or len(payload) > MAX_RECORD:
            raise ValueError(f"a journal record must be 1..{MAX_RECORD} bytes")
        self._pending += FRAME.pack(len(payload), zlib.crc32(payload))
        self._pending += payload
        self._pending_count += 1
        lsn = self.next_lsn
        self.next_lsn += 1
        return lsn

    def take_batch(self) -> tuple[bytes, int, int]:
        """Hand the buffered frames to a flush: (bytes, their count, the last lsn)."""
        data = bytes(self._pending)
        count = self._pending_count
        self._pending.clear()
        self._pending_count = 0
        return data, count, self.next_lsn - 1

    def give_back(self, batch: tuple[bytes, int, int]) -> None:
        """Put a batch that could not be written back in front of the buffer."""
        data, count, _ = batch
        self._pending[:0] = data
        self._pending_count += count

    @property
    def pending(self) -> int:
        return self._pending_count

    # --- called from a worker thread -----------------------------------------------------------

    def write_batch(self, batch: tuple[bytes, int, int]) -> None:
        """Write and fdatasync a batch. DiskFull leaves the file as it was; other OSErrors
        (EIO, a failed fsync) propagate and must end the process."""
        data, count, last_lsn = batch
        if not count:
            return
        first_lsn = last_lsn - count + 1
        if self._fd is None or self._size >= self.segment_bytes:
            self._open_segment(first_lsn)
        assert self._fd is not None
        before = self._size
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                os.ftruncate(self._fd, before)  # leave no partial frame behind
                raise DiskFull(f"journal {self._segment.path if self._segment else ''}: "
                               f"{os.strerror(exc.errno)}") from exc
            raise
        os.fdatasync(self._fd)  # an error here is fatal: never retried
        self._size = before + len(data)
        self.durable_lsn = last_lsn
        self._write_mark(last_lsn)

    def _write_mark(self, lsn: int) -> None:
        # the same 16 bytes in place: no allocation, so no ENOSPC; one pwrite, so a kill -9
        # leaves the old or the new value. Unsynced: a power loss may keep an older value.
        try:
            os.pwrite(self._mark, _pack_mark(lsn), 0)
        except OSError as exc:
            if not self._mark_failed:
                self._mark_failed = True
                log.error("journal %s cannot be updated (%s): a journal cut short will not be "
                          "noticed at the next start", self.directory / MARK_NAME, exc)

    def _open_segment(self, first_lsn: int) -> None:
        """Start a new segment at `first_lsn`. The current one stays open for appends until
        the new one is durable, so a roll the disk cannot take (DiskFull) is tried again."""
        path = self.directory / f"{first_lsn:020d}.journal"
        fd = -1
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            _write_all(fd, SEGMENT_HEADER.pack(MAGIC, VERSION, first_lsn))
            os.fsync(fd)
            _fsync_dir(self.directory)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
                path.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiskFull(f"journal {path}: {os.strerror(exc.errno)}") from exc
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._size = SEGMENT_HEADER.size
        self._segment = Segment(path, first_lsn)

    def remove_before(self, lsn: int) -> int:
        """Delete segments whose records all precede `lsn`; returns how many were deleted."""
        segs = segments(self.directory)
        removed = 0
        for seg, nxt in itertools.pairwise(segs):
            if nxt.first_lsn <= lsn and (self._segment is None or seg.path != self._segment.path):
                seg.path.unlink()
                removed += 1
        if removed:
            _fsync_dir(self.directory)
        return removed

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._mark >= 0:
            os.close(self._mark)
            self._mark = -1
