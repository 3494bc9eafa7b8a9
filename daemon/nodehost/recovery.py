"""Start-up recovery: the journal's commands applied again, and retention (tier 4, no I/O).

Recovery = `for command in history: engine.apply(command)`, then `engine.resume()`. The
Submits of the history are compiled by the engine's `documents.Documents`, which gives node
types that are no longer installed a stand-in (failing with E.DISPATCH.UNAVAILABLE if ever
dispatched), so the history stays readable and nothing blocks start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import collector
from .commands import Command
from .engine import Engine
from .runstate import Run

__all__ = ["RecoveryReport", "Retention", "recover", "replay", "runs_to_forget"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    runs: int
    active: int
    records: int
    seconds: float
    resumed: dict[str, int]


def replay(engine: Engine, history: Sequence[Command], *,
           keep_events: int | None = None) -> int:
    """Apply a history of (stamped) commands to an empty engine; returns how many.

    With `keep_events`, only about the last that many events are built and published (what
    the replay buffer can hold); older ones keep their ids but are only counted. The cycle
    collector is paused meanwhile (see `collector.paused`).
    """
    if keep_events is not None and history:
        engine.quiet_until = history[-1].seq - keep_events
    try:
        with collector.paused():
            for command in history:
                engine.apply(command)
    finally:
        engine.quiet_until = 0
    return len(history)


def recover(engine: Engine, history: Sequence[Command], *, seconds: float = 0.0,
            keep_events: int | None = None) -> RecoveryReport:
    """Replay what the store read, then settle what the restart interrupted (the effects
    wait in the engine for the scheduler). `seconds`: what reading the store took."""
    applied = replay(engine, history, keep_events=keep_events)
    resumed = engine.resume()
    active = sum(1 for r in engine.runs.values() if not r.final)
    report = RecoveryReport(len(engine.runs), active, applied, seconds, resumed)
    if applied:
        log.info("recovered %d runs (%d active) from %d records; %d attempts interrupted by "
                 "the restart", report.runs, active, applied, resumed["interrupted"])
    return report


@dataclass(frozen=True, slots=True)
class Retention:
    max_age: timedelta | None
    max_runs: int | None


def runs_to_forget(runs: Iterable[Run], retention: Retention, now: datetime) -> list[str]:
    """Finished runs past their age, then the oldest beyond the count to keep."""
    finished = sorted((r for r in runs if r.final),
                      key=lambda r: (r.finished_at or r.created_at, r.run_id))
    drop: list[str] = []
    keep = finished
    if retention.max_age is not None:
        horizon = now - retention.max_age
        drop = [r.run_id for r in finished if (r.finished_at or r.created_at) < horizon]
        keep = finished[len(drop):]
    if retention.max_runs is not None and len(keep) > retention.max_runs:
        drop += [r.run_id for r in keep[: len(keep) - retention.max_runs]]
    return drop
