"""Helpers for the nodehost.std tests: a Reporter that records, and calling a node spec directly.

`call` / `acall` run a sync / async node function the way the host would (parameters decoded,
results encoded) with a `Context` from `make_ctx` (give it the run's `work_dir` and the
`[sandbox]` settings the node is held to); `failure` returns the NodeError a sync node raised.
`run_std` runs a workflow of std nodes in a host composed as the daemon composes its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest
from nodehost_std import package

from nodehost import NodeError
from nodehost.config import Config, PolicyConfig, Sandbox
from nodehost.host import Host, build_host
from nodehost.node_api import Context, NodeSpec
from nodehost.plugins import Catalog
from nodehost.reports import Artifact, Chunk, Metric, NodeReport, Partial, Progress
from nodehost.runstate import Run


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
    spec: NodeSpec,
    recorder: Recorder | None = None,
    *,
    attempt: int = 1,
    cancelled: bool = False,
    work_dir: Path | None = None,
    sandbox: Sandbox | None = None,
) -> Context:
    return Context(
        run_id="run-1",
        node_id="n",
        task_id="task-1",
        attempt=attempt,
        spec=spec,
        reporter=recorder or Recorder(),
        is_cancelled=lambda: cancelled,
        work_dir=work_dir,
        sandbox=sandbox or Sandbox(),
    )


def call(
    spec: NodeSpec,
    params: dict[str, Any],
    recorder: Recorder | None = None,
    **context: Any,
) -> dict[str, Any]:
    """Run a sync node and return its encoded results; `context` goes to `make_ctx`."""
    ctx = make_ctx(spec, recorder, **context)
    return spec.encode_result(spec.fn(ctx, spec.decode_params(params)))


async def acall(
    spec: NodeSpec, params: dict[str, Any], recorder: Recorder | None = None, **context: Any
) -> dict[str, Any]:
    """Run an async node and return its encoded results; `context` goes to `make_ctx`."""
    ctx = make_ctx(spec, recorder, **context)
    return spec.encode_result(await spec.fn(ctx, spec.decode_params(params)))


def failure(spec: NodeSpec, params: dict[str, Any], **context: Any) -> NodeError:
    """The NodeError a sync node raises (the test fails if it raises none)."""
    with pytest.raises(NodeError) as caught:
        call(spec, params, **context)
    return caught.value


STD = {"name": package.name, "version": package.version}
ALLOW_COMMAND = PolicyConfig(privileged=["nodehost.std.command"])


def std_host(sandbox: Sandbox | None = None, policy: PolicyConfig = ALLOW_COMMAND) -> Host:
    """A host with nodehost.std, built from a Config as the daemon builds its own: `sandbox`
    is its [sandbox], and by default its [policy] names `nodehost.std.command` in
    `privileged`, so that the command node runs: in a subprocess worker, as privileged node
    types always do."""
    catalog = Catalog()
    catalog.add(package, origin="tests")
    return build_host(Config(sandbox=sandbox or Sandbox(), policy=policy), catalog)


def std_workflow(nodes: list[dict[str, Any]], edges: Iterable[tuple[str, str]] = ()
                 ) -> dict[str, Any]:
    """A workflow of nodehost.std nodes (`{"id", "type", "parameters"}`), `edges` as
    (source, target) ids."""
    return {
        "id": "std", "schemaVersion": "2025-01", "metadata": {"name": "std"},
        "nodes": [{**node, "package": STD} for node in nodes],
        "edges": [{"source": {"node": a}, "target": {"node": b}} for a, b in edges],
    }


async def run_std(
    nodes: list[dict[str, Any]],
    *,
    sandbox: Sandbox | None = None,
    edges: Iterable[tuple[str, str]] = (),
) -> tuple[Run, Path]:
    """Run a workflow of nodehost.std nodes in a `std_host`. Returns the finished run and
    the path its work directory had (removed with the host's temporary work root when the
    host closed)."""
    host = std_host(sandbox)
    async with host.running():
        with anyio.fail_after(60):  # a guard for the test, not a synchronisation
            run = await host.run(std_workflow(nodes, edges))
        work_dir = host.work_dirs.path(run.tenant, run.run_id)
    return run, work_dir
