"""Node packages as data: what the daemon holds of a package version (tier 1, no I/O).

A descriptor says everything the daemon needs to admit, schedule and publish a node type
(its JSON Schemas, attempts, backoff, timeout, idempotent and privileged flags, whether it is
a sync function) and nothing of its code. The daemon validates parameters against the
schemas; only a worker (or the in-process executor, for packages of the daemon's own
environment) imports the functions. A package installed in an environment of its own is
known to the daemon by the descriptor stored beside that environment, and never imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .node_api import NodeSpec, Package

__all__ = ["FORMAT", "NodeType", "PackageDescriptor", "describe_package", "describe_spec"]

FORMAT = 1  # of a stored descriptor file; a reader refuses a newer one


class NodeType(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """One node type of one package version, as data."""

    package: str
    version: str
    type: str
    description: str = ""
    timeout: float | None = None
    retry: int = 1  # attempts
    backoff: float = 0.0
    idempotent: bool = False
    privileged: bool = False
    # a plain (sync) function: a worker runs one at a time, in-process it runs in a thread
    sync: bool = False
    parameters_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    results_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.package, self.version, self.type)

    @property
    def is_async(self) -> bool:
        return not self.sync


class PackageDescriptor(msgspec.Struct, frozen=True, kw_only=True):
    """A package version and its node types; `distribution` is who provides it
    (`acme-textstats==1.0.0`), as its environment's installer saw it."""

    name: str
    version: str
    description: str = ""
    distribution: str = ""
    nodes: list[NodeType] = []


def describe_spec(spec: NodeSpec) -> NodeType:
    """The descriptor of a node type registered in this interpreter."""
    return NodeType(
        package=spec.package, version=spec.version, type=spec.type,
        description=spec.description, timeout=spec.timeout, retry=spec.retry,
        backoff=spec.backoff, idempotent=spec.idempotent, privileged=spec.privileged,
        sync=not spec.is_async, parameters_schema=spec.parameters_schema(),
        results_schema=spec.results_schema(),
    )


def describe_package(package: Package, distribution: str = "") -> PackageDescriptor:
    return PackageDescriptor(
        name=package.name, version=package.version, description=package.description,
        distribution=distribution,
        nodes=[describe_spec(package.nodes[t]) for t in sorted(package.nodes)],
    )
