"""Event envelopes and the six event types, as the SSE stream carries them (tier 1, no I/O).

The wire is the seed's contract: `{version: "v1", id, type, occurredAt, scope, replayed?,
data}`, camelCase, nulls dropped. `data` is one of the event Structs below, tagged by its
`kind` (which is also the envelope's `type`); their field order is the order of the keys on
the wire. The OpenAPI document publishes their schemas. The bus that fans envelopes out to
subscribers is `bus.EventBus`.

Adding an event type is a Struct here (and in `Event`), and the engine emitting it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from .model import ErrorInfo, NodeStatus, NodeSummary, RunStatus, RunSummary

__all__ = [
    "EVENT_TYPES",
    "ChunkMeta",
    "Envelope",
    "Event",
    "NodeResultDeltaEvent",
    "NodeResultSnapshotEvent",
    "NodeState",
    "NodeStateEvent",
    "RunSnapshotEvent",
    "RunStatusEvent",
    "Scope",
    "StreamResetEvent",
    "sse_frame",
]


# gc=False: events hold JSON-like data and never take part in reference cycles, so the
# cycle collector need not track them (thousands are alive in the replay buffer).
class _Wire(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True, frozen=True,
            gc=False):
    pass


class _Event(_Wire, tag_field="kind", frozen=True):
    pass


class RunStatusEvent(_Event, tag="run.status", kw_only=True, frozen=True):
    """A run changed status (queued, running, then succeeded, failed or cancelled)."""

    run_id: str
    status: RunStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None  # why it failed or was cancelled


class RunSnapshotEvent(_Event, tag="run.snapshot", kw_only=True, frozen=True):
    """The whole run, when it is submitted and when it ends: summary and every node
    (nodes of container frames included, with `metadata.__frame`)."""

    run: RunSummary  # without `nodes`: they are here
    nodes: list[NodeSummary]


class NodeState(_Wire, kw_only=True, frozen=True):
    """A node's state in a `node.state` event."""

    stage: str  # the status, or what the node says it is doing ("retrying", "interrupted")
    last_updated_at: datetime
    progress: float | None = None
    message: str | None = None
    error: ErrorInfo | None = None


class NodeStateEvent(_Event, tag="node.state", kw_only=True, frozen=True):
    """A node started, reported progress, was retried, or finished."""

    run_id: str
    node_id: str
    task_id: str  # the node id, or `<frameId>::<nodeId>` inside a container's frame
    status: NodeStatus
    attempt: int  # grows across retries and loop iterations: the result revision
    state: NodeState


class NodeResultSnapshotEvent(_Event, tag="node.result.snapshot", kw_only=True, frozen=True):
    """A node's results (or error) when it finishes; `revision` is its attempt."""

    run_id: str
    node_id: str
    task_id: str
    revision: int
    format: Literal["json"]
    content: dict[str, Any]
    artifacts: tuple[dict[str, Any], ...]
    complete: bool
    summary: str | None = None  # the error's message, else the node's last message


class ChunkMeta(_Wire, kw_only=True, frozen=True):
    channel: str
    metadata: dict[str, Any] | None = None


class NodeResultDeltaEvent(_Event, tag="node.result.delta", kw_only=True, frozen=True):
    """Part of a node's output while it runs: a chunk appended to `/channels/<channel>`
    (payload `{text}` or `{data}` in base64, with `mimeType`), or a partial result
    replacing `/<key>` (payload `{value}`). `sequence` counts within the revision."""

    run_id: str
    node_id: str
    task_id: str
    revision: int
    sequence: int
    operation: Literal["append", "replace", "remove"]
    path: str
    terminal: bool
    payload: dict[str, Any] | None = None
    chunk_meta: ChunkMeta | None = None


class StreamResetEvent(_Event, tag="stream.reset", kw_only=True, frozen=True):
    """The first event of a stream resumed from an id whose events are no longer kept (or
    that is newer than any event): refetch state over REST, then go on from this id."""

    last_event_id: str
    resume_after: str
    reason: str


Event = (RunStatusEvent | RunSnapshotEvent | NodeStateEvent | NodeResultSnapshotEvent
         | NodeResultDeltaEvent | StreamResetEvent)

EVENT_TYPES: tuple[str, ...] = tuple(
    t.__struct_config__.tag for t in Event.__args__
)


class Scope(_Wire, kw_only=True, frozen=True):
    tenant: str
    run_id: str | None = None
    client_session_id: str | None = None


class Envelope(_Wire, kw_only=True, frozen=True):
    """`{version, id, type, occurredAt, scope, replayed?, data}`.

    `version` has no default so that it is always encoded (omit_defaults drops defaults)."""

    version: str
    id: str
    type: str  # the `kind` of `data`
    occurred_at: datetime
    scope: Scope
    replayed: bool = False
    data: Event

    @property
    def seq(self) -> int:
        return int(self.id)


_encode = msgspec.json.Encoder().encode


# Every stream encodes the same envelope: the frames of the most recent ones are kept (with
# their envelope, so that an id() is not reused while its entry lives).
_frames: dict[int, tuple[Envelope, bytes]] = {}
_FRAMES_KEPT = 4096


def sse_frame(envelope: Envelope) -> bytes:
    """The three-line SSE frame of an envelope, blank line included."""
    key = id(envelope)
    hit = _frames.get(key)
    if hit is not None and hit[0] is envelope:
        return hit[1]
    frame = b"id: %s\nevent: %s\ndata: %s\n\n" % (
        envelope.id.encode(), envelope.type.encode(), _encode(envelope)
    )
    if len(_frames) >= _FRAMES_KEPT:
        del _frames[next(iter(_frames))]  # the oldest
    _frames[key] = (envelope, frame)
    return frame
