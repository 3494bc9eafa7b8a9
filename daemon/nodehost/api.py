"""What each API endpoint does, without HTTP: admission, listing, cancel, events (tier 5).

`http` maps requests onto a `DaemonApi` and its answers onto responses; the checks (who may
see which run, idempotency, cursors, replay) live here, so they are the same whatever the
transport. Every method is called on the event loop; the synchronous ones never wait.

Acknowledgements wait for the host's journal: a run is answered 202 (and a cancel 202) only
after `store.wait_durable()` returned (a host without a journal acknowledges at once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec

from . import __version__
from .auth import Principal
from .bus import Subscription
from .commands import CancelRun
from .config import ApiConfig, Config, EventsConfig
from .errors import WorkflowInvalid, rebuild
from .events import Envelope, Scope, StreamResetEvent
from .host import Host, build_host
from .idempotency import (
    IdempotencyCache,
    IdempotencyConflict,
    body_fingerprint,
    check_key,
)
from .model import RunRef, RunSummary
from .plugins import Catalog
from .runs_index import CursorError, Entry, RunsIndex
from .runstate import Run, run_ref, run_summary
from .store.store import Store
from .validate import decode_json

__all__ = [
    "ApiError",
    "DaemonApi",
    "ErrorBody",
    "EventStream",
    "Health",
    "IssueOut",
    "NodeTypeInfo",
    "PackageInfo",
    "PackageList",
    "RunList",
    "daemon_host",
]

log = logging.getLogger(__name__)

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
MAX_LIMIT = 200
DEFAULT_LIMIT = 50


# --- wire documents of the API (the run documents are in model.py) ---------------------------


class IssueOut(msgspec.Struct, omit_defaults=True):
    """One problem: where (a JSON path, or the name of a parameter or header) and what."""

    path: str
    message: str


class ErrorBody(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """Every error answer: a short code, a sentence, the request id, the problems found."""

    error: str
    message: str
    request_id: str
    details: list[IssueOut] | None = None


class RunList(msgspec.Struct, rename="camel", kw_only=True):
    """A page of runs (without their nodes); `nextCursor` is null on the last page."""

    items: list[RunSummary]
    next_cursor: str | None


class NodeTypeInfo(msgspec.Struct, rename="camel", kw_only=True):
    type: str
    description: str
    timeout: float | None
    retry: int  # attempts
    idempotent: bool
    parameters_schema: dict[str, Any]
    results_schema: dict[str, Any]


class PackageInfo(msgspec.Struct, rename="camel", kw_only=True):
    name: str
    version: str
    origin: str | None
    description: str
    nodes: list[NodeTypeInfo]


class PackageList(msgspec.Struct, rename="camel", kw_only=True):
    packages: list[PackageInfo]


class Health(msgspec.Struct, rename="camel", kw_only=True):
    status: str  # "ok" | "stopping"
    version: str
    # subprocess workers: confined by Landlock, not ([sandbox] landlock = "off"), or not
    # because the kernel has no Landlock
    sandbox: Literal["landlock", "off", "unavailable"]


class ApiError(Exception):
    """An answer other than success: HTTP status, short code, message, problems."""

    def __init__(self, status: int, error: str, message: str,
                 details: list[IssueOut] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details
        self.headers = headers or {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.status, self.error, self.message, self.details,
                                       self.headers), {}))


@dataclass(slots=True)
class EventStream:
    """An open event subscription, and the `stream.reset` to send first (if any)."""

    subscription: Subscription
    reset: Envelope | None = None


def _invalid(exc: WorkflowInvalid) -> ApiError:
    issues = [IssueOut(i.path, i.message) for i in exc.issues]
    return ApiError(400, "invalid_workflow",
                    f"the workflow is invalid ({len(issues)} problem(s))", issues)


def not_found(run_id: str) -> ApiError:
    return ApiError(404, "not_found", f"run {run_id} not found")


class DaemonApi:
    """The daemon's API over one host, with its `[api]` and `[events]` settings, listing
    runs from `index` (see `daemon_host`)."""

    def __init__(self, host: Host, *, index: RunsIndex) -> None:
        self.host = host
        self.index = index
        self.settings: ApiConfig = host.config.api
        self.events: EventsConfig = host.config.events
        self.idempotency = IdempotencyCache(max_keys=self.settings.idempotency_keys,
                                            ttl=self.settings.idempotency_ttl_seconds)
        self.admitting = True
        self.closing = False
        self._stopping: anyio.Event | None = None
        self.sse_open = 0
        self.sse_stuck = 0
        self._packages: bytes | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def restore(self, runs: Iterable[Run]) -> None:
        """Index runs rebuilt from the journal, and the Idempotency-Keys they were sent with."""
        for run in runs:
            self.index.add(run, run.document)
            meta = run.meta or {}
            key, fingerprint = meta.get("idempotencyKey"), meta.get("fingerprint")
            if isinstance(key, str) and isinstance(fingerprint, str):
                self.idempotency.remember(run.tenant, key, bytes.fromhex(fingerprint),
                                          run.run_id)

    def forget(self, run_ids: Iterable[str]) -> None:
        """Drop runs that retention removed from the engine."""
        self.index.remove(run_ids)

    def stop_admitting(self) -> None:
        """Refuse new runs (503); everything else goes on."""
        self.admitting = False

    def close(self) -> None:
        """Stop admitting runs (503) and end every event stream."""
        self.admitting = False
        self.closing = True
        if self._stopping is not None:
            self._stopping.set()

    async def wait_closing(self) -> None:
        if self._stopping is None:
            self._stopping = anyio.Event()
            if self.closing:
                self._stopping.set()
        await self._stopping.wait()

    def health(self) -> Health:
        return Health(status="ok" if self.admitting else "stopping", version=__version__,
                      sandbox=self.host.confinement)

    # --- runs ----------------------------------------------------------------------------------

    def _entry(self, principal: Principal, run_id: str) -> Entry:
        entry = self.index.get(principal.tenant, run_id)
        if entry is None:
            raise not_found(run_id)
        return entry

    async def start_run(self, principal: Principal, body: bytes,
                        idempotency_key: str | None = None) -> tuple[RunRef, bool]:
        """Admit a run request; (its RunRef, whether an earlier request already created it)."""
        if not self.admitting:
            raise ApiError(503, "shutting_down", "the daemon is shutting down; not admitting runs",
                           headers={"Retry-After": "5"})
        store = self.host.store
        if store is not None and store.full:
            raise ApiError(507, "insufficient_storage",
                           "the disk holding the journal is full: new runs are refused until "
                           "there is space again; reads and running runs go on",
                           headers={"Retry-After": "30"})
        if idempotency_key is not None:
            problem = check_key(idempotency_key)
            if problem is not None:
                raise ApiError(400, "invalid_request", problem,
                               [IssueOut("Idempotency-Key", problem)])
        try:  # decoded once: the fingerprint and `prepare` both take the decoded body
            document = decode_json(body, self.host.documents.limits)
        except WorkflowInvalid as exc:
            raise _invalid(exc) from None
        if not isinstance(document, dict):
            raise ApiError(400, "invalid_workflow", "the request must be {workflow, clientId}",
                           [IssueOut("$", "Expected `object`")])
        if "workflow" not in document:
            raise ApiError(400, "invalid_workflow", "the request must be {workflow, clientId}",
                           [IssueOut("$", "Object missing required field `workflow`")])
        tenant = principal.tenant
        fingerprint = b""
        if idempotency_key is not None:
            fingerprint = body_fingerprint(document)
            try:
                earlier = self.idempotency.lookup(tenant, idempotency_key, fingerprint)
            except IdempotencyConflict as exc:
                raise ApiError(409, "idempotency_conflict", str(exc)) from None
            if earlier is not None:
                entry = self._entry(principal, earlier)
                await self._durable()
                return run_ref(entry.run), True
        meta = None
        if idempotency_key is not None:  # journaled with the run: kept across restarts
            meta = {"idempotencyKey": idempotency_key, "fingerprint": fingerprint.hex()}
        try:
            prepared = self.host.prepare(document)
            # the tenant's [policy] is checked as the host admits the run
            run = self.host.submit(prepared, tenant=tenant, meta=meta)
        except WorkflowInvalid as exc:
            raise _invalid(exc) from None
        self.index.add(run, run.document)
        if idempotency_key is not None:
            self.idempotency.remember(tenant, idempotency_key, fingerprint, run.run_id)
        await self._durable()
        return run_ref(run), False

    async def _durable(self) -> None:
        """Wait until what the host recorded so far is on disk."""
        if self.host.store is not None:
            await self.host.store.wait_durable()

    async def settled(self) -> None:
        """Before a read is answered: wait until what it shows is durable (and its events
        have gone out), so that no answer shows a state a crash could take back. While the
        disk is full, reads are answered at once (from memory) rather than not at all."""
        if self.host.store is not None:
            await self.host.store.wait_durable(unless_full=True)

    def list_runs(self, principal: Principal, *, limit: int = DEFAULT_LIMIT,
                  cursor: str | None = None, status: str | None = None,
                  client_id: str | None = None) -> RunList:
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(400, "invalid_request", f"limit must be 1..{MAX_LIMIT}",
                           [IssueOut("limit", f"must be an integer from 1 to {MAX_LIMIT}")])
        if status is not None and status not in RUN_STATUSES:
            message = f"must be one of {', '.join(RUN_STATUSES)}"
            raise ApiError(400, "invalid_request", f"status {message}",
                           [IssueOut("status", message)])
        try:
            page = self.index.page(principal.tenant, limit=limit, cursor=cursor, status=status,
                                   client_id=client_id)
        except CursorError as exc:
            raise ApiError(400, "invalid_cursor", str(exc), [IssueOut("cursor", str(exc))]) \
                from None
        return RunList(items=[run_summary(r, nodes=False) for r in page.runs],
                       next_cursor=page.next_cursor)

    def get_run(self, principal: Principal, run_id: str) -> tuple[RunSummary, int]:
        """The run with its nodes, and the event id it is current as of (for Last-Event-ID)."""
        run = self._entry(principal, run_id).run
        return run_summary(run), self.host.last_event_id

    def definition(self, principal: Principal, run_id: str) -> tuple[dict[str, Any], str]:
        """The workflow as submitted, each root node with its `state`; and its ETag."""
        entry = self._entry(principal, run_id)
        run = entry.run
        workflow = entry.workflow()
        tasks = run.root.tasks
        nodes = []
        for node in workflow.get("nodes") or []:
            node_id = node.get("id") if isinstance(node, dict) else None
            task = tasks.get(node_id) if isinstance(node_id, str) else None
            if task is not None:
                node = {**node, "state": task.state_view()}
            nodes.append(node)
        workflow["nodes"] = nodes
        etag = f'"{run.definition_hash}.{run.last_event}"'
        return workflow, etag

    async def cancel_run(self, principal: Principal, run_id: str) -> RunRef:
        run = self._entry(principal, run_id).run
        if run.final:
            raise ApiError(409, "run_finished", f"run {run_id} has already ended: {run.status}")
        self.host.apply(CancelRun(run_id=run_id, reason="cancelled by request"))
        await self._durable()
        return run_ref(run)

    # --- packages ------------------------------------------------------------------------------

    def packages(self) -> bytes:
        """GET /packages, encoded once (the catalog does not change while the daemon runs)."""
        if self._packages is None:
            listing = msgspec.convert(self.host.catalog.describe(), list[PackageInfo])
            self._packages = msgspec.json.encode(PackageList(packages=listing))
        return self._packages

    # --- events --------------------------------------------------------------------------------

    def open_events(self, principal: Principal, *, run_id: str | None = None,
                    client_session_id: str | None = None,
                    last_event_id: int | None = None) -> EventStream:
        """Subscribe to what `principal` may see, filtered; replay after `last_event_id`.

        If events after `last_event_id` are no longer buffered (or the id is from the
        future, e.g. from before a restart), the stream starts with a `stream.reset` event
        whose id is where the replay resumes: the client must refetch state over REST.
        """
        tenant = principal.tenant
        if run_id is not None:
            self._entry(principal, run_id)

        def accept(envelope: Envelope) -> bool:
            scope = envelope.scope
            return (scope.tenant == tenant
                    and (run_id is None or scope.run_id == run_id)
                    and (client_session_id is None
                         or scope.client_session_id == client_session_id))

        # One synchronous step: the replay cutoff, the reset decision and the registration.
        bus = self.host.bus
        current = self.host.last_event_id
        reset = None
        after = last_event_id
        if last_event_id is not None:
            oldest = current - min(bus.published, bus.capacity) + 1
            if last_event_id + 1 < oldest or last_event_id > current:
                after = oldest - 1 if last_event_id < oldest else current
                reset = Envelope(
                    version="v1",
                    id=str(after),
                    type="stream.reset",
                    occurred_at=datetime.now(UTC),
                    scope=Scope(tenant=tenant, run_id=run_id,
                                client_session_id=client_session_id),
                    data=StreamResetEvent(
                        last_event_id=str(last_event_id),
                        resume_after=str(after),
                        reason="events after the given id are no longer buffered"
                        if last_event_id < oldest else "the given id is newer than any event",
                    ),
                )
        subscription = bus.subscribe(accept, after=after)
        return EventStream(subscription, reset)

    def close_events(self, stream: EventStream) -> None:
        self.host.bus.unsubscribe(stream.subscription)
        stream.subscription.receive.close()


def daemon_host(config: Config, catalog: Catalog, journal: Store, *,
                observers: Iterable[Callable[[Envelope], None]] = (),
                protect: Sequence[Path | str] = ()) -> tuple[Host, DaemonApi]:
    """The host `nodehost serve` runs, journaled in `journal` (opened), and its API (the
    runs index, `observers` seeing every event, workers kept from the `protect` paths).
    The benchmarks compose with this."""
    index = RunsIndex()
    host = build_host(config, catalog, store=journal, observers=observers, protect=protect)
    return host, DaemonApi(host, index=index)
