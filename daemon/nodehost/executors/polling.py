"""A selector that looks again before it sleeps: the worker's answer to wake-up latency.

On the virtual machines nodehost runs on, a process (or thread) asleep in `epoll_wait`
takes some 30 to
60 us to wake when a frame reaches its pipe (measured: a pipe round trip of 65 us between
sleeping processes, 21 us when the receiver polls). A chain of nodes pays that on every
attempt, twice: the worker waits for the next frame, the daemon for the answer. So after a
burst of work the event loop keeps looking for its next event, without blocking, for a
short `budget`, and only then sleeps: an idle loop costs at most one budget of CPU after
its last event, and nothing afterwards; while it looks it yields the CPU to anything else
runnable. Workers use it (`[executors] worker_poll_us`), and so does the daemon's own loop
(`[scheduler] loop_poll_us`: also where the journal's writer thread hands back a commit).
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time
from collections.abc import Callable
from typing import Any

__all__ = ["PollingSelector", "run_options"]


class PollingSelector(selectors.DefaultSelector):
    """`select(timeout)` polls for up to `budget` seconds after a select that found events
    (or was a mere look, timeout 0), then blocks for what is left of `timeout`."""

    def __init__(self, budget: float) -> None:
        super().__init__()
        self._budget = budget
        self._hot = True

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if self._hot and self._budget > 0 and (timeout is None or timeout > 0):
            start = time.monotonic()
            end = start + (self._budget if timeout is None else min(self._budget, timeout))
            while True:
                events: list[tuple[Any, int]] = super().select(0)
                if events:
                    return events
                os.sched_yield()  # whatever else is runnable on this CPU goes first
                now = time.monotonic()
                if now >= end:
                    break
            if timeout is not None:
                timeout = max(0.0, timeout - (now - start))
        events = super().select(timeout)
        self._hot = bool(events) or timeout == 0
        return events


def run_options(budget_us: int) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """`backend_options` for `anyio.run` on asyncio: an event loop that polls `budget_us`
    before it sleeps (none: asyncio's own, for a budget of 0)."""
    if budget_us <= 0:
        return {}
    return {"loop_factory": lambda: asyncio.SelectorEventLoop(PollingSelector(budget_us / 1e6))}
