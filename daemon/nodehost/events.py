"""Event envelopes (the seed's SSE contract) and the in-process bus that fans them out.

The engine numbers envelopes from one daemon-wide sequence as it changes state, so ids are
in the order of the changes. The bus keeps a bounded replay buffer and gives every
subscriber its own bounded stream: a subscriber that falls behind is dropped, never waited on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["EVENT_TYPES", "Envelope", "EventBus", "Scope", "Subscription"]

EVENT_TYPES = (
    "run.status",
    "run.snapshot",
    "node.state",
    "node.result.snapshot",
    "node.result.delta",
)


# gc=False: envelopes hold JSON-like data and never take part in reference cycles, so the
# garbage collector need not track them (thousands are alive in the replay buffer).
class Scope(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True, gc=False):
    tenant: str
    run_id: str | None = None
    client_session_id: str | None = None


class Envelope(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True, gc=False):
    """`{version, id, type, occurredAt, scope, replayed?, data}`; `data` is never mutated.

    `version` has no default so that it is always encoded (omit_defaults drops defaults)."""

    version: str
    id: str
    type: str
    occurred_at: datetime
    scope: Scope
    replayed: bool = False
    data: dict[str, Any]

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


@dataclass(slots=True)
class Subscription:
    """A bounded stream of envelopes for one subscriber; `dropped` is set if it fell behind."""

    receive: MemoryObjectReceiveStream[Envelope]
    _send: MemoryObjectSendStream[Envelope]
    accept: Callable[[Envelope], bool]
    dropped: bool = False

    def close(self) -> None:
        self._send.close()

    def drain(self) -> list[Envelope]:
        """Everything delivered so far, without waiting."""
        out = []
        while True:
            try:
                out.append(self.receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                return out

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self._send.close()
        self.receive.close()


class EventBus:
    """Fan-out of envelopes to subscribers, with a replay buffer of the most recent ones."""

    def __init__(self, *, buffer: int = 10_000, subscriber_buffer: int = 1_000) -> None:
        self._recent: deque[Envelope] = deque(maxlen=buffer)
        self._subscribers: list[Subscription] = []
        self._subscriber_buffer = subscriber_buffer
        self.published = 0
        self.dropped_subscribers = 0

    def publish_nowait(self, envelope: Envelope) -> None:
        """Record and fan out one envelope; never blocks."""
        self._recent.append(envelope)
        self.published += 1
        if not self._subscribers:
            return
        for sub in list(self._subscribers):
            if not sub.accept(envelope):
                continue
            try:
                sub._send.send_nowait(envelope)
            except anyio.WouldBlock:
                sub.dropped = True
                self.dropped_subscribers += 1
                self._remove(sub)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._remove(sub)

    def subscribe(
        self, accept: Callable[[Envelope], bool] = lambda e: True, *, after: int | None = None
    ) -> Subscription:
        """Subscribe; with `after`, first replay buffered envelopes whose id is greater.

        Registration and the replay cutoff happen in one synchronous step, so nothing is
        missed or delivered twice between the replay and the live stream.
        """
        send, receive = anyio.create_memory_object_stream[Envelope](
            self._subscriber_buffer + (len(self._recent) if after is not None else 0)
        )
        sub = Subscription(receive=receive, _send=send, accept=accept)
        if after is not None:
            for env in self._recent:
                if env.seq > after and accept(env):
                    send.send_nowait(msgspec.structs.replace(env, replayed=True))
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._remove(sub)

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
        sub.close()

    def statistics(self) -> dict[str, int]:
        return {
            "published": self.published,
            "subscribers": len(self._subscribers),
            "buffered": len(self._recent),
            "dropped_subscribers": self.dropped_subscribers,
        }
