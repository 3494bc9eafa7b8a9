"""How nodehost uses Python's cycle collector (tier 1: no I/O).

A host holds a great many long-lived objects (runs, their tasks, replay history), and every
full collection walks all of them. Two measures keep that cost from growing with the work:

- `paused()` around bulk loads of what is kept for good (reading and replaying the
  journal), and `disabled()` around work that makes many short-lived objects and no
  garbage cycles (decoding a large document).
- `tune_for_daemon()`, once a long-lived process has started up (`nodehost serve` and
  `nodehost run` call it): what start-up loaded is frozen out of collection, and young
  collections run every 10,000 allocations instead of 700.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["GEN0_THRESHOLD", "disabled", "paused", "tune_for_daemon"]

GEN0_THRESHOLD = 10_000


@contextmanager
def paused() -> Iterator[None]:
    """No cycle collection for the duration of a bulk load.

    Loading makes objects by the hundred thousand, and every collection the allocations
    trigger walks all of them again: with 100,000 nodes of history that was half of the
    recovery time. The collector resumes afterwards (unless it was off already), with what
    was loaded moved straight to the oldest generation (freeze + unfreeze), which the young
    collections that follow then need not walk.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


@contextmanager
def disabled() -> Iterator[None]:
    """No cycle collection for the duration of the block, and nothing else changed: unlike
    `paused()`, the young objects stay young, so garbage made meanwhile is found as soon as
    usual. Decoding a 100,000-node document made the collector walk its million dicts a
    dozen times."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def tune_for_daemon() -> None:
    """Settings for a long-lived process holding large run state: call once, after start-up.

    With the default gen-0 threshold (700), full collections walked every run many times a
    second under load (measured on the layered benchmark, 100,000 nodes: 55 -> 40 us/node).
    Modules and plugins, loaded for good, are frozen out of collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, 10, 10)
