"""msgspec Structs of the wire documents: workflow, run summaries (tier 1: no I/O).

Wire names are camelCase. Decoding ignores fields we do not know; the original document is
kept next to the decoded one (see `validate.decode_with_raw`) so that UI-only and unknown
fields are returned exactly as they were sent. A field of ours with the wrong type is an error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "CONTAINER_TYPE",
    "Binding",
    "ContainerConfig",
    "Edge",
    "EdgeEnd",
    "ErrorInfo",
    "LoopConfig",
    "Node",
    "NodeStateView",
    "NodeSummary",
    "NodeUI",
    "PackageRef",
    "Port",
    "RetryPolicy",
    "RunOptions",
    "RunRef",
    "RunStatus",
    "RunSummary",
    "ScopeSpec",
    "StartRunRequest",
    "Subgraph",
    "SubgraphDefinition",
    "Workflow",
    "WorkflowMetadata",
]

CONTAINER_TYPE = "workflow.container"

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
NodeStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "skipped"]

NonEmpty = Annotated[str, Meta(min_length=1)]
Seconds = Annotated[float, Meta(gt=0)]


# gc=False: wire structs hold JSON-like data and never take part in reference cycles, so the
# cycle collector need not track them. A workflow of 10,000 nodes decodes into some 70,000
# of them, alive as long as its run is, and each full collection walked them all again.
class Model(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True, gc=False):
    """Base of every wire struct."""


class PackageRef(Model):
    name: NonEmpty
    version: NonEmpty


class ScopeSpec(Model):
    kind: str | None = None
    subgraph_aliases: list[str] | None = None
    node_id: str | None = None
    prefix: str | None = None


class Binding(Model):
    path: NonEmpty
    mode: Literal["read", "write", "two_way"] | None = None
    prefix: str | None = None
    scope: ScopeSpec | None = None


class Port(Model):
    key: NonEmpty
    label: str | None = None
    binding: Binding | None = None


class NodeUI(Model):
    # tuples: a list would be one more object per node for the cycle collector
    input_ports: tuple[Port, ...] = ()
    output_ports: tuple[Port, ...] = ()


class RetryPolicy(Model):
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 1
    backoff_seconds: Annotated[float, Meta(ge=0, le=86_400)] = 0.0


class LoopConfig(Model):
    enabled: bool = False
    max_iterations: Annotated[int, Meta(ge=1, le=10_000)] = 1
    condition: str | None = None


class ContainerConfig(Model):
    subgraph_id: NonEmpty
    retry: RetryPolicy | None = None
    timeout_seconds: Seconds | None = None
    loop: LoopConfig | None = None


class Node(Model):
    id: NonEmpty
    type: NonEmpty
    package: PackageRef | None = None
    parameters: dict[str, Any] = {}
    results: dict[str, Any] = {}
    label: str | None = None
    ui: NodeUI | None = None
    container_config: ContainerConfig | None = None
    retry: RetryPolicy | None = None
    timeout_seconds: Seconds | None = None
    concurrency_key: str | None = None

    @property
    def is_container(self) -> bool:
        return self.type == CONTAINER_TYPE


class EdgeEnd(Model):
    node: NonEmpty
    port: str | None = None


class Edge(Model):
    source: EdgeEnd
    target: EdgeEnd
    id: str | None = None


class WorkflowMetadata(Model):
    name: str
    description: str | None = None


class Subgraph(Model):
    id: NonEmpty
    definition: SubgraphDefinition
    metadata: dict[str, Any] | None = None


class Workflow(Model):
    id: NonEmpty
    schema_version: Annotated[str, Meta(pattern=r"^\d{4}-\d{2}$")]
    metadata: WorkflowMetadata
    nodes: Annotated[list[Node], Meta(min_length=1)]
    edges: list[Edge] = []
    subgraphs: list[Subgraph] = []
    tags: list[str] = []


class SubgraphDefinition(Workflow, kw_only=True):
    """The workflow a subgraph runs. As in the seed, `id` (the subgraph's id names it),
    `schemaVersion` (the root's applies) and `metadata` may be left out."""

    id: str = ""
    schema_version: Annotated[str, Meta(pattern=r"^\d{4}-\d{2}$")] = ""
    metadata: WorkflowMetadata | None = None  # type: ignore[assignment]


class RunOptions(Model):
    fail_fast: bool = False


class StartRunRequest(Model):
    workflow: Workflow
    client_id: NonEmpty
    options: RunOptions = msgspec.field(default_factory=RunOptions)


# --- run summaries (what GET /runs and `nodehost run --output json` return) ---------------


class ErrorInfo(Model):
    code: str
    message: str
    details: dict[str, Any] | None = None


class NodeStateView(Model):
    stage: str
    progress: float | None = None
    message: str | None = None
    last_updated_at: datetime | None = None
    error: ErrorInfo | None = None


class NodeSummary(Model):
    node_id: str
    task_id: str
    status: NodeStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seq: int | None = None
    dispatch_id: str | None = None
    artifacts: tuple[dict[str, Any], ...] = ()
    result: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    state: NodeStateView | None = None
    error: ErrorInfo | None = None


class RunSummary(Model):
    run_id: str
    status: RunStatus
    definition_hash: str
    client_id: str
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: ErrorInfo | None = None
    artifacts: tuple[dict[str, Any], ...] = ()
    nodes: list[NodeSummary] | None = None


class RunRef(Model):
    run_id: str
    status: RunStatus
    definition_hash: str
    client_id: str
    created_at: datetime
