"""The store: group commit of journal records, snapshots, and what recovery reads back.

Records are appended synchronously from the event loop (no await in a state transition);
`run()` writes them in batches from a worker thread, fdatasyncs once per batch, and wakes
whoever waits in `wait_durable()`. A request is answered only after that.

Failure policy: a full disk keeps the records in memory, marks the store `full` (new runs
are refused with 507 while reads go on) and tries again; any other write or fsync error
raises `StoreFailed` out of `run()`, which ends the process (a failed fsync is never
retried: the kernel may have dropped the pages it reported on).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread
import msgspec
from anyio.abc import TaskStatus

from .. import collector
from ..commands import Forget, Submit
from ..config import JournalConfig
from ..errors import NodehostError
from .continuity import read_history, settle_loss
from .journal import DiskFull, JournalWriter, read_journal
from .records import Record, decode_record, encode_record
from .snapshot import read_newest, write_snapshot

__all__ = ["Recovered", "Store", "StoreFailed"]

log = logging.getLogger(__name__)


class StoreFailed(NodehostError):
    """The journal could not be written (not for lack of space): the process must end."""


@dataclass(slots=True)
class Recovered:
    """What start-up found on disk: snapshot records, then the journal tail."""

    snapshot_lsn: int
    records: list[Record]
    seconds: float


class Store:
    """The journal and snapshots under `directory`, written as the `[journal]` section says."""

    def __init__(
        self,
        directory: Path,
        config: JournalConfig = JournalConfig(),
        *,
        full_retry_interval: float = 1.0,
        segment_bytes: int | None = None,  # smaller segments than the config allows (tests)
        accept_loss: bool = False,  # start on an incomplete history (the operator said so)
    ) -> None:
        self.accept_loss = accept_loss
        self.directory = directory
        self.fsync: Literal["always", "batch"] = config.fsync
        self.batch_interval = config.batch_interval_ms / 1000
        self.full_retry_interval = full_retry_interval
        self._segment_bytes = segment_bytes or config.segment_mb << 20
        self._writer: JournalWriter | None = None
        self._wake = anyio.Event()
        self._hurry = anyio.Event()
        self._flushed = anyio.Event()
        self.journal_full = False  # a batch could not be written for lack of space
        self.snapshot_full = False  # a snapshot could not be: the disk is all but full
        self._flush_started: float | None = None
        self.snapshot_lsn = 0
        self.records_since_snapshot = 0
        self.batches = 0
        self.records_written = 0
        # called on the event loop with the durable lsn after each batch: what waits for its
        # records to be durable (events to publish, attempts to start) goes then
        self.durable_listeners: list[Callable[[int], None]] = []

    @property
    def full(self) -> bool:
        """No space for the journal or a snapshot: new runs are refused (507) until there
        is, while reads and the runs already admitted go on."""
        return self.journal_full or self.snapshot_full

    @property
    def journal_dir(self) -> Path:
        return self.directory / "journal"

    @property
    def snapshot_dir(self) -> Path:
        return self.directory / "snapshots"

    # --- start-up ------------------------------------------------------------------------------

    def open(self) -> Recovered:
        """Read the newest valid snapshot and the journal after it; ready the writer.

        Raises HistoryIncomplete when acknowledged records are missing or damaged (see
        `continuity`), unless the store was made with `accept_loss`: then what is left is
        snapshotted and the journal starts again after it.
        """
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        records: list[Record] = []
        with collector.paused():
            history = read_history(self.directory, accept_loss=self.accept_loss)
            if history.snapshot_body is not None:
                records.extend(_unpack_snapshot(history.snapshot_body))
            records.extend(decode_record(payload) for _, payload in history.journal)
            lsn = last = history.last_lsn
            if not history.losses:
                lsn = history.snapshot_lsn
            else:  # a loss the operator accepted: start again from what is left
                if history.orphans_possible:
                    records = _without_orphans(records)
                write_snapshot(self.snapshot_dir, last,
                               _pack_snapshot([encode_record(r) for r in records]))
                settle_loss(self.journal_dir, last)
                log.critical("started with %d records of history, snapshotted at record %d",
                             len(records), last)
        self.snapshot_lsn = lsn
        self._writer = JournalWriter(self.journal_dir, next_lsn=last + 1,
                                     segment_bytes=self._segment_bytes)
        self.records_since_snapshot = last - lsn
        return Recovered(lsn, records, time.perf_counter() - started)

    # --- on the event loop -----------------------------------------------------------------

    def append(self, record: Record) -> int:
        """Buffer a record for the next batch; returns its lsn."""
        writer = self._writer
        assert writer is not None, "Store.open() first"
        lsn = writer.append(encode_record(record))
        self.records_since_snapshot += 1
        if writer.pending == 1:
            self._wake.set()
        return lsn

    def hurry(self) -> None:
        """Someone waits for the records appended so far (an attempt that may start only
        once they are durable): write them without waiting for the batch to fill up."""
        if self._writer is not None and self._writer.pending:
            self._hurry.set()
            self._wake.set()

    @property
    def last_lsn(self) -> int:
        return self._writer.next_lsn - 1 if self._writer else 0

    @property
    def durable_lsn(self) -> int:
        return self._writer.durable_lsn if self._writer else 0

    async def wait_durable(self, lsn: int | None = None, *, unless_full: bool = False) -> None:
        """Return once every record up to `lsn` (default: all appended so far) is durable;
        with `unless_full`, also as soon as the disk is full (nothing can be, then)."""
        target = self.last_lsn if lsn is None else lsn
        while self.durable_lsn < target:
            if unless_full and self.journal_full:
                return
            await self._flushed.wait()

    def statistics(self) -> dict[str, int]:
        writer = self._writer
        return {
            "pending": writer.pending if writer else 0,
            "durable_lsn": self.durable_lsn,
            "batches": self.batches,
            "records_written": self.records_written,
            "full": int(self.full),
        }

    # --- the commit loop ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled; flushes what is pending on the way out."""
        writer = self._writer
        assert writer is not None, "Store.open() first"
        task_status.started()
        try:
            while True:
                if not writer.pending:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                if (self.fsync == "batch" and self.batch_interval > 0
                        and not self._hurry.is_set()):
                    with anyio.move_on_after(self.batch_interval):  # let the batch fill up
                        await self._hurry.wait()
                self._hurry = anyio.Event()
                await self._flush_once(writer)
        finally:
            with anyio.CancelScope(shield=True):
                if writer.pending and not self.journal_full:
                    await self._flush_once(writer)

    def stuck_for(self) -> float:
        """Seconds the current write + fdatasync has been going on (0 when none is)."""
        started = self._flush_started
        return 0.0 if started is None else time.monotonic() - started

    async def _flush_once(self, writer: JournalWriter) -> None:
        batch = writer.take_batch()
        if not batch[1]:
            return
        self._flush_started = time.monotonic()
        try:
            await anyio.to_thread.run_sync(writer.write_batch, batch)
        except DiskFull as exc:
            writer.give_back(batch)
            if not self.journal_full:
                log.error("%s: refusing new runs until there is space again", exc)
                self.journal_full = True
                flushed, self._flushed = self._flushed, anyio.Event()
                flushed.set()  # whoever waits `unless_full` goes on
            await anyio.sleep(self.full_retry_interval)
            return
        except OSError as exc:
            log.critical("journal write failed, stopping: %s (nothing written after the last "
                         "durable record will be kept)", exc)
            raise StoreFailed(f"journal write failed: {exc}") from exc
        finally:
            self._flush_started = None
        if self.journal_full:
            self.journal_full = False
            if not self.full:
                log.warning("journal writable again: accepting new runs")
        self.batches += 1
        self.records_written += batch[1]
        flushed, self._flushed = self._flushed, anyio.Event()
        flushed.set()
        durable = writer.durable_lsn
        for listener in self.durable_listeners:
            listener(durable)

    # --- snapshots ----------------------------------------------------------------------------

    async def compact(self) -> int:
        """Write a snapshot of the retained history at the durable lsn; drop old segments.

        The history is the newest snapshot plus the journal up to that lsn, less the records
        of runs a `Forget` record dropped (and the Forget records themselves). It is read and
        written in a worker thread, from disk: the event loop only waits. Returns the lsn.
        """
        writer = self._writer
        assert writer is not None
        lsn = self.last_lsn
        await self.wait_durable(lsn)
        previous = self.snapshot_lsn

        def work() -> int:
            records: list[Record] = []
            snapshot = read_newest(self.snapshot_dir)
            base = 0
            if snapshot is not None:
                base, body = snapshot
                records.extend(_unpack_snapshot(body))
            for record_lsn, payload in read_journal(self.journal_dir, until=lsn):
                if record_lsn > base:
                    records.append(decode_record(payload))
            forgotten = {run_id for r in records if isinstance(r, Forget) for run_id in r.run_ids}
            kept = [encode_record(r) for r in records
                    if not isinstance(r, Forget) and r.run_id not in forgotten]
            write_snapshot(self.snapshot_dir, lsn, _pack_snapshot(kept))
            # keep what the previous snapshot needs, in case the newest cannot be read
            writer.remove_before(previous + 1)
            return len(kept)

        try:
            kept = await anyio.to_thread.run_sync(work)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                if not self.snapshot_full:
                    log.error("snapshot at record %d not written (%s): refusing new runs "
                              "until there is space for it", lsn, os.strerror(exc.errno))
                self.snapshot_full = True
            raise
        if self.snapshot_full:
            self.snapshot_full = False
            if not self.full:
                log.warning("snapshot written: there is space again, accepting new runs")
        self.snapshot_lsn = lsn
        self.records_since_snapshot = max(0, self.last_lsn - lsn)
        log.info("snapshot at record %d: %d records of history kept", lsn, kept)
        return lsn

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _without_orphans(records: list[Record]) -> list[Record]:
    """The records of runs whose Submit is in the history (the rest began in what was lost)."""
    started = {r.run_id for r in records if isinstance(r, Submit)}
    return [r for r in records if isinstance(r, Forget) or r.run_id in started]


def _pack_snapshot(items: list[bytes]) -> bytes:
    return msgspec.msgpack.encode([msgspec.Raw(item) for item in items])


def _unpack_snapshot(body: bytes) -> Iterator[Record]:
    for raw in msgspec.msgpack.decode(body, type=list[msgspec.Raw]):
        yield decode_record(bytes(raw))
