"""The journal and snapshot files: framing, torn tails, corruption, disk full, power loss."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import anyio
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from builders import T0
from nodehost.commands import CancelRun
from nodehost.store import journal as journal_module
from nodehost.store import store as store_module
from nodehost.store.journal import (
    DiskFull,
    JournalCorrupt,
    JournalWriter,
    read_journal,
    segments,
)
from nodehost.store.snapshot import list_snapshots, read_newest, write_snapshot
from nodehost.store.store import Store


def write(directory: Path, payloads: list[bytes], *, next_lsn: int = 1,
          segment_bytes: int = 1 << 20) -> JournalWriter:
    writer = JournalWriter(directory, next_lsn=next_lsn, segment_bytes=segment_bytes)
    for payload in payloads:
        writer.append(payload)
    writer.write_batch(writer.take_batch())
    return writer


def records(directory: Path) -> list[tuple[int, bytes]]:
    return list(read_journal(directory))


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    """Records keep their lsn order across rotated segments and a reopened writer."""
    payloads = [f"record {i}".encode() * 20 for i in range(50)]
    writer = JournalWriter(tmp_path, next_lsn=1, segment_bytes=2000)
    for p in payloads[:30]:
        writer.append(p)
        writer.write_batch(writer.take_batch())
    writer.close()
    assert len(segments(tmp_path)) == 3  # ~180-byte records, cut past 2,000 bytes
    writer = JournalWriter(tmp_path, next_lsn=31, segment_bytes=2000)
    for p in payloads[30:]:
        writer.append(p)
    writer.write_batch(writer.take_batch())
    assert writer.durable_lsn == 50
    assert records(tmp_path) == list(enumerate(payloads, start=1))


def test_a_torn_tail_is_truncated_and_logged(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Half a frame at the end (power lost mid-write) is cut off; the rest is intact."""
    write(tmp_path, [b"one", b"two", b"three"]).close()
    [seg] = segments(tmp_path)
    full = seg.path.read_bytes()
    seg.path.write_bytes(full[:-2])
    with caplog.at_level(logging.WARNING):
        assert records(tmp_path) == [(1, b"one"), (2, b"two")]
    assert "torn tail" in caplog.text and str(seg.path) in caplog.text
    assert seg.path.stat().st_size == len(full) - (8 + len(b"three"))
    # appending after the repair continues the numbering
    write(tmp_path, [b"four"], next_lsn=3).close()
    assert records(tmp_path) == [(1, b"one"), (2, b"two"), (3, b"four")]


@pytest.mark.parametrize("tail", [b"\x00" * 64, b"\xff" * 7, os.urandom(300)])
def test_garbage_after_the_last_record_is_a_torn_tail(tmp_path: Path, tail: bytes) -> None:
    """Zeros or junk after the last good record (unsynced space) are dropped."""
    write(tmp_path, [b"a", b"b"]).close()
    [seg] = segments(tmp_path)
    size = seg.path.stat().st_size
    with seg.path.open("ab") as f:
        f.write(tail)
    assert records(tmp_path) == [(1, b"a"), (2, b"b")]
    assert seg.path.stat().st_size == size


def test_a_bit_flip_in_the_middle_refuses_to_start(tmp_path: Path) -> None:
    """A damaged record followed by good ones is corruption: the error names file and offset."""
    write(tmp_path, [b"first record", b"second record", b"third record"]).close()
    [seg] = segments(tmp_path)
    data = bytearray(seg.path.read_bytes())
    offset = 16 + 8 + len(b"first record")  # the second frame
    data[offset + 8 + 3] ^= 0x01
    seg.path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as info:
        records(tmp_path)
    assert info.value.offset == offset
    message = str(info.value)
    assert str(seg.path) in message and f"byte {offset}" in message
    assert "a valid record follows" in message and "To proceed" in message
    assert seg.path.read_bytes() == bytes(data)  # nothing was truncated


def test_damage_in_an_older_segment_is_corruption(tmp_path: Path) -> None:
    """Older segments are complete by construction: any bad frame there is corruption."""
    writer = JournalWriter(tmp_path, next_lsn=1, segment_bytes=100)
    for i in range(6):
        writer.append(b"x" * 60 + bytes([i]))
        writer.write_batch(writer.take_batch())
    writer.close()
    first = segments(tmp_path)[0].path
    first.write_bytes(first.read_bytes()[:-1])
    with pytest.raises(JournalCorrupt) as info:
        records(tmp_path)
    assert info.value.path == first


def test_disk_full_leaves_no_partial_record(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC mid-write: DiskFull, the file keeps only whole records, the batch can retry."""
    writer = write(tmp_path, [b"kept"])
    real_write = os.write
    calls = {"n": 0}

    def short_then_full(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "write", short_then_full)
    writer.append(b"lost for now")
    batch = writer.take_batch()
    with pytest.raises(DiskFull, match="No space left"):
        writer.write_batch(batch)
    writer.give_back(batch)
    assert writer.durable_lsn == 1
    assert records(tmp_path) == [(1, b"kept")]
    monkeypatch.setattr(journal_module.os, "write", real_write)
    writer.write_batch(writer.take_batch())
    assert records(tmp_path) == [(1, b"kept"), (2, b"lost for now")]


def test_a_real_file_size_limit_is_reported_as_disk_full(tmp_path: Path) -> None:
    """Under RLIMIT_FSIZE the kernel refuses the write (EFBIG): DiskFull, nothing torn."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from nodehost.store.journal import JournalWriter, DiskFull
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        w = JournalWriter(Path({str(tmp_path)!r}), next_lsn=1)
        n = 0
        try:
            while True:
                w.append(b"x" * 1000)
                w.write_batch(w.take_batch())
                n += 1
        except DiskFull as exc:
            print(n, exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    written = int(out.split()[0])
    # a 16-byte header and four 1,008-byte frames fit under 4,096 bytes; the fifth does not
    assert written == 4 and "File too large" in out
    assert [lsn for lsn, _ in records(tmp_path)] == [1, 2, 3, 4]


def test_a_failed_fdatasync_is_not_swallowed(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO from fdatasync propagates (the store makes it fatal) and nothing is acked."""
    writer = write(tmp_path, [b"a"])

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fdatasync", eio)
    writer.append(b"b")
    with pytest.raises(OSError) as info:
        writer.write_batch(writer.take_batch())
    assert info.value.errno == errno.EIO
    assert writer.durable_lsn == 1


def test_remove_before_keeps_what_is_still_needed(tmp_path: Path) -> None:
    """Segments are removed only when every record in them precedes the cut."""
    writer = JournalWriter(tmp_path, next_lsn=1, segment_bytes=60)
    for i in range(8):
        writer.append(b"y" * 40 + bytes([i]))
        writer.write_batch(writer.take_batch())
    assert writer.remove_before(5) > 0
    remaining = [lsn for lsn, _ in read_journal(tmp_path)]
    assert remaining[0] <= 5 and remaining[-1] == 8


# --- snapshots ------------------------------------------------------------------------------


def test_snapshots_keep_two_generations_and_skip_a_damaged_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The newest valid snapshot wins; a damaged newest one falls back to the previous."""
    for lsn in (10, 20, 30):
        write_snapshot(tmp_path, lsn, f"state at {lsn}".encode())
    assert [lsn for lsn, _ in list_snapshots(tmp_path)] == [20, 30]
    assert read_newest(tmp_path) == (30, b"state at 30")
    newest = list_snapshots(tmp_path)[-1][1]
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        assert read_newest(tmp_path) == (20, b"state at 20")
    assert "checksum mismatch" in caplog.text


def test_leftover_temp_files_are_cleaned(tmp_path: Path) -> None:
    """A snapshot write cut short leaves a .tmp file; it is removed and never read."""
    (tmp_path / ".tmp-abc.part").write_bytes(b"half")
    assert read_newest(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


# --- simulated power loss at every fsync boundary --------------------------------------------


class PowerLoss(RuleBasedStateMachine):
    """Appends, then power loss: whatever was acknowledged must survive, in order.

    The durable content of a file is what it held at its last fsync/fdatasync; at power
    loss each file keeps that, plus a random part of what was written after it, plus junk
    (the crash VFS of SQLite's test6.c, in Python). The store fdatasyncs every batch it
    writes, so bytes without a sync exist only in the window right before a power loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.durable: dict[str, bytes] = {}
        self.acked: list[bytes] = []
        self.appended: list[bytes] = []
        self.counter = 0
        self.unsynced = False
        self.sync_enabled = True
        self.real = (os.fsync, os.fdatasync)
        os.fsync = os.fdatasync = self._tracking_sync  # restored in teardown
        self.writer = JournalWriter(self.dir, next_lsn=1, segment_bytes=150)

    def _tracking_sync(self, fd: int) -> None:
        if not self.sync_enabled:
            return
        self.real[1](fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isfile(path):
            self.durable[path] = Path(path).read_bytes()

    @precondition(lambda self: not self.unsynced)
    @rule(size=st.integers(1, 60), sync=st.booleans())
    def append(self, size: int, sync: bool) -> None:
        self.counter += 1
        payload = self.counter.to_bytes(4, "big") * (size // 4 + 1)
        self.writer.append(payload)
        self.appended.append(payload)
        if sync:
            self.writer.write_batch(self.writer.take_batch())
            self.acked = list(self.appended)

    @precondition(lambda self: not self.unsynced and self.writer.pending)
    @rule()
    def write_then_lose_power_before_the_sync(self) -> None:
        self.sync_enabled = False
        try:
            self.writer.write_batch(self.writer.take_batch())
        finally:
            self.sync_enabled = True
        self.unsynced = True

    @precondition(lambda self: self.counter > 0)
    @rule(keep=st.floats(0, 1), junk=st.binary(max_size=40))
    def power_loss_and_recover(self, keep: float, junk: bytes) -> None:
        self.writer.close()
        for seg in segments(self.dir):
            path = str(seg.path)
            content = seg.path.read_bytes()
            durable = self.durable.get(path, b"")
            extra = content[len(durable):]
            if extra:  # only space written since the last sync can hold junk
                seg.path.write_bytes(durable + extra[: int(len(extra) * keep)] + junk)
        got = [payload for _, payload in read_journal(self.dir)]
        assert got[: len(self.acked)] == self.acked, "an acknowledged record was lost"
        assert got == self.appended[: len(got)], "a record that was never written came back"
        self.appended = list(got)
        self.acked = list(got)
        self.durable = {str(seg.path): seg.path.read_bytes() for seg in segments(self.dir)}
        self.unsynced = False
        self.writer = JournalWriter(self.dir, next_lsn=len(got) + 1, segment_bytes=150)

    @invariant()
    def nothing_acked_is_still_pending(self) -> None:
        assert self.writer.durable_lsn >= len(self.acked)

    def teardown(self) -> None:
        os.fsync, os.fdatasync = self.real
        self.writer.close()
        self.tmp.cleanup()


# NODEHOST_POWERLOSS_EXAMPLES=600 for a deeper search than the suite's default
PowerLoss.TestCase.settings = settings(
    max_examples=int(os.environ.get("NODEHOST_POWERLOSS_EXAMPLES", "60")),
    stateful_step_count=30, deadline=None,
)
test_power_loss = PowerLoss.TestCase


@pytest.mark.anyio
async def test_a_snapshot_the_disk_cannot_take_leaves_the_journal_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while a snapshot is written: compact raises, no segment is dropped and no
    temp file is left; the history recovers whole, and the next compact succeeds."""
    store = Store(tmp_path, segment_bytes=512)
    store.open()
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        for i in range(40):
            store.append(CancelRun(ts=T0, seq=i, run_id=f"run-{i}", reason="x" * 40))
        await store.wait_durable()
        segments = sorted(p.name for p in (tmp_path / "journal").iterdir())
        real = store_module.write_snapshot

        def full(directory: Path, lsn: int, body: bytes, **kw: object) -> Path:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(store_module, "write_snapshot", full)
        with pytest.raises(OSError):
            await store.compact()
        assert sorted(p.name for p in (tmp_path / "journal").iterdir()) == segments
        monkeypatch.setattr(store_module, "write_snapshot", real)
        tg.cancel_scope.cancel()
    store.close()
    again = Store(tmp_path)
    assert [r.run_id for r in again.open().records] == [f"run-{i}" for i in range(40)]
    async with anyio.create_task_group() as tg:
        await tg.start(again.run)
        assert await again.compact() == 40
        tg.cancel_scope.cancel()
    again.close()
