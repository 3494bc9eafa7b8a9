"""The mutable state of runs, frames and tasks, and their wire views (tier 3, no I/O).

Only `engine.Engine` mutates these objects. A task is one node of one frame: the root frame
of a run, or the frame a container runs its subgraph in.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from .model import (
    ErrorInfo,
    NodeStateView,
    NodeStatus,
    NodeSummary,
    RunOptions,
    RunRef,
    RunStatus,
    RunSummary,
)

if TYPE_CHECKING:
    from .graph import Graph, GraphNode
    from .model import Workflow

__all__ = ["FINAL", "NO_METRICS", "Frame", "Run", "Task", "node_summary", "run_ref", "run_summary"]

FINAL = frozenset({"succeeded", "failed", "cancelled", "skipped"})

NO_METRICS: dict[str, float] = {}  # shared by every task without metrics (never changed)

# Where a queued or running task is, beyond its wire status.
Phase = Literal["waiting", "ready", "backoff", "dispatched", "container", "done"]


class Task:
    __slots__ = (
        "artifacts", "attempt", "child", "dispatch_id", "error", "finished_at", "frame", "g",
        "message", "metrics", "node_id", "parameters", "partial", "phase", "progress",
        "result", "run", "seq", "stage", "started_at", "status", "task_id", "tries",
        "try_fence", "turns", "updated_at", "waiting",
    )

    def __init__(self, frame: Frame, g: GraphNode, task_id: str) -> None:
        self.frame = frame
        self.run: Run = frame.run  # a task's frame, and so its run, never change
        self.g = g
        self.node_id = g.id
        self.task_id = task_id
        self.attempt = 0  # grows across retries and loop iterations: the result revision
        # `attempt` when the current try of a container began; never reused, since `attempt`
        # only grows (a container's timeout spans its loop iterations and is fenced on it)
        self.try_fence = 0
        self.dispatch_id: str | None = None
        self.child: Frame | None = None
        self.reset()

    def reset(self) -> None:
        """Back to queued, waiting for upstreams (a new frame iteration keeps `attempt`)."""
        self.status: NodeStatus = "queued"
        self.phase: Phase = "waiting"
        self.waiting = len(self.g.upstream)  # upstreams that have not succeeded yet
        self.tries = 0
        self.turns = 0  # loop iterations of a container in its current try
        self.parameters: dict[str, Any] = self.g.node.parameters
        self.result: dict[str, Any] | None = None
        self.partial: dict[str, Any] | None = None
        self.error: ErrorInfo | None = None
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.progress: float | None = None
        self.stage: str | None = None
        self.message: str | None = None
        self.seq = 0  # delta sequence within the current revision
        # replaced, never changed in place: envelopes and summaries share them
        self.metrics: dict[str, float] = NO_METRICS
        self.artifacts: tuple[dict[str, Any], ...] = ()

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def state_view(self) -> NodeStateView:
        return NodeStateView(
            stage=self.stage or self.status,
            progress=self.progress,
            message=self.message,
            last_updated_at=self.updated_at,
            error=self.error,
        )

    def __repr__(self) -> str:
        return f"<Task {self.task_id} {self.status}/{self.phase} attempt={self.attempt}>"


class Frame:
    """One execution of a graph level: the run's root graph, or a container's subgraph."""

    __slots__ = ("closed", "container", "depth", "failed", "frame_id", "graph", "iteration",
                 "open", "run", "tasks")

    def __init__(self, run: Run, graph: Graph, frame_id: str, container: Task | None) -> None:
        self.run = run
        self.graph = graph
        self.frame_id = frame_id
        self.container = container
        self.depth: int = 0 if container is None else container.frame.depth + 1
        self.iteration = 0
        self.tasks: dict[str, Task] = {}
        self.open = 0
        self.closed = False
        self.failed: Task | None = None
        prefix = "" if container is None else f"{frame_id}::"
        for node_id, g in graph.nodes.items():
            task = Task(self, g, f"{prefix}{node_id}")
            self.tasks[node_id] = task
            run.tasks[task.task_id] = task

    def restart(self) -> None:
        """Reset every task for a new iteration (a container retry or loop turn)."""
        fresh = self.iteration == 0  # first start: the tasks were just made, and are reset
        self.iteration += 1
        self.closed = False
        self.failed = None
        self.open = len(self.tasks)
        if not fresh:
            for task in self.tasks.values():
                task.reset()


class Run:
    __slots__ = (
        "cancel_reason", "client_id", "created_at", "definition_hash", "document", "error",
        "finished_at", "frames", "graph", "last_event", "meta", "options", "root_id", "run_id",
        "source", "started_at", "status", "tasks", "tenant", "workflow",
    )

    def __init__(
        self,
        *,
        run_id: str,
        tenant: str,
        client_id: str,
        workflow: Workflow,
        graph: Graph,
        definition_hash: str,
        options: RunOptions,
        created_at: datetime,
    ) -> None:
        self.run_id = run_id
        self.tenant = tenant
        self.client_id = client_id
        self.workflow = workflow
        self.graph = graph
        self.definition_hash = definition_hash
        self.options = options
        self.created_at = created_at
        self.status: RunStatus = "queued"
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.error: ErrorInfo | None = None
        self.cancel_reason: str | None = None
        self.document = b""  # the workflow as sent, msgpack-encoded (set by the engine)
        self.meta: dict[str, Any] | None = None  # what the submitter keeps with the run
        self.last_event = 0  # the id of the last event published about it (an ETag)
        # what compiled the run's document (a documents.Compiled): holding it keeps it in
        # the cache by definition hash, so runs of one document share one graph
        self.source: object = None
        self.tasks: dict[str, Task] = {}
        self.frames: dict[str, Frame] = {}
        root = Frame(self, graph, graph.id, None)
        self.root_id = root.frame_id
        self.frames[root.frame_id] = root

    @property
    def root(self) -> Frame:
        """The frame of the workflow itself (the others run subgraphs)."""
        return self.frames[self.root_id]

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def dispose(self) -> None:
        """Let go of the tasks and frames of a run that is forgotten.

        They refer to each other (a frame holds its tasks, a task its frame), so only the
        cycle collector could free them otherwise; and what `collector.tune_for_daemon`
        froze at start-up (the recovered history) it never collects. Emptied, they go at
        once, by reference counting. The run is of no use afterwards."""
        for frame in self.frames.values():
            frame.tasks = {}
            frame.container = None
            frame.failed = None
        self.frames = {}
        self.tasks = {}
        self.document = b""


def node_summary(task: Task) -> NodeSummary:
    metadata: dict[str, Any] = {"attempt": task.attempt}
    if task.metrics:
        metadata["metrics"] = task.metrics  # replaced by the engine, never changed
    if task.progress is not None:
        metadata["progress"] = task.progress
    if task.message:
        metadata["message"] = task.message
    frame = task.frame
    if frame.container is not None:
        metadata["__frame"] = {
            "frameId": frame.frame_id,
            "containerNodeId": frame.container.node_id,
            "containerTaskId": frame.container.task_id,
            "subgraphId": frame.graph.id,
            "iteration": frame.iteration,
        }
    return NodeSummary(
        node_id=task.node_id,
        task_id=task.task_id,
        status=task.status,
        started_at=task.started_at,
        finished_at=task.finished_at,
        seq=task.attempt or None,
        dispatch_id=task.dispatch_id,
        artifacts=task.artifacts,
        result=task.result if task.result is not None else task.partial,
        metadata=metadata,
        state=task.state_view(),
        error=task.error,
    )


def run_summary(run: Run, *, nodes: bool = True) -> RunSummary:
    return RunSummary(
        run_id=run.run_id,
        status=run.status,
        definition_hash=run.definition_hash,
        client_id=run.client_id,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        error=run.error,
        artifacts=tuple(a for t in run.tasks.values() for a in t.artifacts),
        nodes=[node_summary(t) for t in run.tasks.values()] if nodes else None,
    )


def run_ref(run: Run) -> RunRef:
    return RunRef(
        run_id=run.run_id,
        status=run.status,
        definition_hash=run.definition_hash,
        client_id=run.client_id,
        created_at=run.created_at,
    )
