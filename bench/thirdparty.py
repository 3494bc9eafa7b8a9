"""A node package as a third party would ship it: `acme.bench` 1.0, async and sync no-ops.

Not named in `[executors] inprocess`, so the daemon's defaults run it in subprocess
workers; module-level functions, so a worker imports them by name.
"""

from __future__ import annotations

from nodehost import Context, Package

from .nodes import VALUE

PACKAGE = Package("acme.bench", "1.0")
PINNED = {"name": "acme.bench", "version": "1.0"}


@PACKAGE.node("acme.bench.noop", idempotent=True)
async def noop(ctx: Context, params: dict) -> dict:
    """Do nothing."""
    return {}


@PACKAGE.node("acme.bench.value", idempotent=True)
async def value(ctx: Context, params: dict) -> dict:
    """Return a small dict as `value`."""
    return {"value": VALUE}


@PACKAGE.node("acme.bench.sync_noop", idempotent=True)
def sync_noop(ctx: Context, params: dict) -> dict:
    """Do nothing, as a plain function."""
    return {}


@PACKAGE.node("acme.bench.sync_value", idempotent=True)
def sync_value(ctx: Context, params: dict) -> dict:
    """Return a small dict as `value`, as a plain function."""
    return {"value": VALUE}
