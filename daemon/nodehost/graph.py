"""A workflow compiled for execution: nodes, dependencies, data bindings (tier 1: no I/O).

Built once per submitted document by `validate.compile_workflow`; read-only afterwards and
shared by every frame that runs the same (sub)graph.

gc=False: a compiled graph is a tree (a subgraph is compiled below the container that runs
it, and subgraph cycles are refused before they are built), alive as long as its runs are,
so the cycle collector need not walk its some three objects per node again and again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from .bindings import BindingPath

if TYPE_CHECKING:
    from .descriptors import NodeType
    from .model import LoopConfig, Node

__all__ = ["DataBinding", "Graph", "GraphNode"]


class DataBinding(msgspec.Struct, frozen=True, gc=False):
    """Copy the value at `source` of node `source_node` into this node's `target`."""

    edge: str  # a label for messages: the edge id or "source.port -> target.port"
    source_node: str
    source: BindingPath
    target: BindingPath


class GraphNode(msgspec.Struct, kw_only=True, eq=False, gc=False):
    id: str
    node: Node
    spec: NodeType | None  # None for containers
    upstream: tuple[str, ...] = ()
    downstream: tuple[str, ...] = ()
    inputs: tuple[DataBinding, ...] = ()
    # every input sets one top-level key of the parameters (`/parameters/in0`): binding
    # needs no deep copies (see Engine._bind_inputs)
    flat_inputs: bool = True
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


class Graph(msgspec.Struct, kw_only=True, eq=False, gc=False):
    """One level of a workflow: the root document or one subgraph definition."""

    id: str  # the workflow id at the root, the subgraph id below
    nodes: dict[str, GraphNode] = {}
    entry: tuple[str, ...] = ()  # nodes without upstreams, in document order

    def __len__(self) -> int:
        return len(self.nodes)

    def specs(self) -> Iterator[NodeType]:
        """The node type of every node, subgraphs included (once per use)."""
        levels = [self]
        while levels:
            for node in levels.pop().nodes.values():
                if node.spec is not None:
                    yield node.spec
                if node.subgraph is not None:
                    levels.append(node.subgraph)

    def package_versions(self) -> set[tuple[str, str]]:
        """The (package, version) pairs its nodes use, subgraphs included."""
        return {(spec.package, spec.version) for spec in self.specs()}
