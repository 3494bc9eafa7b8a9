"""The in-process event bus: fan-out of envelopes to subscribers, and a replay buffer (tier 3).

The engine numbers envelopes from one daemon-wide sequence as it changes state, so ids are
in the order of the changes. The bus keeps a bounded replay buffer and gives every
subscriber its own bounded stream: a subscriber that falls behind is dropped, never waited on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .config import EventsConfig
from .events import Envelope

__all__ = ["EventBus", "Subscription"]


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
    """Fan-out of envelopes to subscribers, with a replay buffer of the most recent ones
    (`replay_buffer` and `subscriber_buffer` of the `[events]` section)."""

    def __init__(self, config: EventsConfig = EventsConfig()) -> None:
        self._recent: deque[Envelope] = deque(maxlen=config.replay_buffer)
        self._subscribers: list[Subscription] = []
        self._subscriber_buffer = config.subscriber_buffer
        self.published = 0
        self.dropped_subscribers = 0

    @property
    def capacity(self) -> int:
        """How many of the most recent envelopes the replay buffer holds."""
        return self._recent.maxlen or 0

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
