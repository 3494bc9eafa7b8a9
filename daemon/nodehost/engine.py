"""The run state machine: synchronous transitions, no I/O, no awaiting (tier 3).

Its inputs are commands (`commands.Command`), applied by `apply()`, the one entry for live
calls and for the replay of a journal alike. Each accepted command changes state, emits
the events of that change (in the order of the change, numbered from one sequence) and
leaves *effects* for the scheduler: `Ready` (a node may be dispatched), `Cancel` (stop a
running attempt), `Timer` (apply its `FireTimer` after a delay), `RunFinished`.

A live command (unstamped) is stamped with the engine's clock and event sequence, and once
accepted handed to the recorder (the journal), stamped: the engine is deterministic given
its commands, so they are enough to rebuild every run exactly, event ids and dispatch ids
included. A stamped command is history (a replay): applied at its stamp, never recorded,
and it leaves no effects; `resume()` works out what is left to do once the history is in.

Results and reports carry a dispatch id; anything for an attempt that is no longer current
is not accepted (fenced), so duplicates and late arrivals change nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from .bindings import (
    BindingPathError,
    MissingValue,
    get_value,
    merge_into,
    parse_path,
    set_value,
)
from .commands import (
    CancelRun,
    Command,
    Complete,
    Dispatch,
    Fail,
    FireTimer,
    Forget,
    Interrupt,
    Report,
    Submit,
)
from .documents import Compiled
from .errors import Code, WorkflowInvalid
from .events import (
    ChunkMeta,
    Envelope,
    Event,
    NodeResultDeltaEvent,
    NodeResultSnapshotEvent,
    NodeState,
    NodeStateEvent,
    RunSnapshotEvent,
    RunStatusEvent,
    Scope,
)
from .graph import DataBinding, Graph
from .model import ErrorInfo, NodeStatus
from .reports import Artifact, Chunk, Metric, Partial, Progress
from .runstate import NO_METRICS, Frame, Run, Task, node_summary, run_summary

if TYPE_CHECKING:
    from .descriptors import NodeType

__all__ = [
    "Attempt",
    "Cancel",
    "Compile",
    "Effect",
    "Engine",
    "Ready",
    "Recorder",
    "RunFinished",
    "Timer",
    "utc_now",
]


# Effects and attempts are made for every attempt: msgspec Structs, whose __init__ runs in C
# (a frozen dataclass sets each field through object.__setattr__). gc=False: nothing they
# refer to refers back to them.
class Ready(msgspec.Struct, frozen=True, gc=False):
    task: Task


class Cancel(msgspec.Struct, frozen=True, gc=False):
    dispatch_id: str


class Timer(msgspec.Struct, frozen=True, gc=False):
    delay: float
    kind: Literal["retry", "timeout"]
    task: Task
    fence: int  # the task's attempt when the timer was set

    def command(self) -> FireTimer:
        """What to apply when the delay is over."""
        task = self.task
        return FireTimer(run_id=task.run.run_id, task_id=task.task_id, kind=self.kind,
                         fence=self.fence)


class RunFinished(msgspec.Struct, frozen=True, gc=False):
    run: Run


Effect = Ready | Cancel | Timer | RunFinished


class Attempt(msgspec.Struct, frozen=True, gc=False):
    """One attempt of one node, handed to an executor."""

    run_id: str
    task_id: str
    node_id: str
    dispatch_id: str
    attempt: int
    spec: NodeType
    parameters: dict[str, Any]
    timeout: float | None
    tenant: str = "default"


# Turns a Submit into its compiled workflow; WorkflowInvalid if it cannot be run.
Compile = Callable[[Submit], Compiled]
# Receives every accepted live command, stamped (the journal's append).
Recorder = Callable[[Command], object]


def utc_now() -> datetime:
    return datetime.now(UTC)


_mp_encode = msgspec.msgpack.Encoder().encode
_mp_decode = msgspec.msgpack.Decoder().decode


_ATOMS = (str, int, float, bool, type(None))
_EMPTY: dict[str, Any] = {}


def _copy(value: Any) -> Any:
    """A deep copy of JSON-like data (fast: one msgpack round trip in C)."""
    if type(value) is dict:
        return _mp_decode(_mp_encode(value)) if value else {}
    if isinstance(value, _ATOMS):
        return value
    return _mp_decode(_mp_encode(value))


def _injection_problem(parameters: dict[str, Any], graph: Graph) -> str | None:
    """Why a container's parameters cannot be injected into its subgraph (None if they can)."""
    for key, value in parameters.items():
        if key not in graph.nodes:
            return (f"container parameters are keyed by node id of subgraph "
                    f"{graph.id!r}, which has no node {key!r}")
        if not isinstance(value, dict):
            return (f"container parameter {key!r} must be an object (the parameters of "
                    f"node {key!r}), not {type(value).__name__}")
    return None


def _subgraph_error(inner: Task) -> ErrorInfo:
    """The error of a container whose frame had `inner` fail: it names the failed leaf."""
    err = inner.error or ErrorInfo(code=Code.INTERNAL, message="failed")
    if err.code == Code.SUBGRAPH and err.details:
        return err  # a nested container: its error already names the leaf
    return ErrorInfo(
        code=Code.SUBGRAPH,
        message=f"node {inner.task_id} failed: {err.message}",
        details={"taskId": inner.task_id, "code": err.code},
    )


def _root_cause(task: Task, error: ErrorInfo) -> ErrorInfo:
    """The run's error when `task` fails with `error`: the leaf failure, not its wrappers."""
    if error.code == Code.SUBGRAPH and error.details and "taskId" in error.details:
        details = error.details
        return ErrorInfo(code=details.get("code", Code.INTERNAL), message=error.message,
                         details={"taskId": details["taskId"]})
    return ErrorInfo(code=error.code, message=f"node {task.task_id} failed: {error.message}",
                     details={"taskId": task.task_id})


def _bound_value(tasks: dict[str, Task], binding: DataBinding) -> Any:
    """The value an edge carries: at the binding's source path of its source node."""
    source = tasks[binding.source_node]
    data = source.result if binding.source.root == "results" else source.parameters
    segments = binding.source.segments
    # the usual binding, one key deep (`/results/value`), without the general walk
    if (len(segments) == 1 and type(data) is dict and type(segments[0]) is str
            and segments[0] in data):
        return data[segments[0]]
    try:
        return get_value(data or {}, segments)
    except MissingValue as exc:
        raise MissingValue(
            exc.pointer,
            f"edge {binding.edge}: node {binding.source_node!r} has no value at "
            f"/{binding.source.root}{exc.pointer}",
        ) from None


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


class Engine:
    """All runs of one host. Not thread-safe: call it from the event loop only.

    `compile` turns a Submit's document into a graph (a `documents.Documents`); `recorder`
    receives every accepted live command, stamped (the journal's `append`); `sink` every
    event envelope (the bus), once the command that made it is applied and recorded."""

    def __init__(
        self,
        *,
        compile: Compile,
        recorder: Recorder | None = None,
        sink: Callable[[Envelope], None] | None = None,
        now: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
        event_seq: int = 0,
    ) -> None:
        self.runs: dict[str, Run] = {}
        self.event_seq = event_seq
        # events numbered up to this are counted but not built (set by a replay for what is
        # older than any buffer could hold; 0 = build every event)
        self.quiet_until = 0
        self.recorder = recorder
        self._compile = compile
        self._sink = sink or (lambda envelope: None)
        # the envelopes of the command being applied: handed to the sink once it is applied
        # and recorded, so that a sink can tell which record an envelope comes from
        self._outbox: list[Envelope] = []
        self._now = now
        self._rng = rng or random.Random()
        self._effects: list[Effect] = []
        self._dispatches: dict[str, Task] = {}
        self._dispatch_seq = 0
        self._ts: datetime = now()
        self._scope_run: Run | None = None  # the run whose Scope is `_scope`
        self._scope: Scope | None = None
        self._apply: dict[type[Any], Callable[[Any], bool]] = {
            Submit: self._submit, Dispatch: self._dispatch, Complete: self._complete,
            Fail: self._fail, Report: self._report, Interrupt: self._interrupt,
            FireTimer: self._fire_timer, CancelRun: self._cancel_run, Forget: self._forget,
        }

    # --- the one entry -------------------------------------------------------------------------

    def apply(self, command: Command) -> bool:
        """Apply one command; False (and no change) if it is not accepted: stale, unknown
        or no longer possible. See the module docstring for live and stamped commands."""
        if command.ts is None:
            command.ts = self._ts = self._now()
            command.seq = self.event_seq
            accepted = self._apply[type(command)](command)
            if accepted and self.recorder is not None:
                self.recorder(command)
        else:
            self._ts = command.ts
            self.event_seq = command.seq
            accepted = self._apply[type(command)](command)
            self._effects.clear()  # history: what it asked for has happened since
        outbox = self._outbox
        if outbox:
            self._outbox = []
            sink = self._sink
            for envelope in outbox:
                sink(envelope)
        return accepted

    def dispatch(self, task: Task) -> Attempt | None:
        """Apply a Dispatch of a ready task; the attempt to hand to an executor, or None if
        the task is no longer ready (cancelled, its run ended...)."""
        if not self.apply(Dispatch(run_id=task.run.run_id, task_id=task.task_id)):
            return None
        spec = task.g.spec
        assert spec is not None and task.dispatch_id is not None
        return Attempt(
            run_id=task.run.run_id, task_id=task.task_id, node_id=task.node_id,
            dispatch_id=task.dispatch_id, attempt=task.attempt, spec=spec,
            # a copy: a node that changes its parameters must not change the next attempt's
            parameters=_copy(task.parameters), timeout=task.g.timeout, tenant=task.run.tenant,
        )

    # --- effects -------------------------------------------------------------------------------

    def take_effects(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects

    def statistics(self) -> dict[str, int]:
        active = [r for r in self.runs.values() if not r.final]
        return {
            "runs": len(self.runs),
            "runs_active": len(active),
            "runs_queued": sum(1 for r in active if r.status == "queued"),
            "dispatched": len(self._dispatches),
            "events": self.event_seq,
        }

    # --- envelopes -----------------------------------------------------------------------------

    def _emit(self, run: Run, type: str, data: Event) -> None:
        self.event_seq += 1
        run.last_event = self.event_seq
        if run is not self._scope_run:  # a run's scope never changes: envelopes share it
            self._scope = Scope(tenant=run.tenant, run_id=run.run_id,
                                client_session_id=run.client_id)
            self._scope_run = run
        assert self._scope is not None
        self._outbox.append(Envelope(
            version="v1",
            id=str(self.event_seq),
            type=type,
            occurred_at=self._ts,
            scope=self._scope,
            data=data,
        ))

    def _muted(self) -> bool:
        """During a replay, events older than what anyone can still ask for are only
        counted (their ids stay the same), not built: see `quiet_until`."""
        if self.event_seq < self.quiet_until:
            self.event_seq += 1
            return True
        return False

    def _emit_run_status(self, run: Run, reason: str | None = None) -> None:
        if self._muted():
            return
        self._emit(run, "run.status", RunStatusEvent(
            run_id=run.run_id, status=run.status, started_at=run.started_at,
            finished_at=run.finished_at, reason=reason or None,
        ))

    def _emit_snapshot(self, run: Run) -> None:
        if self._muted():
            return
        # the nodes stay NodeSummary structs: a run of 100,000 nodes would otherwise build
        # some 300,000 dicts, for the collector to walk
        self._emit(run, "run.snapshot", RunSnapshotEvent(
            run=run_summary(run, nodes=False),
            nodes=[node_summary(t) for t in run.tasks.values()],
        ))

    def _emit_node_state(self, task: Task) -> None:
        task.updated_at = ts = self._ts
        if self._muted():
            return
        self._emit(task.run, "node.state", NodeStateEvent(
            run_id=task.run.run_id, node_id=task.node_id, task_id=task.task_id,
            status=task.status, attempt=task.attempt,
            state=NodeState(stage=task.stage or task.status, last_updated_at=ts,
                            progress=task.progress, message=task.message or None,
                            error=task.error),
        ))

    def _emit_result_snapshot(self, task: Task, complete: bool) -> None:
        if self._muted():
            return
        error = task.error
        self._emit(task.run, "node.result.snapshot", NodeResultSnapshotEvent(
            run_id=task.run.run_id, node_id=task.node_id, task_id=task.task_id,
            revision=task.attempt, format="json",
            content=task.result if task.result is not None else _EMPTY,
            artifacts=task.artifacts, complete=complete,
            summary=error.message if error is not None else task.message or None,
        ))

    def _emit_delta(self, task: Task, operation: Literal["append", "replace", "remove"],
                    path: str, payload: dict[str, Any] | None,
                    chunk_meta: ChunkMeta | None = None, terminal: bool = False) -> None:
        task.seq += 1
        if self._muted():
            return
        self._emit(task.run, "node.result.delta", NodeResultDeltaEvent(
            run_id=task.run.run_id, node_id=task.node_id, task_id=task.task_id,
            revision=task.attempt, sequence=task.seq, operation=operation, path=path,
            terminal=terminal, payload=payload, chunk_meta=chunk_meta,
        ))

    # --- runs ----------------------------------------------------------------------------------

    def _submit(self, command: Submit) -> bool:
        """Create a run and make its entry nodes ready."""
        if command.run_id in self.runs:
            return False
        try:
            compiled = self._compile(command)
        except WorkflowInvalid:
            return False  # a document that no longer validates (the compiler says why)
        run = Run(
            run_id=command.run_id, tenant=command.tenant, client_id=command.client_id,
            workflow=compiled.workflow, graph=compiled.graph,
            definition_hash=command.definition_hash, options=command.options,
            created_at=self._ts,
        )
        run.document = compiled.document
        run.source = compiled
        run.meta = command.meta
        self.runs[run.run_id] = run
        self._emit_run_status(run)
        self._emit_snapshot(run)
        self._start_frame(run.root, None)
        return True

    def _cancel_run(self, command: CancelRun) -> bool:
        """Cancel every node that has not finished; not accepted if the run is final."""
        run = self.runs.get(command.run_id)
        if run is None or run.final:
            return False
        run.cancel_reason = command.reason
        self._abort_frame(run.root, command.reason)
        self._finish_run(run)
        return True

    def _forget(self, command: Forget) -> bool:
        """Drop finished runs (retention). The command keeps only the ids it dropped: a
        compaction leaves out every record of the runs a Forget names."""
        dropped = [r for r in command.run_ids if r in self.runs and self.runs[r].final]
        command.run_ids = dropped
        for run_id in dropped:
            self.runs.pop(run_id).dispose()
        return bool(dropped)

    def _finish_run(self, run: Run) -> None:
        if run.final:
            return
        run.root.closed = True
        if run.cancel_reason is not None:
            run.status = "cancelled"  # what was asked for, even if a branch had failed before
            reason: str | None = run.cancel_reason
        elif run.error is not None or any(t.status != "succeeded" for t in run.root.tasks.values()):
            run.status = "failed"
            reason = run.error.message if run.error else None
        else:
            run.status = "succeeded"
            reason = None
        run.finished_at = self._ts
        self._emit_run_status(run, reason=reason)
        self._emit_snapshot(run)
        self._effects.append(RunFinished(run))

    def _mark_running(self, run: Run) -> None:
        if run.status == "queued":
            run.status = "running"
            run.started_at = self._ts
            self._emit_run_status(run)

    # --- frames --------------------------------------------------------------------------------

    def _start_frame(self, frame: Frame, injected: dict[str, Any] | None) -> None:
        frame.restart()
        for node_id, part in (injected or {}).items():
            task = frame.tasks[node_id]  # checked by _injection_problem
            task.parameters = merge_into(_copy(task.g.node.parameters), _copy(part))
        for node_id in frame.graph.entry:
            task = frame.tasks[node_id]
            if task.phase == "waiting":
                self._make_ready(task)

    def _close_frame_if_done(self, frame: Frame) -> None:
        if frame.open or frame.closed:
            return
        frame.closed = True
        container = frame.container
        if container is None:
            self._finish_run(frame.run)
            return
        if container.child is not frame or container.phase != "container":
            return  # the container was cancelled or timed out: the frame is history
        if frame.failed is not None:
            self._fail_attempt(container, _subgraph_error(frame.failed))
            return
        results = {t.node_id: t.result for t in frame.tasks.values() if t.status == "succeeded"}
        loop = container.g.loop
        if loop is not None and container.turns < loop.max_iterations and self._loop_again(
            loop.condition, results, container.parameters
        ):
            self._start_container(container, iterate=True)
            return
        self._succeed(container, results)

    @staticmethod
    def _loop_again(condition: str | None, results: dict[str, Any],
                    parameters: dict[str, Any]) -> bool:
        """Run the subgraph again? The condition is a path into the iteration's results
        (`results.<innerNodeId>...`) or the container's parameters; a missing value is false."""
        if not condition:
            return True
        path = parse_path(condition)
        data = results if path.root == "results" else parameters
        try:
            return bool(get_value(data, path.segments))
        except MissingValue:
            return False

    def _abort_frame(self, frame: Frame, reason: str) -> None:
        """Cancel every unfinished task of a frame (and of the frames below it)."""
        frame.closed = True
        for task in frame.tasks.values():
            if task.final:
                continue
            if task.phase == "dispatched" and task.dispatch_id is not None:
                self._dispatches.pop(task.dispatch_id, None)
                self._effects.append(Cancel(task.dispatch_id))
            elif task.phase == "container" and task.child is not None:
                self._abort_frame(task.child, reason)
            self._set_final(task, "cancelled", message=reason)

    # --- task transitions ----------------------------------------------------------------------

    def _make_ready(self, task: Task) -> None:
        """All upstreams succeeded: bind inputs, then start a container or queue a node."""
        if task.g.inputs:
            try:
                task.parameters = self._bind_inputs(task)
            except (MissingValue, BindingPathError) as exc:
                task.error = ErrorInfo(code=Code.BINDING, message=str(exc))
                self._finish_failed(task, task.error)
                return
        if task.g.is_container:
            self._start_container(task, iterate=False)
        else:
            task.phase = "ready"
            self._effects.append(Ready(task))

    def _bind_inputs(self, task: Task) -> dict[str, Any]:
        g = task.g
        tasks = task.frame.tasks
        if g.flat_inputs:
            # Each edge sets a top-level key: the parameters are copied one level deep and
            # the values shared with the upstream results. Neither is ever changed: the
            # engine replaces results rather than changing them, and the node gets a deep
            # copy of its parameters at dispatch.
            shallow = dict(task.parameters)
            for binding in g.inputs:
                shallow[binding.target.segments[0]] = _bound_value(tasks, binding)  # type: ignore[index]
            return shallow
        # a deeper target writes into dicts: of a copy, with copies of the values (a later
        # edge may write into a value an earlier one set)
        params: dict[str, Any] = _copy(task.parameters)
        for binding in g.inputs:
            try:
                set_value(params, binding.target.segments, _copy(_bound_value(tasks, binding)))
            except BindingPathError as exc:
                raise BindingPathError(f"edge {binding.edge}: {exc}") from None
        return params

    def _dispatch(self, command: Dispatch) -> bool:
        """Start an attempt of a ready node; not accepted if it is no longer ready."""
        run = self.runs.get(command.run_id)
        task = run.tasks.get(command.task_id) if run is not None else None
        if task is None or task.phase != "ready" or task.run.final:
            return False
        if not command.dispatch_seq:  # live: the next number; history: the one it had
            command.dispatch_seq = self._dispatch_seq + 1
        self._dispatch_seq = command.dispatch_seq
        task.attempt += 1
        task.tries += 1
        task.dispatch_id = dispatch_id = f"{task.attempt}.{command.dispatch_seq}"
        task.phase = "dispatched"
        task.status = "running"
        task.started_at = self._ts
        task.seq = 0
        task.progress = task.stage = task.message = None
        task.partial = None
        # what a failed attempt reported is not this attempt's
        task.artifacts = ()
        task.metrics = NO_METRICS
        self._dispatches[dispatch_id] = task
        self._mark_running(task.run)
        self._emit_node_state(task)
        timeout = task.g.timeout
        if timeout:
            self._effects.append(Timer(timeout, "timeout", task, task.attempt))
        return True

    def _start_container(self, task: Task, *, iterate: bool) -> None:
        if iterate:
            task.turns += 1
        else:
            task.tries += 1
            task.turns = 1
        task.attempt += 1
        if not iterate:
            task.try_fence = task.attempt
        task.phase = "container"
        task.status = "running"
        task.started_at = task.started_at if iterate else self._ts
        task.error = None
        task.stage = task.progress = None  # not "retrying" any more
        self._mark_running(task.run)
        task.message = f"iteration {task.turns}" if task.g.loop else None
        self._emit_node_state(task)
        graph = task.g.subgraph
        assert graph is not None
        problem = _injection_problem(task.parameters, graph)
        if problem is not None:  # only bound values can get here: validation checks the rest
            self._fail_attempt(task, ErrorInfo(code=Code.PARAMETERS, message=problem),
                               retryable=False)
            return
        frame = task.child
        if frame is None:
            frame_id = f"{task.frame.frame_id}::{task.node_id}::{graph.id}"
            frame = task.child = Frame(task.run, graph, frame_id, task)
            task.run.frames[frame_id] = frame
        if task.g.timeout and not iterate:
            self._effects.append(Timer(task.g.timeout, "timeout", task, task.try_fence))
        self._start_frame(frame, task.parameters)

    def _attempt_of(self, dispatch_id: str) -> Task | None:
        """The task whose current attempt this is, taken out of the running ones; None if
        the attempt is stale."""
        task = self._dispatches.pop(dispatch_id, None)
        if task is None or task.phase != "dispatched" or task.dispatch_id != dispatch_id:
            return None
        return task

    def _complete(self, command: Complete) -> bool:
        """The attempt succeeded with its result; not accepted if it is stale."""
        task = self._attempt_of(command.dispatch_id)
        if task is None:
            return False
        result = command.result
        if task.partial:
            result = {**task.partial, **result}
        self._succeed(task, result)
        return True

    def _fail(self, command: Fail) -> bool:
        """The attempt failed; retried while attempts remain. Not accepted if it is stale."""
        task = self._attempt_of(command.dispatch_id)
        if task is None:
            return False
        self._fail_attempt(task, ErrorInfo(code=command.code, message=command.message,
                                           details=command.details),
                           retryable=command.retryable)
        return True

    def _interrupt(self, command: Interrupt) -> bool:
        """The host stopped the attempt (a graceful shutdown): queue the node again, without
        counting the attempt against its retries. Not accepted if it is stale."""
        task = self._attempt_of(command.dispatch_id)
        if task is None:
            return False
        task.tries -= 1
        task.status = "queued"
        task.stage = "interrupted"
        task.message = command.reason
        task.progress = None
        self._emit_node_state(task)
        task.phase = "ready"
        self._effects.append(Ready(task))
        return True

    def _fire_timer(self, command: FireTimer) -> bool:
        """A timer set by an earlier effect ran out; not accepted if it is stale."""
        run = self.runs.get(command.run_id)
        task = run.tasks.get(command.task_id) if run is not None else None
        if task is None:
            return False
        # a container's timeout spans its loop iterations: it is fenced on the try, not the
        # attempt (and not on `tries`, which starts again when an enclosing frame restarts)
        container_timeout = command.kind == "timeout" and task.g.is_container
        current = task.try_fence if container_timeout else task.attempt
        if current != command.fence or task.final or task.run.final:
            return False
        if command.kind == "retry":
            if task.phase != "backoff":
                return False
            self._requeue(task)
            return True
        message = f"timed out after {task.g.timeout:g} s"
        if task.phase == "dispatched" and task.dispatch_id is not None:
            self._dispatches.pop(task.dispatch_id, None)
            self._effects.append(Cancel(task.dispatch_id))
            self._fail_attempt(task, ErrorInfo(code=Code.TIMEOUT, message=message))
            return True
        if task.phase == "container" and task.child is not None:
            self._abort_frame(task.child, message)
            self._fail_attempt(task, ErrorInfo(code=Code.TIMEOUT, message=message))
            return True
        return False

    def _succeed(self, task: Task, result: dict[str, Any]) -> None:
        task.result = result
        task.error = None
        if task.progress is not None:
            task.progress = 1.0
        self._set_final(task, "succeeded")
        self._emit_result_snapshot(task, complete=True)
        frame = task.frame
        tasks = frame.tasks
        released = []
        for down_id in task.g.downstream:
            down = tasks[down_id]
            # a task succeeds once per frame iteration (results are fenced on the dispatch
            # id), so each upstream releases each downstream once
            if down.phase == "waiting":
                down.waiting -= 1
                if not down.waiting:
                    released.append(down)
        iteration = frame.iteration
        for down in released:
            if frame.iteration != iteration or frame.closed:
                return  # a released node failed and that closed (or restarted) the frame
            self._make_ready(down)
        self._close_frame_if_done(frame)

    def _fail_attempt(self, task: Task, error: ErrorInfo, *, retryable: bool = True) -> None:
        run = task.run
        if (retryable and task.tries < task.g.max_attempts and run.cancel_reason is None
                and not task.frame.closed):
            task.status = "queued"
            task.phase = "backoff"
            task.error = error
            task.stage = "retrying"
            task.message = f"attempt {task.tries} failed: {error.message}"
            self._emit_node_state(task)
            task.error = None
            delay = task.g.backoff * (2 ** (task.tries - 1)) * self._rng.uniform(0.5, 1.0)
            if delay > 0:
                self._effects.append(Timer(delay, "retry", task, task.attempt))
            else:
                self._requeue(task)
            return
        self._finish_failed(task, error)

    def _requeue(self, task: Task) -> None:
        """Start the next try of a node whose backoff is over."""
        if task.g.is_container:
            self._start_container(task, iterate=False)
        else:
            task.phase = "ready"
            self._effects.append(Ready(task))

    def _finish_failed(self, task: Task, error: ErrorInfo) -> None:
        run = task.run
        task.error = error
        self._set_final(task, "failed")
        self._emit_result_snapshot(task, complete=True)
        frame = task.frame
        if frame.failed is None:
            frame.failed = task
        if run.error is None and frame.container is None:
            # Only a failure that fails the run explains it: inside a frame, the container
            # may still retry and succeed. A container's error names the leaf that failed.
            run.error = _root_cause(task, error)
        self._skip_downstream(task)
        if run.options.fail_fast and not frame.closed:
            # cancel the rest of this frame at once; its container then fails (or retries:
            # its retry policy still holds), which cancels the frame above, and so on
            self._abort_frame(frame, f"failFast: node {task.task_id} failed")
            container = frame.container
            if container is None:
                self._finish_run(run)
            elif container.phase == "container" and container.child is frame:
                self._fail_attempt(container, _subgraph_error(task))
            return
        self._close_frame_if_done(frame)

    def _skip_downstream(self, failed: Task) -> None:
        tasks = failed.frame.tasks
        todo = list(failed.g.downstream)
        while todo:
            down = tasks[todo.pop()]
            if down.final:
                continue
            reason = f"upstream {failed.node_id!r} {failed.status}"
            down.error = ErrorInfo(code=Code.UPSTREAM, message=reason,
                                   details={"taskId": failed.task_id})
            self._set_final(down, "skipped", message=reason)
            todo.extend(down.g.downstream)

    def _set_final(self, task: Task, status: NodeStatus, message: str | None = None) -> None:
        task.status = status
        task.phase = "done"
        task.finished_at = self._ts
        task.stage = None
        if message is not None:
            task.message = message
        task.frame.open -= 1
        self._emit_node_state(task)

    # --- reports from a running attempt (all fenced on the dispatch id) --------------------------

    def _report(self, command: Report) -> bool:
        task = self._dispatches.get(command.dispatch_id)
        if task is None or task.phase != "dispatched":
            return False
        match command.report:
            case Progress(fraction=fraction, stage=stage, message=message):
                if fraction is not None:
                    task.progress = fraction
                if stage is not None:
                    task.stage = stage
                if message is not None:
                    task.message = message
                self._emit_node_state(task)
            case Chunk() as chunk:
                payload: dict[str, Any] = {}
                if chunk.text is not None:
                    payload["text"] = chunk.text
                if chunk.data is not None:
                    # base64, as the seed's data_base64
                    payload["data"] = msgspec.to_builtins(chunk.data)
                if chunk.mime_type is not None:
                    payload["mimeType"] = chunk.mime_type
                meta = ChunkMeta(channel=chunk.channel, metadata=chunk.metadata or None)
                self._emit_delta(task, "append", f"/channels/{_escape(chunk.channel)}",
                                 payload, meta, chunk.terminal)
            case Partial(update=update):
                # a new dict: summaries already published hold the old one
                task.partial = {**task.partial, **update} if task.partial else dict(update)
                for key, value in update.items():
                    self._emit_delta(task, "replace", f"/{_escape(key)}", {"value": value})
            case Metric(name=name, value=value):
                task.metrics = {**task.metrics, name: value}  # summaries share the old dict
            case Artifact(artifact=artifact):
                task.artifacts = (*task.artifacts, artifact)  # summaries share the old tuple
        return True

    # --- after a replay ------------------------------------------------------------------------

    def resume(self) -> dict[str, int]:
        """After the history is in: settle what the restart interrupted and hand the work
        left to the scheduler (through `take_effects()`, as usual).

        Ready nodes become Ready effects; backoffs and container timeouts are started
        afresh; attempts that were running when the host went down fail with
        E.HOST.RESTARTED (live Fail commands, so journaled), which retries them if the node
        declared itself idempotent and has attempts left."""
        counts = {"interrupted": 0, "ready": 0, "backoff": 0, "containers": 0}
        interrupted: list[Task] = []
        for run in self.runs.values():
            if run.final:
                continue
            for task in run.tasks.values():
                if task.phase == "dispatched" and task.dispatch_id is not None:
                    interrupted.append(task)
                elif task.phase == "ready":
                    counts["ready"] += 1
                    self._effects.append(Ready(task))
                elif task.phase == "backoff":
                    counts["backoff"] += 1
                    self._effects.append(Timer(0.0, "retry", task, task.attempt))
                elif task.phase == "container" and task.g.timeout:
                    counts["containers"] += 1
                    self._effects.append(Timer(task.g.timeout, "timeout", task,
                                               task.try_fence))
        for task in interrupted:
            counts["interrupted"] += 1
            assert task.dispatch_id is not None
            self.apply(Fail(
                run_id=task.run.run_id, dispatch_id=task.dispatch_id, code=Code.HOST_RESTARTED,
                message="the host restarted while the node was running",
                details={"idempotent": task.g.idempotent}, retryable=task.g.idempotent,
            ))
        return counts
