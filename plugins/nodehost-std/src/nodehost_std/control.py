"""`nodehost.std.delay` and `nodehost.std.fail`: waiting, and failing on purpose."""

from __future__ import annotations

import math
from typing import Annotated, Any

import anyio
from msgspec import UNSET, Meta, UnsetType

from nodehost import Context, NodeError

from . import package
from .structs import Params, Result

__all__ = ["DelayParams", "DelayResult", "FailParams", "FailResult", "delay", "fail"]

MAX_PROGRESS_STEPS = 10
MIN_PROGRESS_INTERVAL = 0.1  # seconds between progress reports, at least


class DelayParams(Params, kw_only=True):
    """Wait, then pass a value on."""

    seconds: Annotated[float, Meta(ge=0, le=86_400, description="How long to wait.")]
    value: Annotated[Any, Meta(description="Passed through to the result.")] | UnsetType = UNSET


class DelayResult(Result, kw_only=True):
    slept_seconds: float
    value: Any | UnsetType = UNSET


@package.node("nodehost.std.delay", idempotent=True)
async def delay(ctx: Context, params: DelayParams) -> DelayResult:
    """Wait for a number of seconds, reporting progress, then pass `value` on."""
    seconds = params.seconds
    steps = max(1, min(MAX_PROGRESS_STEPS, math.ceil(seconds / MIN_PROGRESS_INTERVAL)))
    started = anyio.current_time()
    for step in range(1, steps + 1):
        await anyio.sleep_until(started + seconds * step / steps)
        await ctx.progress(step / steps, f"waited {seconds * step / steps:g} of {seconds:g} s")
    slept = round(anyio.current_time() - started, 6)
    return DelayResult(slept_seconds=slept, value=params.value)


class FailParams(Params, kw_only=True):
    """Fail on purpose, with a given error (for tests and demos)."""

    code: Annotated[str, Meta(pattern=r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*$")] = "E.STD.FAIL"
    message: Annotated[str, Meta(min_length=1)] = "failed on purpose"
    remediation: str | None = None
    fail_attempts: (
        Annotated[
            int, Meta(ge=0, description="Fail only while the attempt number is at most this.")
        ]
        | None
    ) = None
    raise_exception: Annotated[
        bool, Meta(description="Raise a plain RuntimeError instead of a NodeError.")
    ] = False


class FailResult(Result, kw_only=True):
    attempt: int


@package.node("nodehost.std.fail", idempotent=True)
def fail(ctx: Context, params: FailParams) -> FailResult:
    """Fail with the given error code and message (or succeed after failAttempts attempts)."""
    if params.fail_attempts is not None and ctx.attempt > params.fail_attempts:
        return FailResult(attempt=ctx.attempt)
    if params.raise_exception:
        raise RuntimeError(f"{params.message} (attempt {ctx.attempt})")
    raise NodeError(params.code, params.message, remediation=params.remediation)
