"""A host without a server: catalog, engine, event bus and scheduler wired together (tier 4).

`nodehost run` uses it to run one workflow in this process; the daemon builds on the same
pieces. Documents are decoded, checked and compiled here, so a bad document is refused with
a `WorkflowInvalid` before anything runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from .engine import Engine
from .events import Envelope, EventBus
from .model import RunOptions, StartRunRequest, Workflow
from .plugins import Catalog
from .runstate import Run
from .scheduler import Scheduler, SchedulerLimits
from .validate import Limits, compile_workflow, decode_document, definition_hash

__all__ = ["EmbeddedHost", "load_document"]

log = logging.getLogger(__name__)


def load_document(
    data: bytes | str | dict[str, Any], limits: Limits = Limits()
) -> StartRunRequest:
    """A StartRunRequest from either a request `{workflow, clientId}` or a bare Workflow."""
    if isinstance(data, str):
        data = data.encode()
    if isinstance(data, bytes):
        # decode once to see which of the two shapes it is; limits apply to the raw bytes
        probe = decode_document(data, dict, limits)
    else:
        probe = data
    if isinstance(probe, dict) and "workflow" in probe and "nodes" not in probe:
        return decode_document(probe, StartRunRequest, limits)
    workflow = decode_document(probe, Workflow, limits)
    return StartRunRequest(workflow=workflow, client_id="cli")


class EmbeddedHost:
    """Everything needed to run workflows in this process, without HTTP or disk."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        limits: SchedulerLimits | None = None,
        document_limits: Limits | None = None,
        bus: EventBus | None = None,
        on_event: Callable[[Envelope], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.document_limits = document_limits or Limits()
        self.bus = bus or EventBus()
        publish = self.bus.publish_nowait
        if on_event is None:
            sink = publish
        else:
            def sink(envelope: Envelope) -> None:
                publish(envelope)
                try:
                    on_event(envelope)
                except Exception:  # an observer must never break a state transition
                    log.exception("event observer failed on envelope %s", envelope.id)
        self.engine = Engine(sink=sink)
        self.scheduler = Scheduler(self.engine, limits=limits)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[EmbeddedHost]:
        """Run the scheduler for the duration of the block; cancel what is left at exit."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.scheduler.run)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    def submit(
        self,
        request: StartRunRequest | bytes | str | dict[str, Any],
        *,
        tenant: str = "default",
        options: RunOptions | None = None,
    ) -> Run:
        """Check, compile and start a run; raises WorkflowInvalid for a bad document."""
        if not isinstance(request, StartRunRequest):
            request = load_document(request, self.document_limits)
        graph = compile_workflow(request.workflow, self.catalog, self.document_limits)
        return self.scheduler.submit(
            request.workflow,
            graph,
            client_id=request.client_id,
            definition_hash=definition_hash(request.workflow),
            tenant=tenant,
            options=options or request.options,
        )

    async def run(self, request: StartRunRequest | bytes | str | dict[str, Any], **kw: Any) -> Run:
        """Submit and wait for the run to finish (the host must be `running()`)."""
        run = self.submit(request, **kw)
        return await self.scheduler.wait_run(run.run_id)
