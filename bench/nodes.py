"""The no-op node package every nodehost measurement runs, and its Dask counterparts.

Defined at module level so that Dask's worker processes can import the functions by name.
"""

from __future__ import annotations

import time
from typing import Any

from nodehost import Context, Package
from nodehost.plugins import Catalog

PACKAGE = Package("bench", "1.0")
VALUE = {"n": 1, "tag": "bench", "ok": True}  # the small dict passed along edges
STARTS: list[float] = []  # perf_counter() of each bench.stamp start (latency measurement)


# The measured nodes are pure, hence idempotent: they start as soon as they are dispatched.
# bench.effect stands for a node with side effects (not idempotent): it starts only once its
# Dispatch record is durable (the write-ahead rule), which `write_ahead` measures.
@PACKAGE.node("bench.noop", idempotent=True)
async def noop(ctx: Context, params: dict) -> dict:
    """Do nothing."""
    return {}


@PACKAGE.node("bench.value", idempotent=True)
async def value(ctx: Context, params: dict) -> dict:
    """Return a small dict as `value` (bound along edges from `/results/value`)."""
    return {"value": VALUE}


@PACKAGE.node("bench.stamp", idempotent=True)
async def stamp(ctx: Context, params: dict) -> dict:
    """Note when it started."""
    STARTS.append(time.perf_counter())
    return {}


@PACKAGE.node("bench.effect")
async def effect(ctx: Context, params: dict) -> dict:
    """Do nothing, as a node that must not run twice would."""
    return {}


def catalog() -> Catalog:
    cat = Catalog()
    cat.add(PACKAGE)
    return cat


# --- Dask task functions: upstream results arrive as arguments ---------------------------------

def dask_noop(*upstream: Any) -> None:
    return None


def dask_value(*upstream: Any) -> dict[str, Any]:
    return VALUE
