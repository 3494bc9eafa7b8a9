"""Test helpers: workflow-document builders, a catalog of real Packages, an engine driver.

The documents are plain dicts in the wire format (camelCase), so the tests go through the
same decoding and compiling as a submitted document. The `Driver` runs an `Engine` by hand:
it takes effects, dispatches Ready tasks, completes them with a fake function per node type
(or per node id), and fires timers only when a test asks, on a fixed clock.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from nodehost.commands import CancelRun, Complete, Forget, Report, Submit
from nodehost.commands import Fail as FailCommand
from nodehost.documents import Documents
from nodehost.engine import Attempt, Cancel, Engine, Ready, RunFinished, Timer
from nodehost.events import Envelope
from nodehost.model import ErrorInfo, RunOptions
from nodehost.node_api import Context, Package
from nodehost.plugins import Catalog
from nodehost.reports import NodeReport
from nodehost.runstate import Run
from nodehost.validate import Limits, compile_workflow, load_workflow

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

# --- node packages ---------------------------------------------------------------------------


class SleepParams(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float
    label: str = ""


class AddParams(msgspec.Struct):
    a: int
    b: int = 0


class SumParams(msgspec.Struct):
    values: list[int]


def _demo(version: str) -> Package:
    package = Package("demo", version)

    @package.node("demo.echo")
    def echo(ctx: Context, params: dict) -> dict:
        """Return the parameters as results."""
        return params

    @package.node("demo.sleep", timeout=60)
    def sleep(ctx: Context, params: SleepParams) -> dict:
        """Pretend to sleep."""
        return {"slept": params.seconds}

    @package.node("demo.add")
    def add(ctx: Context, params: AddParams) -> dict:
        """Add two numbers."""
        return {"sum": params.a + params.b}

    @package.node("demo.flaky", retry=3, backoff=0.5)
    def flaky(ctx: Context, params: dict) -> dict:
        """Declares three attempts with backoff."""
        return {}

    @package.node("demo.sum")
    def total(ctx: Context, params: SumParams) -> dict:
        """Sum a list."""
        return {"sum": sum(params.values)}

    return package


def make_catalog() -> Catalog:
    """Two versions of `demo` (1.0.0 and 1.1.0) and `other` 2.0.0."""
    catalog = Catalog()
    catalog.add(_demo("1.0.0"))
    catalog.add(_demo("1.1.0"))
    other = Package("other", "2.0.0")

    @other.node("other.noop")
    def noop(ctx: Context, params: dict) -> dict:
        """Do nothing."""
        return {}

    catalog.add(other)
    return catalog


CATALOG = make_catalog()

# --- document builders -------------------------------------------------------------------------


def port(key: str, path: str | None = None, *, prefix: str | None = None,
         scope: dict[str, Any] | None = None) -> dict[str, Any]:
    """A port; with `path` it carries a binding (optionally scoped)."""
    out: dict[str, Any] = {"key": key}
    if path is not None:
        binding: dict[str, Any] = {"path": path}
        if prefix is not None:
            binding["prefix"] = prefix
        if scope is not None:
            binding["scope"] = scope
        out["binding"] = binding
    return out


def node(
    id: str,
    type: str = "demo.echo",
    params: dict[str, Any] | None = None,
    *,
    package: str = "demo",
    version: str = "1.0.0",
    inputs: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A node of a package (demo 1.0.0 unless said); `extra` is merged in as is."""
    out: dict[str, Any] = {"id": id, "type": type, "package": {"name": package, "version": version}}
    if params is not None:
        out["parameters"] = params
    if inputs is not None or outputs is not None:
        out["ui"] = {"inputPorts": inputs or [], "outputPorts": outputs or []}
    out.update(extra)
    return out


def container(
    id: str,
    subgraph_id: str,
    params: dict[str, Any] | None = None,
    *,
    retry: tuple[int, float] | None = None,
    timeout: float | None = None,
    loop: dict[str, Any] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A `workflow.container` node running subgraph `subgraph_id`."""
    config: dict[str, Any] = {"subgraphId": subgraph_id}
    if retry is not None:
        config["retry"] = {"maxAttempts": retry[0], "backoffSeconds": retry[1]}
    if timeout is not None:
        config["timeoutSeconds"] = timeout
    if loop is not None:
        config["loop"] = loop
    out: dict[str, Any] = {"id": id, "type": "workflow.container", "containerConfig": config}
    if params is not None:
        out["parameters"] = params
    if inputs is not None or outputs is not None:
        out["ui"] = {"inputPorts": inputs or [], "outputPorts": outputs or []}
    return out


def edge(source: str, target: str, source_port: str | None = None,
         target_port: str | None = None, id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"source": {"node": source}, "target": {"node": target}}
    if source_port is not None:
        out["source"]["port"] = source_port
    if target_port is not None:
        out["target"]["port"] = target_port
    if id is not None:
        out["id"] = id
    return out


def chain(*ids: str) -> list[dict[str, Any]]:
    """Dependency-only edges a -> b -> c ..."""
    return [edge(a, b) for a, b in itertools.pairwise(ids)]


def workflow(
    nodes: list[dict[str, Any]],
    edges: list[dict[str, Any]] | None = None,
    subgraphs: list[dict[str, Any]] | None = None,
    *,
    id: str = "wf",
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": id, "schemaVersion": "2025-01", "metadata": {"name": id},
        "nodes": nodes, "edges": edges or [],
    }
    if subgraphs is not None:
        out["subgraphs"] = subgraphs
    out.update(extra)
    return out


def subgraph(id: str, nodes: list[dict[str, Any]], edges: list[dict[str, Any]] | None = None,
             subgraphs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": id, "definition": workflow(nodes, edges, subgraphs, id=f"{id}-def")}


def compile_doc(doc: dict[str, Any], catalog: Catalog = CATALOG, limits: Limits = Limits()):
    """Decode and compile a document; returns (Workflow, Graph)."""
    wf = load_workflow(doc, limits)
    return wf, compile_workflow(wf, catalog, limits)


# --- the engine driver --------------------------------------------------------------------------


class Fail(Exception):
    """Raised by a fake node function to fail its attempt."""

    def __init__(self, message: str = "boom", code: str = "E.TEST", retryable: bool = True):
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable


Handler = Callable[[Attempt], dict[str, Any]]


def _default_handler(d: Attempt) -> dict[str, Any]:
    code = CATALOG.code(d.spec.key)
    assert code is not None, d.spec.key
    params = code.decode_params(d.parameters)
    if d.spec.type == "demo.echo":
        return dict(params)
    if d.spec.type == "demo.add":
        return {"sum": params.a + params.b}
    if d.spec.type == "demo.sum":
        return {"sum": sum(params.values)}
    if d.spec.type == "demo.sleep":
        return {"slept": params.seconds}
    return {}


class Driver:
    """Runs an Engine by hand on a fixed clock with a seeded rng."""

    def __init__(self, catalog: Catalog = CATALOG, *, event_seq: int = 0, seed: int = 7) -> None:
        self.catalog = catalog
        self.documents = Documents(catalog)
        self.now = T0
        self.envelopes: list[Envelope] = []
        self.engine = Engine(compile=self.documents, sink=self.envelopes.append,
                             now=lambda: self.now, rng=random.Random(seed), event_seq=event_seq)
        self.running: dict[str, Attempt] = {}  # dispatch id -> attempt, in dispatch order
        self.dispatches: list[Attempt] = []  # every attempt ever started
        self.timers: list[Timer] = []
        self.cancels: list[str] = []
        self.finished: list[Run] = []
        self.handlers: dict[str, Handler] = {}  # by node id, task id or node type

    # --- setting up ---

    def submit(self, doc: dict[str, Any], *, fail_fast: bool = False, client_id: str = "c1",
               tenant: str = "default", run_id: str | None = None) -> Run:
        prepared = self.documents.prepare(doc)
        run_id = run_id or str(uuid.uuid4())
        accepted = self.engine.apply(Submit(
            run_id=run_id, tenant=tenant, client_id=client_id,
            workflow=msgspec.Raw(prepared.document), definition_hash=prepared.definition_hash,
            options=RunOptions(fail_fast=fail_fast),
        ))
        if not accepted:  # as Host.submit says it
            raise ValueError(f"run {run_id} exists already")
        self.pump()
        return self.engine.runs[run_id]

    def on(self, key: str, handler: Handler | dict[str, Any] | Exception) -> None:
        """What the node (id, task id or type) does: a function, a fixed result or a Fail."""
        if isinstance(handler, dict):
            result = handler
            self.handlers[key] = lambda d: dict(result)
        elif isinstance(handler, Exception):
            exc = handler

            def raiser(d: Attempt) -> dict[str, Any]:
                raise exc

            self.handlers[key] = raiser
        else:
            self.handlers[key] = handler

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    # --- effects ---

    def pump(self) -> None:
        """Apply effects until there are none: dispatch Ready tasks, record the rest."""
        while effects := self.engine.take_effects():
            for effect in effects:
                if isinstance(effect, Ready):
                    d = self.engine.dispatch(effect.task)
                    if d is not None:
                        self.running[d.dispatch_id] = d
                        self.dispatches.append(d)
                elif isinstance(effect, Cancel):
                    self.running.pop(effect.dispatch_id, None)
                    self.cancels.append(effect.dispatch_id)
                elif isinstance(effect, Timer):
                    self.timers.append(effect)
                elif isinstance(effect, RunFinished):
                    # a finished run has no node left queued or running, at any depth
                    left = [t for t in effect.run.tasks.values() if not t.final]
                    assert not left, f"run finished with unfinished nodes: {left}"
                    self.finished.append(effect.run)

    # --- attempts ---

    def attempt(self, task_id: str) -> Attempt:
        """The running attempt of a task (by task id)."""
        found = [d for d in self.running.values() if d.task_id == task_id]
        assert found, f"{task_id} is not running; running: {self.running_ids()}"
        return found[0]

    def running_ids(self) -> list[str]:
        return [d.task_id for d in self.running.values()]

    def complete(self, task_id: str, result: dict[str, Any] | None = None) -> bool:
        d = self.attempt(task_id)
        self.running.pop(d.dispatch_id)
        ok = self.complete_attempt(d.dispatch_id, result if result is not None else {})
        self.pump()
        return ok

    def fail(self, task_id: str, message: str = "boom", code: str = "E.TEST",
             retryable: bool = True) -> bool:
        d = self.attempt(task_id)
        self.running.pop(d.dispatch_id)
        ok = self.fail_attempt(d.dispatch_id, ErrorInfo(code=code, message=message),
                               retryable=retryable)
        self.pump()
        return ok

    # --- commands for one attempt, by dispatch id (applied as they are: no pump) ---

    def _run_of(self, dispatch_id: str) -> str:
        """The run of an attempt this driver dispatched ("" for an id it never gave out)."""
        return next((d.run_id for d in self.dispatches if d.dispatch_id == dispatch_id), "")

    def complete_attempt(self, dispatch_id: str, result: dict[str, Any]) -> bool:
        return self.engine.apply(Complete(run_id=self._run_of(dispatch_id),
                                          dispatch_id=dispatch_id, result=result))

    def fail_attempt(self, dispatch_id: str, error: ErrorInfo, *, retryable: bool = True) -> bool:
        return self.engine.apply(FailCommand(
            run_id=self._run_of(dispatch_id), dispatch_id=dispatch_id, code=error.code,
            message=error.message, details=error.details, retryable=retryable))

    def report(self, dispatch_id: str, report: NodeReport) -> bool:
        return self.engine.apply(Report(run_id=self._run_of(dispatch_id),
                                        dispatch_id=dispatch_id, report=report))

    def cancel_run(self, run_id: str, reason: str = "cancelled by request") -> bool:
        return self.engine.apply(CancelRun(run_id=run_id, reason=reason))

    def fire_timer(self, timer: Timer) -> bool:
        return self.engine.apply(timer.command())

    def forget(self, run_ids: list[str]) -> list[str]:
        """Apply a Forget; the ids the engine dropped."""
        command = Forget(run_ids=run_ids)
        return command.run_ids if self.engine.apply(command) else []

    def _handle(self, d: Attempt) -> None:
        handler = (self.handlers.get(d.task_id) or self.handlers.get(d.node_id)
                   or self.handlers.get(d.spec.type) or _default_handler)
        self.running.pop(d.dispatch_id)
        try:
            result = handler(d)
        except Fail as exc:
            self.fail_attempt(d.dispatch_id, ErrorInfo(code=exc.code, message=exc.message),
                              retryable=exc.retryable)
        else:
            self.complete_attempt(d.dispatch_id, result)
        self.pump()

    def run(self, *, timers: bool = False, limit: int = 100_000) -> None:
        """Finish every running attempt with its handler; with `timers`, fire retry timers too."""
        for _ in range(limit):
            if self.running:
                self._handle(next(iter(self.running.values())))
            elif timers and any(t.kind == "retry" for t in self.timers):
                self.fire(kind="retry")
            else:
                return
        raise AssertionError("the run did not settle")

    def fire(self, kind: str | None = None, task_id: str | None = None) -> list[Timer]:
        """Fire (and forget) the pending timers that match; returns them."""
        fired = [t for t in self.timers if (kind is None or t.kind == kind)
                 and (task_id is None or t.task.task_id == task_id)]
        self.timers = [t for t in self.timers if t not in fired]
        for timer in fired:
            self.advance(timer.delay)
            self.fire_timer(timer)
            self.pump()
        return fired

    # --- looking at the result ---

    def statuses(self, run: Run) -> dict[str, str]:
        return {tid: t.status for tid, t in run.tasks.items()}

    def events(self, type: str | None = None, task_id: str | None = None) -> list[Envelope]:
        return [e for e in self.envelopes if (type is None or e.type == type)
                and (task_id is None or getattr(e.data, "task_id", None) == task_id)]

    def stages(self, task_id: str) -> list[str]:
        """The `status` of every node.state event of a task, in order."""
        return [e.data.status for e in self.events("node.state", task_id)]  # type: ignore[union-attr]

    def dispatched_ids(self) -> list[str]:
        return [d.task_id for d in self.dispatches]
