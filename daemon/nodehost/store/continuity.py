"""What start-up may recover: the newest readable snapshot and an unbroken journal after it
(tier 3; reads files, and changes them only to repair a torn tail or to set a loss aside).

The history is whole when every record from the snapshot's position up to the durable
mark is there. It is not when a segment is missing (a gap, or the newest one gone), when a
segment is damaged (a bad frame before good ones, a bad header), when the journal ends
before the mark (cut short: records that were acknowledged are gone), or when no snapshot
is readable and the journal does not start at the first record. Start-up then refuses,
with `HistoryIncomplete` naming each file and the records lost, unless the operator
accepted the loss (`nodehost serve --accept-journal-loss`): the damaged and unusable files
are moved, untouched, into `damaged-<time>/` beside the journal, a snapshot of what is left
is written, and the journal starts again after it.

A torn tail of records that were never acknowledged (beyond the mark) is what a power loss
leaves: it is truncated with a warning and start-up goes on. A snapshot that cannot be read
is moved aside too (never overwritten, never deleted by the retention of generations)
when an older one and the journal still give the whole history.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import NodehostError, rebuild
from .journal import (
    Segment,
    _fsync_dir,
    _truncate,
    read_mark,
    scan_segment,
    segments,
    write_mark,
)
from .snapshot import SnapshotCorrupt, list_snapshots, read_snapshot

__all__ = ["History", "HistoryIncomplete", "Loss", "read_history", "settle_loss"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Loss:
    """One reason the history is not whole: the file, what is wrong, the records lost."""

    path: Path
    reason: str
    first_lost: int  # the first record (lsn) that cannot be recovered
    last_lost: int | None  # the last one, when the mark says (None: unknown)

    def describe(self) -> str:
        if self.last_lost is None:
            lost = f"records from {self.first_lost} on are lost"
        else:
            count = self.last_lost - self.first_lost + 1
            lost = (f"record{'s' if count > 1 else ''} {self.first_lost}"
                    f"{f'..{self.last_lost}' if count > 1 else ''} ({count} acknowledged) "
                    f"{'are' if count > 1 else 'is'} lost")
        return f"{self.path}: {self.reason}; {lost}"


class HistoryIncomplete(NodehostError):
    """The state directory does not hold the whole acknowledged history: refuse to start."""

    def __init__(self, directory: Path, losses: list[Loss]) -> None:
        self.directory = directory
        self.losses = losses
        found = "\n".join(f"  - {loss.describe()}" for loss in losses)
        super().__init__(
            f"the history in {directory} is incomplete, and nodehost will not start on it:\n"
            f"{found}\n"
            "To proceed, stop the service and copy the state directory aside as a backup; "
            "then restore it from a backup, or start once with `nodehost serve "
            "--accept-journal-loss` (NODEHOST_ACCEPT_JOURNAL_LOSS=1 for the systemd unit, "
            "see docs/operations.md) to go on with what is left: the damaged files are moved "
            f"into {directory}/damaged-<time>/, and runs whose start was lost are dropped."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.directory, self.losses), {}))


@dataclass(slots=True)
class History:
    """What recovery replays: the snapshot's records (encoded), then the journal's after it."""

    snapshot_lsn: int
    snapshot_body: bytes | None
    journal: list[tuple[int, bytes]] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    # set aside when a loss is accepted: the history was rebuilt without them
    orphans_possible: bool = False

    @property
    def last_lsn(self) -> int:
        return self.journal[-1][0] if self.journal else self.snapshot_lsn


def read_history(directory: Path, *, accept_loss: bool = False) -> History:
    """The newest snapshot and the journal after it, from `directory` (store layout:
    `snapshots/`, `journal/`). Raises HistoryIncomplete unless the history is whole or
    `accept_loss`; with it, sets the damaged files aside (the caller writes a snapshot
    of what is left with `settle_loss`)."""
    snapshot_dir, journal_dir = directory / "snapshots", directory / "journal"
    unreadable: list[tuple[Path, str]] = []
    history = History(0, None)
    for lsn, path in reversed(list_snapshots(snapshot_dir)):
        try:
            history.snapshot_body = read_snapshot(path, lsn)
        except SnapshotCorrupt as exc:
            unreadable.append((path, exc.reason))
            continue
        history.snapshot_lsn = lsn
        break
    mark = read_mark(journal_dir)
    segs = segments(journal_dir)
    torn: tuple[Segment, int] | None = None
    need = history.snapshot_lsn + 1  # the next record the history needs
    losses = history.losses
    for i, seg in enumerate(segs):
        nxt = segs[i + 1] if i + 1 < len(segs) else None
        if nxt is not None and nxt.first_lsn <= need:
            continue  # every record in it is in the snapshot already: not even read
        if seg.first_lsn > need:
            if history.snapshot_body is None and not history.journal and accept_loss:
                # nothing to build on: take the journal from here (runs begun before are
                # dropped by the replay, see `orphans_possible`)
                losses.append(_missing_start(seg, need, unreadable))
                history.orphans_possible = True
                need = seg.first_lsn
            else:
                losses.append(_missing_start(seg, need, unreadable) if not history.journal
                              else Loss(seg.path, f"starts at record {seg.first_lsn}: a segment "
                                        "before it is missing", need, seg.first_lsn - 1))
                break
        scan = scan_segment(seg, last=nxt is None)
        skip = need - seg.first_lsn
        history.journal.extend((seg.first_lsn + n, payload)
                               for n, payload in enumerate(scan.payloads[skip:], start=skip))
        need = max(need, seg.first_lsn + len(scan.payloads))
        if scan.problem is not None:
            offset, reason = scan.problem
            last = (nxt.first_lsn - 1) if nxt is not None else None
            losses.append(Loss(seg.path, f"corrupt at byte {offset}: {reason}", need, last))
            break
        if scan.torn:
            torn = (seg, scan.valid)
    end = history.last_lsn
    if mark is not None and end < mark:
        if losses:  # what was lost after the damage, as far as the mark says
            losses[-1] = replace(losses[-1], last_lost=max(mark, losses[-1].last_lost or 0))
        else:
            if torn is not None and torn[0] == segs[-1]:
                reason = f"cut short at byte {torn[1]}"
            elif segs:
                reason = f"ends at record {end}: the newest segment is missing or cut short"
            else:
                reason = "holds no segment"
            losses.append(Loss(segs[-1].path if segs else journal_dir,
                               f"{reason}, but record {mark} was acknowledged (durable mark)",
                               end + 1, mark))
    if losses and not accept_loss:
        raise HistoryIncomplete(directory, losses)
    if mark is None and segs:
        log.warning("journal %s has no durable mark (written by nodehost 0.1?): whether it "
                    "was cut short cannot be checked this time", journal_dir)
    if losses:
        _set_aside(directory, losses, unreadable, segs)
    else:
        for path, reason in unreadable:
            log.error("snapshot %s is unreadable (%s); the whole history was recovered from "
                      "an older one and the journal", path, reason)
            _move(path, directory / "damaged-snapshots")
        if torn is not None:
            seg, valid = torn
            log.warning("journal %s: torn tail of %d bytes at byte %d truncated (records "
                        "never acknowledged)", seg.path, seg.path.stat().st_size - valid, valid)
            _truncate(seg.path, valid)
    return history


def _missing_start(seg: Segment, need: int, unreadable: list[tuple[Path, str]]) -> Loss:
    snapshots = "; ".join(f"snapshot {p} is unreadable ({why})" for p, why in unreadable)
    cover = snapshots or "no snapshot covers the records before it"
    return Loss(seg.path, f"the journal starts at record {seg.first_lsn} and {cover}",
                need, seg.first_lsn - 1)


def _move(path: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = into / path.name
    os.replace(path, target)
    _fsync_dir(into)
    _fsync_dir(path.parent)
    return target


def _set_aside(directory: Path, losses: list[Loss], unreadable: list[tuple[Path, str]],
               segs: list[Segment]) -> None:
    """Copy every segment and move every unreadable snapshot into `damaged-<time>/`; the
    caller then replaces the journal with a snapshot of what was read (`settle_loss`)."""
    aside = directory / time.strftime("damaged-%Y%m%dT%H%M%SZ", time.gmtime())
    aside.mkdir(mode=0o700, exist_ok=True)
    for path, _ in unreadable:
        _move(path, aside)
    for seg in segs:
        shutil.copy2(seg.path, aside / seg.path.name)
    _fsync_dir(aside)
    for loss in losses:
        log.critical("history loss accepted by the operator: %s", loss.describe())
    log.critical("the damaged files are kept in %s", aside)


def settle_loss(journal_dir: Path, last_lsn: int) -> None:
    """After a snapshot at `last_lsn` is durable: drop the journal (its copy is set aside)
    and set the mark there, so the next start finds a whole history."""
    for seg in segments(journal_dir):
        seg.path.unlink()
    if journal_dir.exists():
        _fsync_dir(journal_dir)
        write_mark(journal_dir, last_lsn)

