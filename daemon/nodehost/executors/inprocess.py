"""The in-process executor: async node functions run on the event loop, sync ones in a thread.

A sync node runs in a worker thread of a bounded pool; its reports are handed back to the
event loop (the engine is not thread-safe). When its attempt is cancelled the thread cannot
be stopped from outside: the attempt is abandoned at once, `ctx.cancelled` turns true so a
cooperative node can return early, and anything it reports afterwards is fenced off by the
engine.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec

from ..errors import Code
from ..model import ErrorInfo
from ..node_api import Context
from . import AttemptFailed

if TYPE_CHECKING:
    from ..engine import Dispatch
    from ..node_api import NodeSpec, Reporter

__all__ = ["InProcessExecutor", "decode_parameters", "encode_results"]


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


class _ThreadReporter:
    """Forwards a worker thread's reports to the event loop; drops them once it is gone."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Reporter) -> None:
        self._inner = inner

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            anyio.from_thread.run_sync(fn, *args)
        except RuntimeError:
            pass  # the event loop has shut down: nobody is listening any more

    def progress(self, fraction: float | None, stage: str | None, message: str | None) -> None:
        self._call(self._inner.progress, fraction, stage, message)

    def chunk(self, channel: str, text: str | None, data: bytes | None, mime_type: str | None,
              terminal: bool, metadata: dict[str, Any] | None) -> None:
        self._call(self._inner.chunk, channel, text, data, mime_type, terminal, metadata)

    def partial(self, update: dict[str, Any]) -> None:
        self._call(self._inner.partial, update)

    def metric(self, name: str, value: float) -> None:
        self._call(self._inner.metric, name, value)

    def artifact(self, artifact: dict[str, Any]) -> None:
        self._call(self._inner.artifact, artifact)


class InProcessExecutor:
    """Runs node functions in this process; `threads` bounds the sync nodes run at once."""

    def __init__(self, *, threads: int = 16) -> None:
        self._limiter = anyio.CapacityLimiter(threads)

    async def execute(
        self, dispatch: Dispatch, reporter: Reporter, is_cancelled: Callable[[], bool]
    ) -> dict[str, Any]:
        spec = dispatch.spec
        params = decode_parameters(spec, dispatch.parameters)
        if spec.is_async:
            ctx = _context(dispatch, reporter, is_cancelled)
            value = await spec.fn(ctx, params)
        else:
            ctx = _context(dispatch, _ThreadReporter(reporter), is_cancelled)
            value = await anyio.to_thread.run_sync(
                partial(spec.fn, ctx, params), abandon_on_cancel=True, limiter=self._limiter
            )
        return encode_results(spec, value)


def _context(dispatch: Dispatch, reporter: Reporter, is_cancelled: Callable[[], bool]) -> Context:
    return Context(
        run_id=dispatch.run_id,
        node_id=dispatch.node_id,
        task_id=dispatch.task_id,
        attempt=dispatch.attempt,
        spec=dispatch.spec,
        reporter=reporter,
        is_cancelled=is_cancelled,
    )
