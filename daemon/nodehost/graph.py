"""A workflow compiled for execution: nodes, dependencies, data bindings (tier 1: no I/O).

Built once per submitted document by `validate.compile_workflow`; read-only afterwards and
shared by every frame that runs the same (sub)graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .bindings import BindingPath

if TYPE_CHECKING:
    from .model import LoopConfig, Node
    from .node_api import NodeSpec

__all__ = ["DataBinding", "Graph", "GraphNode"]


@dataclass(frozen=True, slots=True)
class DataBinding:
    """Copy the value at `source` of node `source_node` into this node's `target`."""

    edge: str  # a label for messages: the edge id or "source.port -> target.port"
    source_node: str
    source: BindingPath
    target: BindingPath


@dataclass(slots=True, eq=False)
class GraphNode:
    id: str
    node: Node
    spec: NodeSpec | None  # None for containers
    upstream: tuple[str, ...] = ()
    downstream: tuple[str, ...] = ()
    inputs: tuple[DataBinding, ...] = ()
    subgraph: Graph | None = None  # set for containers
    max_attempts: int = 1
    backoff: float = 0.0
    timeout: float | None = None
    idempotent: bool = False
    concurrency_key: str | None = None
    loop: LoopConfig | None = None

    @property
    def is_container(self) -> bool:
        return self.subgraph is not None

    @property
    def static_parameters(self) -> dict[str, Any]:
        return self.node.parameters


@dataclass(slots=True, eq=False)
class Graph:
    """One level of a workflow: the root document or one subgraph definition."""

    id: str  # the workflow id at the root, the subgraph id below
    nodes: dict[str, GraphNode] = field(default_factory=dict)
    entry: tuple[str, ...] = ()  # nodes without upstreams, in document order

    def __len__(self) -> int:
        return len(self.nodes)
