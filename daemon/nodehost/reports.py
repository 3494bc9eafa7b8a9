"""What a running node reports before it returns: one tagged union (tier 1, no I/O).

`Context` makes these, the worker pipe carries them as they are, the journal records them
inside a `commands.Report`, and the engine applies them with one `match`. Adding a kind of
report is a Struct here (and in `NodeReport`), a `Context` method that makes it and a case
in `Engine._report`: nothing in between looks inside.

They are msgpack arrays with a tag (`["progress", 0.5, null, "loading"]`); fields are only
ever appended, with defaults, since the journal keeps them for good.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Artifact", "Chunk", "Metric", "NodeReport", "Partial", "Progress"]


# gc=False: reports hold JSON-like data and never take part in reference cycles.
class _Report(msgspec.Struct, array_like=True, frozen=True, gc=False):
    pass


class Progress(_Report, tag="progress", frozen=True):
    """How far the node is (0..1), and what it is doing; None leaves a value as it was."""

    fraction: float | None = None
    stage: str | None = None
    message: str | None = None


class Chunk(_Report, tag="chunk", frozen=True):
    """A piece of a stream: text or bytes on a channel (log, stdout, stderr, llm, ...)."""

    channel: str
    text: str | None = None
    data: bytes | None = None
    mime_type: str | None = None
    terminal: bool = False
    metadata: dict[str, Any] | None = None


class Partial(_Report, tag="partial", frozen=True):
    """Part of the results now: each top-level key replaces what was reported before."""

    update: dict[str, Any]


class Metric(_Report, tag="metric", frozen=True):
    """A numeric metric; the last value per name is kept."""

    name: str
    value: float


class Artifact(_Report, tag="artifact", frozen=True):
    """Something the node produced (a file, an image...), as clients see it (camelCase)."""

    artifact: dict[str, Any]


NodeReport = Progress | Chunk | Partial | Metric | Artifact
