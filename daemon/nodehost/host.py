"""The composition root of a host: `build_host(config, catalog)` (tier 4).

One function wires a catalog, the documents it admits, the engine, its recorder (the
journal, when given), the event bus, the scheduler and the executors from a Config. The
daemon (`service`), `nodehost run`, the test kit for package authors (`nodehost.testing`),
the benchmarks and the test suite all build their hosts with it, so what is measured and
tested is what the daemon runs.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec

from .bus import EventBus
from .commands import Command, Submit
from .config import Config
from .descriptors import NodeType
from .documents import Documents, Prepared
from .engine import Engine, utc_now
from .errors import WorkflowInvalid
from .events import Envelope
from .executors import Executor
from .executors.inprocess import InProcessExecutor
from .executors.subprocess import SubprocessExecutor
from .model import RunOptions
from .plugins import Catalog
from .policy import Policy
from .recovery import RecoveryReport, recover
from .runstate import Run
from .scheduler import Scheduler
from .store.store import Recovered, Store
from .workdirs import WorkDirs

__all__ = ["Host", "build_host"]

log = logging.getLogger(__name__)

Observer = Callable[[Envelope], None]
# a task the host runs while it serves (`await task_group.start(service)`)
Service = Callable[..., Coroutine[Any, Any, None]]


class WriteAheadEvents:
    """The engine's sink when there is a journal: an envelope goes out (to the bus, the
    observers) only once the record it comes from is durable, so no client ever sees an
    event that a crash could take back, and event ids are never given to two events.

    The engine hands over a command's envelopes right after recording it, so the store's
    last lsn then is that record's; a replayed command's envelopes come from records that
    are durable already, and go out at once. Order is kept: nothing overtakes a held one.
    """

    def __init__(self, store: Store, out: Observer) -> None:
        self._store = store
        self._out = out
        self._held: deque[tuple[int, Envelope]] = deque()
        store.durable_listeners.append(self.release)

    def __call__(self, envelope: Envelope) -> None:
        store = self._store
        lsn = store.last_lsn
        if not self._held and lsn <= store.durable_lsn:
            self._out(envelope)
        else:
            self._held.append((lsn, envelope))

    @property
    def held(self) -> int:
        return len(self._held)

    def release(self, durable: int) -> None:
        """Send what the store has made durable (up to lsn `durable`)."""
        held, out = self._held, self._out
        while held and held[0][0] <= durable:
            out(held.popleft()[1])


class Host:
    """A composed host: everything needed to run workflows in this process. Made by
    `build_host`; `async with host.running():` serves, `host.submit(...)` starts runs."""

    def __init__(self, *, config: Config, catalog: Catalog, documents: Documents,
                 engine: Engine, bus: EventBus, scheduler: Scheduler,
                 executors: dict[str, Executor], store: Store | None,
                 closers: list[Callable[[], Awaitable[None]]],
                 held: WriteAheadEvents | None = None,
                 work_dirs: WorkDirs | None = None,
                 services: Sequence[Service] = ()) -> None:
        self.config = config
        self.catalog = catalog
        self.documents = documents
        self.engine = engine
        self.bus = bus
        self.scheduler = scheduler
        self.executors = executors
        self.store = store
        self._closers = closers
        self._services = list(services)
        self._held = held
        self.work_dirs = work_dirs or WorkDirs()
        self.policy = Policy(config.policy)  # replaced by a reload

    @property
    def confinement(self) -> Literal["landlock", "off", "unavailable"]:
        """How subprocess workers are confined (SubprocessExecutor.confinement)."""
        executor = self.executors["subprocess"]
        return executor.confinement if isinstance(executor, SubprocessExecutor) else "off"

    @property
    def last_event_id(self) -> int:
        """The id of the newest event published. Events whose records are not durable yet
        are held back, and they are always the newest: the ids below them went out."""
        return self.engine.event_seq - (self._held.held if self._held is not None else 0)

    def prepare(self, data: bytes | str | dict[str, Any]) -> Prepared:
        """Decode, check and compile a document; WorkflowInvalid with every problem."""
        return self.documents.prepare(data)

    def submit(
        self,
        document: Prepared | bytes | str | dict[str, Any],
        *,
        tenant: str = "default",
        options: RunOptions | None = None,
        meta: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> Run:
        """Start a run (preparing the document first if need be: WorkflowInvalid if bad).

        `meta` is kept with the run (and journaled with it): what the API needs to
        remember about the submission, such as its Idempotency-Key."""
        prepared = document if isinstance(document, Prepared) else self.prepare(document)
        refused = self.policy.issues(tenant, prepared.compiled.workflow, prepared.graph,
                                     prepared.at, prepared.compiled.node_types)
        if refused:
            raise WorkflowInvalid(refused)
        request = prepared.request
        run_id = run_id or str(uuid.uuid4())
        accepted = self.scheduler.apply(Submit(
            run_id=run_id, tenant=tenant, client_id=request.client_id,
            workflow=msgspec.Raw(prepared.document), definition_hash=prepared.definition_hash,
            options=options or request.options, meta=meta,
        ))
        if not accepted:
            raise ValueError(f"run {run_id} exists already")
        return self.engine.runs[run_id]

    def apply(self, command: Command) -> bool:
        """Apply a command (a CancelRun, a Forget...) and start what it made ready."""
        return self.scheduler.apply(command)

    async def run(self, document: Prepared | bytes | str | dict[str, Any],
                  **kw: Any) -> Run:
        """Submit and wait for the run to finish (the host must be `running()`)."""
        run = self.submit(document, **kw)
        return await self.scheduler.wait_run(run.run_id)

    def recover(self, recovered: Recovered) -> RecoveryReport:
        """Apply the history the store read (before `running()`), and settle what the
        restart interrupted; the replay buffer gets the newest events back."""
        return recover(self.engine, recovered.records, seconds=recovered.seconds,
                       keep_events=self.config.events.replay_buffer)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Host]:
        """Serve for the duration of the block: the journal's commit loop (started first and
        stopped last, so that it writes what the host records last) and the scheduler.
        At exit, what runs is cancelled and the executors are closed."""
        async with anyio.create_task_group() as outer:
            if self.store is not None:
                await outer.start(self.store.run)
            for service in self._services:
                await outer.start(service)
            try:
                async with anyio.create_task_group() as inner:
                    await inner.start(self.scheduler.run)
                    try:
                        yield self
                    finally:
                        inner.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    for close in self._closers:
                        await close()
                outer.cancel_scope.cancel()


def build_host(
    config: Config,
    catalog: Catalog,
    *,
    store: Store | None = None,
    observers: Iterable[Observer] = (),
    now: Callable[[], datetime] = utc_now,
    protect: Sequence[Path | str] = (),
) -> Host:
    """A host as `config` describes it. With `store` (opened), every accepted command is
    journaled there; `observers` see every event envelope after the bus does (an observer
    that raises is logged, never allowed to break a state transition). Subprocess workers
    never reach the `protect` paths (the daemon gives its state and runtime directories,
    config file, tokens and credentials) nor other tenants' work directories."""
    bus = EventBus(config.events)
    publish = bus.publish_nowait
    watchers = list(observers)
    if not watchers:
        out: Observer = publish
    else:
        def out(envelope: Envelope) -> None:
            publish(envelope)
            for watch in watchers:
                try:
                    watch(envelope)
                except Exception:
                    log.exception("event observer failed on envelope %s", envelope.id)
    held = None if store is None else WriteAheadEvents(store, out)
    sink = out if held is None else held

    documents = Documents(catalog, config.documents)
    engine = Engine(compile=documents, recorder=store.append if store is not None else None,
                    sink=sink, now=now)
    routes = config.executors
    work_dirs = WorkDirs(work_root(config) if store is not None else None)
    subprocess = SubprocessExecutor(routes, catalog=catalog, sandbox=config.sandbox,
                                    work_dirs=work_dirs, protect=protect)
    executors: dict[str, Executor] = {
        "inprocess": InProcessExecutor(threads=config.scheduler.parallelism,
                                       sandbox=config.sandbox, work_dirs=work_dirs,
                                       code=catalog.code,
                                       inline_sync_us=config.executors.inline_sync_us),
        "subprocess": subprocess,
    }

    def executor_for(spec: NodeType) -> Executor:
        if spec.privileged:  # never on the daemon's own privileges: in a confined worker
            return subprocess
        if catalog.code(spec.key) is None:  # its code lives elsewhere (or nowhere any more)
            return subprocess
        return executors[routes.kind_for(spec.package)]

    scheduler = Scheduler(engine, config.scheduler, executor_for=executor_for, journal=store,
                          outputs=config.outputs)
    return Host(config=config, catalog=catalog, documents=documents, engine=engine, bus=bus,
                scheduler=scheduler, executors=executors, store=store,
                closers=[subprocess.aclose, _closing(work_dirs)], held=held,
                services=[subprocess.run],
                work_dirs=work_dirs)


def work_root(config: Config) -> Path:
    """Where a daemon's runs get their work directories."""
    sandbox = config.sandbox
    if sandbox.work_dir is not None:
        return Path(sandbox.work_dir)
    return Path(config.server.state_path()) / "work"


def _closing(work_dirs: WorkDirs) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        work_dirs.close()

    return close
