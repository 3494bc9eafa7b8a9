"""What an attempt may produce: results and reports checked before the engine accepts them
(tier 1, no I/O).

Everything the engine accepts is journaled, and the journal stores msgpack: a value it
cannot encode (an integer past 64 bits, an object msgpack does not know) or one over the
`[outputs]` limits must fail the attempt, with a code saying why, rather than be accepted
and then lost. Streamed output (chunks) is not checked but budgeted: past `max_log_bytes`
per attempt it is dropped, after one chunk saying so, so that a chatty node cannot fill
the journal or the daemon's memory.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .config import OutputsConfig
from .errors import Code
from .model import ErrorInfo
from .reports import Chunk

__all__ = ["LogBudget", "check_value"]

_encode = msgspec.msgpack.Encoder().encode


def check_value(value: dict[str, Any], limit: int, what: str) -> ErrorInfo | None:
    """Why `value` (a result, a partial result) cannot be accepted, or None if it can."""
    try:
        size = len(_encode(value))
    except (OverflowError, TypeError, ValueError) as exc:
        return ErrorInfo(code=Code.RESULT_UNENCODABLE,
                         message=f"the {what} cannot be stored: {exc}",
                         details={"remediation": "return JSON-like values: objects, lists, "
                                  "strings, booleans, null and numbers that fit in 64 bits"})
    if size > limit:
        return ErrorInfo(code=Code.RESULT_TOO_LARGE,
                         message=f"the {what} is {size} bytes, over the limit of {limit}",
                         details={"bytes": size, "limit": limit,
                                  "remediation": "write large data to a file or a store and "
                                  "return a reference to it, or raise [outputs] limits"})
    return None


class LogBudget:
    """The streamed output one attempt may still produce."""

    __slots__ = ("_left", "dropped")

    def __init__(self, config: OutputsConfig) -> None:
        self._left = config.max_log_bytes
        self.dropped = 0  # bytes dropped so far

    def admit(self, chunk: Chunk) -> Chunk | None:
        """The chunk to accept (itself, or once the note that output is being cut), or
        None to drop it."""
        text = chunk.text or ""
        size = len(chunk.data) if chunk.data is not None else (
            len(text) if text.isascii() else len(text.encode()))
        if self._left >= size and not self.dropped:
            self._left -= size
            return chunk
        first = not self.dropped
        self.dropped += size
        if not first:
            return None
        return Chunk(chunk.channel, "[nodehost: output over the limit of [outputs] "
                     "max_log_bytes; the rest of this attempt's output is dropped]\n",
                     terminal=False, metadata={"truncated": True})
