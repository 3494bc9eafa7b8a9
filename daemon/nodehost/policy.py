"""Which node types a tenant's workflows may use (`[policy]`; tier 2, no I/O).

A node type is allowed for a tenant when an `allow` glob of `[policy]` matches it and no
`deny` glob does, and likewise for `[policy.tenants.<tenant>]` when there is one (a tenant's
rules narrow the global ones, never widen them). A node type its package marks
`privileged` (it runs programs or otherwise acts on the host) also needs a `privileged`
glob that matches it, at both levels that apply: `allow = ["*"]` alone never opens it.

The check runs at admission on the compiled graph, so documents stay shared between tenants
(compiled once by definition hash) while each submission is held to its tenant's rules.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .config import PolicyConfig, PolicyRules
from .errors import Issue
from .graph import Graph
from .model import Node, Workflow

__all__ = ["NOT_ALLOWED", "Policy", "Verdict", "node_types"]

NOT_ALLOWED = "E.POLICY.NODE_TYPE_NOT_ALLOWED"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str  # which rule decided, as the operator wrote it


class _Rules:
    def __init__(self, rules: PolicyRules, where: str) -> None:
        self.where = where
        self.allow = [(g, _compile(g)) for g in rules.allow]
        self.deny = [(g, _compile(g)) for g in rules.deny]
        self.privileged = [(g, _compile(g)) for g in rules.privileged]

    def verdict(self, node_type: str, privileged: bool) -> Verdict | None:
        """A refusal, or None when these rules let the node type through."""
        for glob, pattern in self.deny:
            if pattern.match(node_type):
                return Verdict(False, f"{self.where} deny {glob!r}")
        if not any(pattern.match(node_type) for _, pattern in self.allow):
            return Verdict(False, f"no glob of {self.where} allow matches it")
        if privileged and not any(pattern.match(node_type) for _, pattern in self.privileged):
            return Verdict(False, f"it is host-privileged and no glob of {self.where} "
                                  "privileged matches it")
        return None


def _compile(glob: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(glob))


class Policy:
    """`[policy]`, compiled; verdicts are cached per (tenant, node type, privileged)."""

    def __init__(self, config: PolicyConfig) -> None:
        self._global = _Rules(config, "[policy]")
        self._tenants = {name: _Rules(rules, f"[policy.tenants.{name}]")
                         for name, rules in config.tenants.items()}
        self._cache: dict[tuple[str, str, bool], Verdict] = {}

    def verdict(self, tenant: str, node_type: str, privileged: bool = False) -> Verdict:
        key = (tenant, node_type, privileged)
        found = self._cache.get(key)
        if found is None:
            found = self._global.verdict(node_type, privileged)
            tenant_rules = self._tenants.get(tenant)
            if found is None and tenant_rules is not None:
                found = tenant_rules.verdict(node_type, privileged)
            if found is None:
                found = Verdict(True, "allowed")
            if len(self._cache) > 65_536:
                self._cache.clear()
            self._cache[key] = found
        return found

    def issues(self, tenant: str, workflow: Workflow, graph: Graph, at: str,
               node_types: frozenset[tuple[str, bool]] | None = None) -> list[Issue]:
        """Every node of the document the tenant may not use, at its path (`at` is where the
        workflow sits in the request: `$.workflow` or `$`). With `node_types` (the document's
        distinct (type, privileged), see `node_types`), a document the tenant may run is
        passed without walking its nodes."""
        if node_types is not None and all(self.verdict(tenant, t, p).allowed
                                          for t, p in node_types):
            return []
        privileged = set(_privileged(graph))
        found: list[Issue] = []
        for path, node in _nodes(workflow, at):
            if node.is_container:
                continue
            verdict = self.verdict(tenant, node.type, node.type in privileged)
            if not verdict.allowed:
                found.append(Issue(f"{path}.type", f"node type {node.type!r} is not allowed "
                                   f"for tenant {tenant!r}: {verdict.reason} ({NOT_ALLOWED})"))
        return found


def node_types(graph: Graph) -> frozenset[tuple[str, bool]]:
    """The distinct (node type, privileged) of a compiled graph, subgraphs included."""
    return frozenset((spec.type, spec.privileged) for spec in graph.specs())


def _privileged(graph: Graph) -> Iterator[str]:
    """The node types of the compiled graph whose package version marks them privileged."""
    for gnode in graph.nodes.values():
        if gnode.spec is not None and gnode.spec.privileged:
            yield gnode.spec.type
        if gnode.subgraph is not None:
            yield from _privileged(gnode.subgraph)


def _nodes(workflow: Workflow, at: str) -> Iterator[tuple[str, Node]]:
    for i, node in enumerate(workflow.nodes):
        yield f"{at}.nodes[{i}]", node
    for j, sub in enumerate(workflow.subgraphs):
        yield from _nodes(sub.definition, f"{at}.subgraphs[{j}].definition")
