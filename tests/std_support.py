"""Helpers for the nodehost.std tests: a Reporter that records, and calling a node spec directly.

`call` / `acall` run a sync / async node function the way the host would (parameters decoded,
results encoded) with a `Context` from `make_ctx`; `failure` returns the NodeError a sync node
raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from nodehost import NodeError
from nodehost.node_api import Context, NodeSpec
from nodehost.reports import Artifact, Chunk, Metric, NodeReport, Partial, Progress


class Recorder:
    """A Reporter that keeps everything the node reported; `on_chunk` sees each text chunk."""

    def __init__(self, on_chunk: Callable[[str, str], None] | None = None) -> None:
        self.progresses: list[tuple[float | None, str | None, str | None]] = []
        self.chunks: list[tuple[str, str]] = []  # text chunks: (channel, text)
        self.data_chunks: list[tuple[str, bytes]] = []  # bytes chunks: (channel, data)
        self.partials: list[dict[str, Any]] = []
        self.metrics: list[tuple[str, float]] = []
        self.artifacts: list[dict[str, Any]] = []
        self.on_chunk = on_chunk

    def __call__(self, report: NodeReport) -> None:
        match report:
            case Progress(fraction, stage, message):
                self.progresses.append((fraction, stage, message))
            case Chunk(channel=channel, text=None, data=data):
                assert data is not None
                self.data_chunks.append((channel, data))
            case Chunk(channel=channel, text=str(text)):
                self.chunks.append((channel, text))
                if self.on_chunk is not None:
                    self.on_chunk(channel, text)
            case Partial(update):
                self.partials.append(update)
            case Metric(name, value):
                self.metrics.append((name, value))
            case Artifact(artifact):
                self.artifacts.append(artifact)

    def channel(self, name: str) -> list[str]:
        """The text chunks of one channel, in order."""
        return [text for channel, text in self.chunks if channel == name]


def make_ctx(
    spec: NodeSpec, recorder: Recorder | None = None, *, attempt: int = 1, cancelled: bool = False
) -> Context:
    return Context(
        run_id="run-1",
        node_id="n",
        task_id="task-1",
        attempt=attempt,
        spec=spec,
        reporter=recorder or Recorder(),
        is_cancelled=lambda: cancelled,
    )


def call(
    spec: NodeSpec,
    params: dict[str, Any],
    recorder: Recorder | None = None,
    *,
    attempt: int = 1,
    cancelled: bool = False,
) -> dict[str, Any]:
    """Run a sync node and return its encoded results."""
    ctx = make_ctx(spec, recorder, attempt=attempt, cancelled=cancelled)
    return spec.encode_result(spec.fn(ctx, spec.decode_params(params)))


async def acall(
    spec: NodeSpec, params: dict[str, Any], recorder: Recorder | None = None
) -> dict[str, Any]:
    """Run an async node and return its encoded results."""
    ctx = make_ctx(spec, recorder)
    return spec.encode_result(await spec.fn(ctx, spec.decode_params(params)))


def failure(spec: NodeSpec, params: dict[str, Any]) -> NodeError:
    """The NodeError a sync node raises (the test fails if it raises none)."""
    with pytest.raises(NodeError) as caught:
        call(spec, params)
    return caught.value
