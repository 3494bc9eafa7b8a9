"""The in-process executor: async node functions run on the event loop, sync ones in a thread,
or on the loop too once they have shown they are quick.

A sync node runs in a worker thread of a bounded pool; its reports are handed back to the
event loop (the engine is not thread-safe). When its attempt is cancelled the thread cannot
be stopped from outside: the attempt is abandoned at once, `ctx.cancelled` turns true so a
cooperative node can return early, and anything it reports afterwards is fenced off by the
engine.

A thread hop costs some 60-120 us on the machines nodehost runs on (two wake-ups), many
times what a small sync function takes. So a node type whose last `PROMOTE_AFTER` attempts
in a thread each took at most `inline_sync_us` ([executors]) runs on the event loop from
then on, as an async node that never awaits; one inline attempt that takes more than
`DEMOTE_FACTOR` times that sends the node type back to threads for the life of the process
(logged). Attempts with a timeout always take a thread: only there can they be abandoned.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec

from ..config import Sandbox
from ..errors import Code
from ..model import ErrorInfo
from ..node_api import Context
from . import AttemptFailed

if TYPE_CHECKING:
    from ..engine import Attempt
    from ..node_api import NodeSpec, Reporter
    from ..reports import NodeReport
    from ..workdirs import WorkDirs

__all__ = ["DEMOTE_FACTOR", "PROMOTE_AFTER", "InProcessExecutor", "decode_parameters",
           "encode_results"]

log = logging.getLogger(__name__)

PROMOTE_AFTER = 16  # quick attempts in a row, in threads, before a node type runs inline
DEMOTE_FACTOR = 10  # an inline attempt over this many budgets goes back to threads for good
_DEMOTED = -1


def decode_parameters(spec: NodeSpec, parameters: dict[str, Any]) -> Any:
    """Parameters as the node function takes them; AttemptFailed if they do not fit."""
    try:
        return spec.decode_params(parameters)
    except msgspec.ValidationError as exc:
        raise AttemptFailed(
            ErrorInfo(code=Code.PARAMETERS, message=f"parameters do not fit node type "
                      f"{spec.type!r}: {exc}".replace("`$", "`$.parameters")),
            retryable=False,
        ) from None


def encode_results(spec: NodeSpec, value: Any) -> dict[str, Any]:
    """The function's return value as the node's results; AttemptFailed if it is wrong."""
    try:
        return spec.encode_result(value)
    except (msgspec.ValidationError, TypeError) as exc:
        raise AttemptFailed(
            ErrorInfo(code=Code.RESULTS, message=f"node type {spec.type!r} returned results "
                      f"that do not fit its declared type: {exc}"),
            retryable=False,
        ) from None


def _from_thread(reporter: Reporter) -> Reporter:
    """A reporter for a worker thread: hands each report to the event loop (the engine is
    not thread-safe), and drops it once the loop is gone (nobody is listening any more)."""

    def report(report: NodeReport) -> None:
        try:
            anyio.from_thread.run_sync(reporter, report)
        except RuntimeError:
            pass

    return report


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started


class InProcessExecutor:
    """Runs node functions in this process; `threads` bounds the sync nodes run at once (the
    composition root gives it the scheduler's parallelism)."""

    def __init__(self, *, threads: int, sandbox: Sandbox | None = None,
                 work_dirs: WorkDirs | None = None,
                 code: Callable[[tuple[str, str, str]], NodeSpec | None] | None = None,
                 inline_sync_us: int = 0) -> None:
        self._code = code or (lambda key: None)
        self._limiter = anyio.CapacityLimiter(threads)
        self._budget = inline_sync_us / 1e6  # 0: sync nodes always take a thread
        # per node type: quick attempts in a row in threads (PROMOTE_AFTER or more: it runs
        # inline), or _DEMOTED
        self._quick: dict[tuple[str, str, str], int] = {}
        self.sandbox = sandbox or Sandbox()
        self.work_dirs = work_dirs

    async def execute(
        self, attempt: Attempt, reporter: Reporter, is_cancelled: Callable[[], bool]
    ) -> dict[str, Any]:
        spec = self._code(attempt.spec.key)
        if spec is None:
            raise AttemptFailed(ErrorInfo(
                code=Code.UNAVAILABLE, message=f"node type {attempt.spec.type!r} of "
                f"{attempt.spec.package}=={attempt.spec.version} has no code in this process "
                "(not installed any more?)"), retryable=False)
        params = decode_parameters(spec, attempt.parameters)
        if spec.is_async:
            ctx = self._context(attempt, reporter, is_cancelled)
            value = await spec.fn(ctx, params)
        elif (self._quick.get(key := attempt.spec.key, 0) >= PROMOTE_AFTER
              and attempt.timeout is None):
            value = self._inline(key, spec, self._context(attempt, reporter, is_cancelled),
                                 params)
        else:
            ctx = self._context(attempt, _from_thread(reporter), is_cancelled)
            value, took = await anyio.to_thread.run_sync(
                partial(_timed, spec.fn, ctx, params), abandon_on_cancel=True,
                limiter=self._limiter)
            quick = self._quick.get(key, 0)
            if self._budget and quick != _DEMOTED:
                self._quick[key] = quick + 1 if took <= self._budget else 0
        return encode_results(spec, value)

    def _inline(self, key: tuple[str, str, str], spec: NodeSpec, ctx: Context,
                params: Any) -> Any:
        """Run a quick sync node on the loop (in a context of its own, as a thread would);
        send its type back to threads if it was not quick this time."""
        started = time.perf_counter()
        try:
            return contextvars.copy_context().run(spec.fn, ctx, params)
        finally:
            took = time.perf_counter() - started
            if took > self._budget * DEMOTE_FACTOR:
                self._quick[key] = _DEMOTED
                log.warning("node type %s of %s==%s took %.1f ms on the event loop: its "
                            "attempts run in threads from now on", spec.type, spec.package,
                            spec.version, took * 1000)

    def _context(self, attempt: Attempt, reporter: Reporter,
                 is_cancelled: Callable[[], bool]) -> Context:
        work_dirs = self.work_dirs
        return Context(
            run_id=attempt.run_id,
            node_id=attempt.node_id,
            task_id=attempt.task_id,
            attempt=attempt.attempt,
            spec=attempt.spec,
            reporter=reporter,
            is_cancelled=is_cancelled,
            tenant=attempt.tenant,
            work_dir=None if work_dirs is None else partial(work_dirs.make, attempt.tenant,
                                                            attempt.run_id),
            sandbox=self.sandbox,
        )
