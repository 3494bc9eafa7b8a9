"""Submitted documents: decoded once, checked and compiled, shared by the runs that use them
(tier 2, no I/O).

`Documents.prepare(body)` decodes a run request `{workflow, clientId}` or a bare workflow,
checks and compiles it (or raises `WorkflowInvalid` with every problem at its path), and
keeps the workflow as sent (UI-only and unknown fields included) msgpack-encoded, as the
journal records it. The engine calls the same object for every Submit it applies, live or
replayed: compiled documents are kept by definition hash for as long as a run (or a
prepared request) holds them, so runs of one document share one graph, and a document
submitted again is not compiled again.

A Submit from the journal whose node types are no longer installed still comes back: they
get a stand-in that fails with E.DISPATCH.UNAVAILABLE if it is ever dispatched, so the
history stays readable and nothing blocks start-up. Admission (`prepare`) never sees them.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import msgspec

from .commands import Submit
from .config import DocumentsConfig
from .descriptors import NodeType
from .errors import Issue, WorkflowInvalid
from .graph import Graph
from .model import StartRunRequest, Workflow
from .policy import node_types
from .validate import (
    TOO_DEEP,
    SpecSource,
    compile_workflow,
    decode_document,
    decode_json,
    definition_hash,
)

__all__ = ["Compiled", "Documents", "Prepared", "WithStandIns"]

log = logging.getLogger(__name__)

_encode = msgspec.msgpack.Encoder().encode
_decode_workflow = msgspec.msgpack.Decoder(Workflow).decode


class Compiled:
    """A workflow and its graph (read-only, shared), and one run's document as sent."""

    __slots__ = ("__weakref__", "_node_types", "document", "graph", "workflow")

    def __init__(self, workflow: Workflow, graph: Graph, document: bytes) -> None:
        self.workflow = workflow
        self.graph = graph
        self.document = document  # msgpack-encoded
        self._node_types: frozenset[tuple[str, bool]] | None = None

    @property
    def node_types(self) -> frozenset[tuple[str, bool]]:
        """The distinct (node type, privileged) it uses: what [policy] decides on, worked
        out once per compiled document rather than once per submission."""
        if self._node_types is None:
            self._node_types = node_types(self.graph)
        return self._node_types

    def with_document(self, document: bytes) -> Compiled:
        """The same workflow and graph for a document that differs only where nodehost does
        not look (UI-only or unknown fields): it has the same definition hash."""
        same = Compiled(self.workflow, self.graph, document)
        same._node_types = self._node_types
        return same


@dataclass(frozen=True, slots=True)
class Prepared:
    """A document decoded, checked and compiled: ready to be submitted."""

    request: StartRunRequest
    compiled: Compiled
    definition_hash: str
    at: str = "$.workflow"  # where the workflow is in what was sent ("$" for a bare one)

    @property
    def graph(self) -> Graph:
        return self.compiled.graph

    @property
    def document(self) -> bytes:
        return self.compiled.document


_TOO_BIG = "integer out of range: integers must lie between -2**63 and 2**64 - 1"


def _too_big(value: Any, at: str) -> str | None:
    """The path of the first integer in `value` that msgpack cannot hold."""
    if isinstance(value, int) and not isinstance(value, bool):
        return at if not -(2**63) <= value < 2**64 else None
    if isinstance(value, dict):
        items: Any = ((f"{at}.{key}", item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{at}[{i}]", item) for i, item in enumerate(value))
    else:
        return None
    for path, item in items:
        found = _too_big(item, path)
        if found is not None:
            return found
    return None


class WithStandIns:
    """A catalog as runs admitted earlier see it: with the versions uninstalled since (kept
    until those runs end), and stand-ins for node types it does not have any more (which
    no executor finds code for: E.DISPATCH.UNAVAILABLE, should one be dispatched)."""

    def __init__(self, catalog: SpecSource) -> None:
        self._catalog = catalog
        self.generation = 0  # what it answers is never cached by admission
        self._missing: dict[tuple[str, str, str], NodeType] = {}

    def get(self, package: str, version: str, type: str, *,
            retired: bool = True) -> NodeType:
        spec = self._catalog.get(package, version, type, retired=True)
        if spec is not None:
            return spec
        key = (package, version, type)
        if key not in self._missing:
            self._missing[key] = NodeType(package=package, version=version, type=type)
        return self._missing[key]

    def versions(self, package: str) -> list[str]:
        return self._catalog.versions(package)

    def types(self, package: str, version: str) -> list[str]:
        return self._catalog.types(package, version)


class Documents:
    """Prepares documents against a catalog and `[documents]` limits; compiles Submits."""

    def __init__(self, catalog: SpecSource, limits: DocumentsConfig = DocumentsConfig()) -> None:
        self.catalog = catalog
        self.limits = limits
        self._lenient = WithStandIns(catalog)
        # by definition hash: what admission compiled (against the catalog as it is) ...
        self._compiled: weakref.WeakValueDictionary[str, Compiled] = (
            weakref.WeakValueDictionary())
        # ... and what only the engine may use (history, with stand-ins)
        self._restored: weakref.WeakValueDictionary[str, Compiled] = (
            weakref.WeakValueDictionary())
        self._generation = catalog.generation

    def prepare(self, data: bytes | str | dict[str, Any]) -> Prepared:
        """Decode (JSON once, unless `data` is decoded already), check and compile a run
        request or a bare workflow.

        Raises WorkflowInvalid with every problem, each at its path in the document as sent
        (`$.workflow.nodes[1].id` in a request, `$.nodes[1].id` in a bare workflow).
        """
        try:
            return self._prepare(data)
        except RecursionError:  # a value nested almost as deep as the decoder allows
            raise WorkflowInvalid([Issue("$", TOO_DEEP)]) from None

    def _prepare(self, data: bytes | str | dict[str, Any]) -> Prepared:
        limits = self.limits
        probe = decode_json(data, limits) if isinstance(data, bytes | str) else data
        at = "$"
        if isinstance(probe, dict) and "workflow" in probe and "nodes" not in probe:
            request = decode_document(probe, StartRunRequest, limits)
            sent = probe["workflow"]
            at = "$.workflow"
        else:
            request = StartRunRequest(workflow=decode_document(probe, Workflow, limits),
                                      client_id="cli")
            sent = probe
        digest = definition_hash(request.workflow)
        try:
            document = _encode(sent)
        except OverflowError:  # JSON has no bound on integers; the journal has 64 bits
            raise WorkflowInvalid([Issue(_too_big(sent, at) or at, _TOO_BIG)]) from None
        if self._generation != self.catalog.generation:  # packages came or went
            self._compiled.clear()
            self._generation = self.catalog.generation
        known = self._compiled.get(digest)
        if known is not None:
            compiled = known if known.document == document else known.with_document(document)
            return Prepared(request, compiled, digest, at)
        try:
            graph = compile_workflow(request.workflow, self.catalog, limits)
        except WorkflowInvalid as exc:
            if at == "$":
                raise
            raise WorkflowInvalid([Issue(at + issue.path[1:], issue.message)
                                   for issue in exc.issues]) from None
        compiled = self._compiled[digest] = Compiled(request.workflow, graph, document)
        return Prepared(request, compiled, digest, at)

    def __call__(self, submit: Submit) -> Compiled:
        """The compiled document of a Submit the engine applies (a prepared one, or one from
        the journal); WorkflowInvalid if it no longer validates (the catalog changed)."""
        sent = submit.workflow
        digest = submit.definition_hash
        known = self._compiled.get(digest) or self._restored.get(digest)
        if known is not None:
            return known if memoryview(sent) == known.document else \
                known.with_document(bytes(sent))
        document = bytes(sent)
        try:
            workflow = _decode_workflow(document)
            graph = compile_workflow(workflow, self._lenient, self.limits)
        except msgspec.ValidationError as exc:
            self._refused(submit, [Issue("$", str(exc))])
            raise WorkflowInvalid([Issue("$", str(exc))]) from None
        except WorkflowInvalid as exc:
            self._refused(submit, exc.issues)
            raise
        compiled = self._restored[digest] = Compiled(workflow, graph, document)
        return compiled

    @staticmethod
    def _refused(submit: Submit, issues: list[Issue]) -> None:
        log.error("run %s cannot be restored: its workflow no longer validates (%s)",
                  submit.run_id, "; ".join(str(i) for i in issues[:3]))
