"""Test your node package in a real host: a pytest plugin for node package authors.

Installed with nodehost, the plugin is loaded by pytest on its own (entry point `pytest11`).
It provides the fixture `nodehost_host`, which runs every test that uses it twice: once with
the in-process executor and once with the subprocess executor (a worker process per node
type, as third-party packages run in production).

    import pytest
    from acme_vision import package

    @pytest.mark.anyio
    async def test_detect(nodehost_host):
        outcome = await nodehost_host.run_node(package, "acme.vision.detect", {"url": "..."})
        assert outcome.status == "succeeded", outcome.error
        assert outcome.result == {"boxes": []}

Each call starts a host inside the test (catalog, engine, scheduler, executor), runs the
node or workflow, stops the host and returns what a client of the daemon would have seen.
The subprocess executor imports node functions by module and name, so define nodes at the
top level of an importable module (your package), not inside a test function.

(PYTEST_DONT_REWRITE: there are no asserts here, and the module may be imported before
pytest loads it as a plugin.)
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from .errors import WorkflowInvalid
from .node_api import Package

if TYPE_CHECKING:  # the host itself is imported on first use: this module loads in every
    from .events import Envelope  # pytest session where nodehost is installed
    from .host import Host as _Host
    from .plugins import Catalog
    from .runstate import Run, Task

__all__ = [
    "EXECUTORS",
    "Failure",
    "Host",
    "NodeOutcome",
    "ProgressReport",
    "WorkflowInvalid",
    "WorkflowOutcome",
]

EXECUTORS = ("inprocess", "subprocess")
"""The executors `nodehost_host` runs each test with."""

_NODE_ID = "node"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a node failed: its error code, message and, if given, what to do about it."""

    code: str
    message: str
    remediation: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        """The error as a person reads it, with the traceback if the node raised."""
        text = self._line()
        if "traceback" in self.details:
            text += "\n" + self.details["traceback"]
        return text

    def __repr__(self) -> str:
        """One line, so that `assert outcome.status == "succeeded", outcome.error` reads well."""
        where = re.findall(r'File "([^"]+)", line (\d+)', self.details.get("traceback", ""))
        at = f" at {where[-1][0].rsplit('/', 1)[-1]}:{where[-1][1]}" if where else ""
        return f"<Failure {self._line()}{at}>"

    def _line(self) -> str:
        text = f"{self.code}: {self.message}"
        if self.remediation:
            text += f" (remediation: {self.remediation})"
        return text


@dataclass(frozen=True, slots=True)
class ProgressReport:
    """The node's state after one `ctx.progress(...)` call, as clients saw it."""

    fraction: float | None
    message: str | None
    stage: str | None


@dataclass(slots=True)
class NodeOutcome:
    """What happened to one node, gathered from the events the host published."""

    task_id: str
    status: str  # succeeded | failed | cancelled | skipped | queued | running
    result: dict[str, Any] | None = None
    error: Failure | None = None
    attempts: int = 0
    progress: list[ProgressReport] = field(default_factory=list)
    logs: list[tuple[str, str | bytes]] = field(default_factory=list)  # (channel, text)
    partials: list[dict[str, Any]] = field(default_factory=list)  # one {key: value} per key
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    events: list[Envelope] = field(default_factory=list, repr=False)

    def log_text(self, channel: str = "log") -> str:
        """Everything logged on one channel, joined with newlines (bytes decoded as UTF-8)."""
        return "\n".join(text if isinstance(text, str) else text.decode(errors="replace")
                         for ch, text in self.logs if ch == channel)


@dataclass(slots=True)
class WorkflowOutcome:
    """What happened to a whole run: its status and error, and every node's outcome."""

    status: str  # succeeded | failed | cancelled
    error: Failure | None
    nodes: dict[str, NodeOutcome]  # by task id: "<nodeId>", or "<frame>::<nodeId>" in frames
    events: list[Envelope] = field(repr=False)


class Host:
    """The value of the `nodehost_host` fixture: runs nodes and workflows in a real host.

    `executor` is "inprocess" or "subprocess". `timeout` (seconds) bounds how long a call
    waits for its run: past it the run is cancelled and TimeoutError raised. It is a guard
    for the test, apart from the node's own `timeout=`, which applies as in production.
    """

    def __init__(self, executor: str = "inprocess", *, timeout: float = 30.0) -> None:
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, not {executor!r}")
        self.executor = executor
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Host(executor={self.executor!r})"

    async def run_node(
        self,
        package: Package,
        type: str,
        parameters: Mapping[str, Any] | Any = None,
        *,
        timeout: float | None = None,
        node: Mapping[str, Any] | None = None,
        cancel_when: Callable[[NodeOutcome], bool] | None = None,
    ) -> NodeOutcome:
        """Run one node of `package` with `parameters` (a dict or a Struct) and return it.

        `node` adds fields to the node in the workflow document (camelCase, as on the
        wire: `{"timeoutSeconds": 0.5, "retry": {"maxAttempts": 3}}`). `cancel_when` is
        checked after every event; once it returns true the run is cancelled, as a user
        would cancel it (`cancel_when=lambda node: node.progress`).

        Raises WorkflowInvalid if the parameters do not fit the node's declared type.
        """
        import msgspec

        if type not in package.nodes:
            raise ValueError(f"package {package.name}=={package.version} has no node type "
                             f"{type!r}; it provides {sorted(package.nodes)}")
        params = msgspec.to_builtins(parameters) if parameters is not None else {}
        document = {
            "id": "nodehost-testing",
            "schemaVersion": "2025-01",
            "metadata": {"name": f"run_node {type}"},
            "nodes": [{
                **(node or {}),
                "id": _NODE_ID,
                "type": type,
                "package": {"name": package.name, "version": package.version},
                "parameters": params,
            }],
        }
        when = None if cancel_when is None else (
            lambda events: cancel_when(_node_outcome(_NODE_ID, events, None)))
        run, events = await self._run([package], document, timeout, when)
        return _node_outcome(_NODE_ID, events, run.tasks[_NODE_ID])

    async def run_workflow(
        self,
        packages: Package | Iterable[Package],
        document: Mapping[str, Any] | str | bytes,
        *,
        timeout: float | None = None,
        cancel_when: Callable[[WorkflowOutcome], bool] | None = None,
    ) -> WorkflowOutcome:
        """Run a workflow document (or a run request) with these packages installed.

        Raises WorkflowInvalid, listing every problem by its JSON path, for a bad document.
        """
        if isinstance(packages, Package):
            packages = [packages]
        when = None if cancel_when is None else (
            lambda events: cancel_when(_workflow_outcome(None, events)))
        run, events = await self._run(list(packages), document, timeout, when)
        return _workflow_outcome(run, events)

    async def _run(
        self,
        packages: list[Package],
        document: Any,
        timeout: float | None,
        cancel_when: Callable[[list[Envelope]], bool] | None,
    ) -> tuple[Run, list[Envelope]]:
        import anyio

        from .plugins import Catalog

        catalog = Catalog()
        for package in packages:
            catalog.add(package, origin=f"{package.name}=={package.version} (nodehost.testing)")
            if self.executor == "subprocess":
                _check_importable(package)
        events: list[Envelope] = []
        wanted = anyio.Event()
        broken: list[BaseException] = []

        def on_event(envelope: Envelope) -> None:
            events.append(envelope)
            if cancel_when is None or wanted.is_set():
                return
            try:
                if cancel_when(events):
                    wanted.set()  # cancelled from a task: the engine is mid-transition here
            except Exception as exc:
                broken.append(exc)
                wanted.set()

        host = self._host(catalog, on_event)
        prepared = host.prepare(document)  # WorkflowInvalid before anything starts
        limit = self.timeout if timeout is None else timeout
        async with host.running():
            run = host.submit(prepared)

            async def cancel_on_request() -> None:
                await wanted.wait()
                host.scheduler.cancel(run.run_id, "cancelled by the test (cancel_when)")

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_on_request)
                with anyio.move_on_after(limit) as guard:
                    await host.scheduler.wait_run(run.run_id)
                tg.cancel_scope.cancel()
            if guard.cancelled_caught:
                host.scheduler.cancel(run.run_id, f"the test's timeout of {limit} s passed")
                with anyio.move_on_after(10):
                    await host.scheduler.wait_run(run.run_id)
        if broken:
            raise broken[0]
        if guard.cancelled_caught:
            raise TimeoutError(f"the run did not finish within {limit} s (the timeout of "
                               f"nodehost_host); node states: {_states(run)}")
        return run, events

    def _host(self, catalog: Catalog, on_event: Callable[[Envelope], None]) -> _Host:
        """A host composed as the daemon composes its own, every package on this executor
        (one warm worker per node type for the subprocess executor)."""
        from .config import Config, ExecutorsConfig
        from .host import build_host

        executors = ExecutorsConfig(default=self.executor,  # type: ignore[arg-type]
                                    inprocess=[], subprocess=[], idle_workers=1)
        return build_host(Config(executors=executors), catalog, observers=[on_event])


@pytest.fixture(params=EXECUTORS)
def nodehost_executor(request: pytest.FixtureRequest) -> str:
    """The executor `nodehost_host` uses: "inprocess", then "subprocess".

    Parametrize it to run a test with one of them only:
    `@pytest.mark.parametrize("nodehost_executor", ["inprocess"])`.
    """
    return str(request.param)


@pytest.fixture
def nodehost_host(nodehost_executor: str) -> Host:
    """A `nodehost.testing.Host`: `await nodehost_host.run_node(package, type, params)`."""
    return Host(nodehost_executor)


# --- gathering outcomes from events ----------------------------------------------------------


def _check_importable(package: Package) -> None:
    for spec in package.nodes.values():
        module, qualname = spec.fn.__module__, spec.fn.__qualname__
        if "<locals>" in qualname or module == "__main__":
            raise TypeError(
                f"node type {spec.type!r} of {package.name}=={package.version} cannot run with "
                f"the subprocess executor: its function {module}.{qualname} is not importable "
                "by a worker process. Define the package and its nodes at the top level of a "
                "module (your package), or run this test in-process only with "
                "@pytest.mark.parametrize('nodehost_executor', ['inprocess'])."
            )


def _failure(error: Any) -> Failure | None:
    if error is None:
        return None
    details = dict(error.details or {})
    remediation = details.pop("remediation", None)
    return Failure(error.code, error.message, remediation, details)


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def _node_outcome(task_id: str, all_events: list[Envelope], task: Task | None) -> NodeOutcome:
    """A node's outcome from its events; `task` (the final state) adds results and metrics."""
    from .events import NodeResultDeltaEvent, NodeResultSnapshotEvent, NodeStateEvent

    outcome = NodeOutcome(task_id=task_id, status="queued")
    attempts_seen: set[int] = set()
    for envelope in all_events:
        data = envelope.data
        if getattr(data, "task_id", None) != task_id:
            continue
        outcome.events.append(envelope)
        if isinstance(data, NodeStateEvent):
            outcome.status = data.status
            outcome.attempts = max(outcome.attempts, data.attempt)
            if data.status != "running":
                continue
            if data.attempt not in attempts_seen:  # the attempt starting, not a report
                attempts_seen.add(data.attempt)
                continue
            state = data.state
            stage = state.stage
            outcome.progress.append(ProgressReport(
                state.progress, state.message, None if stage == "running" else stage,
            ))
        elif isinstance(data, NodeResultDeltaEvent):
            path = data.path
            payload = data.payload or {}
            if path.startswith("/channels/"):
                channel = data.chunk_meta.channel if data.chunk_meta else _unescape(path[10:])
                text = payload["text"] if "text" in payload else \
                    base64.b64decode(payload.get("data", ""))
                outcome.logs.append((channel, text))
            elif data.operation == "replace":
                outcome.partials.append({_unescape(path[1:]): payload.get("value")})
        elif isinstance(data, NodeResultSnapshotEvent):
            outcome.artifacts = list(data.artifacts)
            if data.complete and outcome.status == "succeeded":
                outcome.result = data.content
    if task is not None:
        outcome.status = task.status
        outcome.result = task.result if task.status == "succeeded" else None
        outcome.error = _failure(task.error)
        outcome.attempts = task.attempt
        outcome.metrics = dict(task.metrics)
        outcome.artifacts = list(task.artifacts)
    return outcome


def _workflow_outcome(run: Run | None, events: list[Envelope]) -> WorkflowOutcome:
    task_ids = dict.fromkeys(t for e in events if (t := getattr(e.data, "task_id", None)))
    if run is None:
        nodes = {t: _node_outcome(t, events, None) for t in task_ids}
        return WorkflowOutcome("running", None, nodes, events)
    nodes = {t: _node_outcome(t, events, task) for t, task in run.tasks.items()}
    return WorkflowOutcome(run.status, _failure(run.error), nodes, events)


def _states(run: Run) -> str:
    return ", ".join(f"{t.task_id}={t.status}" + (f" ({t.message})" if t.message else "")
                     for t in run.tasks.values())
