"""A host without a server: catalog, engine, event bus and scheduler wired together (tier 4).

`nodehost run` uses it to run one workflow in this process; the daemon builds on the same
pieces. Documents are decoded, checked and compiled here, so a bad document is refused with
a `WorkflowInvalid` before anything runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec

from .config import Config
from .engine import Engine
from .errors import Issue, WorkflowInvalid
from .events import Envelope, EventBus
from .executors import Executor
from .executors.inprocess import InProcessExecutor
from .executors.subprocess import SubprocessExecutor
from .graph import Graph
from .model import RunOptions, StartRunRequest, Workflow
from .node_api import NodeSpec
from .plugins import Catalog
from .runstate import Run
from .scheduler import Scheduler, SchedulerLimits
from .validate import Limits, compile_workflow, decode_document, definition_hash

__all__ = ["EmbeddedHost", "Prepared", "prepare"]

log = logging.getLogger(__name__)

_encode_document = msgspec.msgpack.Encoder().encode


@dataclass(frozen=True, slots=True)
class Prepared:
    """A document decoded, checked and compiled: ready to be submitted."""

    request: StartRunRequest
    graph: Graph
    definition_hash: str
    # the workflow as sent (UI and unknown fields kept), msgpack-encoded: it is journaled as
    # it is, and a run keeps it as one object rather than some seven per node
    document: bytes | None = None


def prepare(
    data: StartRunRequest | bytes | str | dict[str, Any], catalog: Catalog,
    limits: Limits = Limits(),
) -> Prepared:
    """Decode a run request `{workflow, clientId}` or a bare Workflow, check and compile it.

    Raises WorkflowInvalid with every problem, each at its path in the document as sent
    (`$.workflow.nodes[1].id` in a request, `$.nodes[1].id` in a bare workflow).
    """
    at = "$.workflow"
    sent: dict[str, Any] | None = None
    if isinstance(data, StartRunRequest):
        request = data
    else:
        if isinstance(data, str):
            data = data.encode()
        probe = decode_document(data, dict, limits) if isinstance(data, bytes) else data
        if isinstance(probe, dict) and "workflow" in probe and "nodes" not in probe:
            request = decode_document(probe, StartRunRequest, limits)
            sent = probe["workflow"]
        else:
            request = StartRunRequest(workflow=decode_document(probe, Workflow, limits),
                                      client_id="cli")
            sent = probe
            at = "$"
    try:
        graph = compile_workflow(request.workflow, catalog, limits)
    except WorkflowInvalid as exc:
        if at == "$":
            raise
        raise WorkflowInvalid([Issue(at + issue.path[1:], issue.message)
                               for issue in exc.issues]) from None
    document = None if sent is None else _encode_document(sent)
    return Prepared(request, graph, definition_hash(request.workflow), document)


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
        executor_for: Callable[[NodeSpec], Executor] | None = None,
        closers: list[Callable[[], Awaitable[None]]] | None = None,
        engine_factory: Callable[..., Engine] = Engine,
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
        self.engine = engine_factory(sink=sink)
        self.scheduler = Scheduler(self.engine, limits=limits, executor_for=executor_for)
        self._closers = list(closers or [])

    @classmethod
    def from_config(cls, catalog: Catalog, config: Config, **kw: Any) -> EmbeddedHost:
        """A host with the limits and executors of a configuration."""
        cfg = config.executors
        inprocess = InProcessExecutor(threads=config.scheduler.parallelism)
        subprocess = SubprocessExecutor(idle=cfg.idle_workers,
                                        memory_limit_mb=cfg.memory_limit_mb)
        executors: dict[str, Executor] = {"inprocess": inprocess, "subprocess": subprocess}

        def executor_for(spec: NodeSpec) -> Executor:
            return executors[cfg.kind_for(spec.package)]

        return cls(catalog, limits=config.scheduler.limits(),
                   document_limits=config.documents.limits(), executor_for=executor_for,
                   closers=[subprocess.aclose], **kw)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[EmbeddedHost]:
        """Run the scheduler for the duration of the block; cancel what is left at exit."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.scheduler.run)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    for close in self._closers:
                        await close()

    def submit(
        self,
        document: Prepared | StartRunRequest | bytes | str | dict[str, Any],
        *,
        tenant: str = "default",
        options: RunOptions | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Run:
        """Check, compile and start a run; raises WorkflowInvalid for a bad document.

        `meta` is kept with the run (and journaled with it): what the API needs to
        remember about the submission, such as its Idempotency-Key.
        """
        if not isinstance(document, Prepared):
            document = prepare(document, self.catalog, self.document_limits)
        request = document.request
        return self.scheduler.submit(
            request.workflow,
            document.graph,
            client_id=request.client_id,
            definition_hash=document.definition_hash,
            tenant=tenant,
            options=options or request.options,
            document=document.document,
            meta=meta,
        )

    async def run(self, document: Prepared | StartRunRequest | bytes | str | dict[str, Any],
                  **kw: Any) -> Run:
        """Submit and wait for the run to finish (the host must be `running()`)."""
        run = self.submit(document, **kw)
        return await self.scheduler.wait_run(run.run_id)
