"""Decode and check workflow documents; compile them into `Graph`s (tier 2: no I/O).

Every problem found is reported at once, each with the JSON path of what is wrong
(`$.subgraphs[0].definition.edges[3].target.port`), in a `WorkflowInvalid`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Protocol

import msgspec

from . import collector
from .bindings import BindingPath, BindingPathError, ScopeRef, parse_path, scope_from_parts
from .config import DocumentsConfig
from .descriptors import NodeType
from .errors import Issue, WorkflowInvalid
from .graph import DataBinding, Graph, GraphNode
from .model import Binding, Node, Port, StartRunRequest, Workflow
from .schemas import checks_for

__all__ = [
    "Limits",
    "compile_workflow",
    "decode_document",
    "decode_json",
    "decode_with_raw",
    "definition_hash",
    "load_request",
    "load_workflow",
]


Injectable = frozenset[tuple[str, ...]]


def _below(paths: Injectable, key: str) -> Injectable:
    """The paths under `key` (the empty path, a whole-object injection, covers every key)."""
    if not paths:
        return paths  # the root graph: nothing is injected
    return frozenset(p[1:] if p else p for p in paths if not p or p[0] == key)


class SpecSource(Protocol):
    """What validation needs to know about installed node packages (a `plugins.Catalog`)."""

    generation: int  # changes whenever packages come or go

    def get(self, package: str, version: str, type: str, *,
            retired: bool = False) -> NodeType | None: ...
    def versions(self, package: str) -> list[str]: ...
    def types(self, package: str, version: str) -> list[str]: ...


Limits = DocumentsConfig  # what a document may be: the `[documents]` section


_SEPARATOR = "::"  # joins frame and node ids into task ids: `<frameId>::<nodeId>`


def _separator_message(what: str, id: str) -> str:
    return (f"{what} id {id!r} must not contain {_SEPARATOR!r}, which separates frame and "
            f"node ids in task ids (two nodes could otherwise share a task id)")


_MSGSPEC_PATH = re.compile(r" - at `(\$[^`]*)`$")


TOO_DEEP = "arrays and objects are nested too deeply (some 1,000 levels or more)"


def decode_json(data: bytes | str, limits: Limits) -> Any:
    """A JSON document within the size limit, decoded; problems become a WorkflowInvalid."""
    if isinstance(data, str):
        data = data.encode()
    if len(data) > limits.max_document_bytes:
        raise WorkflowInvalid([Issue("$", f"document is {len(data)} bytes, over the limit "
                                           f"of {limits.max_document_bytes}")])
    try:
        with collector.disabled():  # JSON decodes to no cycles: nothing to find
            return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise WorkflowInvalid([Issue("$", f"not valid JSON: {exc}")]) from None
    except RecursionError:
        raise WorkflowInvalid([Issue("$", TOO_DEEP)]) from None


def decode_document(data: Any, what: type, limits: Limits) -> Any:
    """JSON (or an already decoded document) into a Struct; problems become a
    WorkflowInvalid."""
    if isinstance(data, bytes | str):
        data = decode_json(data, limits)
    try:
        return msgspec.convert(data, what, strict=True)
    except msgspec.ValidationError as exc:
        path, message = _split_msgspec(str(exc))
        raise WorkflowInvalid([Issue(path, message)]) from None


def decode_with_raw(
    data: bytes | str | dict[str, Any], what: type, limits: Limits = DocumentsConfig()
) -> tuple[Any, dict[str, Any]]:
    """Like `decode_document`, also returning the document as sent (a dict).

    The Structs drop fields nodehost does not know (UI-only ones such as `position` or
    `previewImage`, and anything a newer client adds); the raw document keeps them, so that
    what is returned to clients is what they sent.
    """
    if isinstance(data, str):
        data = data.encode()
    raw = decode_document(data, dict, limits) if isinstance(data, bytes) else data
    return decode_document(raw, what, limits), raw


def load_request(
    data: bytes | str | dict[str, Any], limits: Limits = DocumentsConfig()
) -> StartRunRequest:
    """Decode a StartRunRequest `{workflow, clientId, options?}`."""
    request: StartRunRequest = decode_document(data, StartRunRequest, limits)
    return request


def load_workflow(
    data: bytes | str | dict[str, Any], limits: Limits = DocumentsConfig()
) -> Workflow:
    """Decode a bare Workflow document."""
    workflow: Workflow = decode_document(data, Workflow, limits)
    return workflow


def definition_hash(workflow: Workflow) -> str:
    """sha256 of the canonical JSON of the workflow (sorted keys, compact)."""
    # encoded from the Structs directly: to_builtins first built a dict per struct (a
    # million for a 100,000-node document) for the same bytes
    body = msgspec.json.encode(workflow, order="sorted")
    return hashlib.sha256(body).hexdigest()


def compile_workflow(
    workflow: Workflow, catalog: SpecSource, limits: Limits = DocumentsConfig()
) -> Graph:
    """Check everything DESIGN.md lists and build the graph; raise WorkflowInvalid if not ok."""
    compiler = _Compiler(workflow, catalog, limits)
    graph = compiler.run()
    if compiler.issues:
        raise WorkflowInvalid(compiler.issues)
    return graph


class _Compiler:
    def __init__(self, workflow: Workflow, catalog: SpecSource, limits: Limits) -> None:
        self.root = workflow
        self.catalog = catalog
        self.limits = limits
        self.issues: list[Issue] = []
        self._ports: dict[tuple[int, str], dict[str, Port]] = {}  # by (id(node), kind)
        self.subgraphs: dict[str, tuple[Workflow, str]] = {}  # id -> (definition, its path)
        self.graphs: dict[str, Graph] = {}  # compiled subgraphs, by id
        self.compiling: list[str] = []  # subgraph ids on the current path (cycle guard)
        self.total_nodes = 0
        self._seen: set[Issue] = set()
        self._quiet = False

    def issue(self, path: str, message: str) -> None:
        # a subgraph is compiled once per container that runs it: report its problems once
        issue = Issue(path, message)
        if not self._quiet and issue not in self._seen:
            self._seen.add(issue)
            self.issues.append(issue)

    def run(self) -> Graph:
        self._collect_subgraphs(self.root, "$")
        graph = self._graph(self.root, "$", self.root.id, injectable=frozenset())
        if self.over_limit:
            self.issue("$", f"the workflow expands to more than {self.limits.max_nodes} nodes "
                            "(a subgraph counts once per container that runs it)")
        return graph

    @property
    def over_limit(self) -> bool:
        return self.total_nodes > self.limits.max_nodes

    def _collect_subgraphs(self, wf: Workflow, path: str) -> None:
        for i, sub in enumerate(wf.subgraphs):
            sub_path = f"{path}.subgraphs[{i}]"
            if sub.id in self.subgraphs:
                self.issue(f"{sub_path}.id", f"duplicate subgraph id {sub.id!r} (first at "
                                             f"{self.subgraphs[sub.id][1]})")
                continue
            if _SEPARATOR in sub.id:
                self.issue(f"{sub_path}.id", _separator_message("subgraph", sub.id))
            self.subgraphs[sub.id] = (sub.definition, sub_path)
            self._collect_subgraphs(sub.definition, f"{sub_path}.definition")

    # --- one graph level -------------------------------------------------------------------

    def _graph(
        self, wf: Workflow, path: str, graph_id: str, injectable: Injectable
    ) -> Graph:
        """Compile one level; `injectable` lists the paths (below the node id) that the
        container running this level may inject into its nodes' parameters."""
        graph = Graph(id=graph_id)
        # counted before the containers below are compiled, so a document that expands
        # beyond the limit stops expanding (a few kB can describe 10^16 nodes)
        self.total_nodes += len(wf.nodes)
        index: dict[str, int] = {}
        for i, node in enumerate(wf.nodes):
            if node.id in index:
                first = f"{path}.nodes[{index[node.id]}]"
                self.issue(f"{path}.nodes[{i}].id",
                           f"duplicate node id {node.id!r} (first at {first})")
                continue
            index[node.id] = i
            if _SEPARATOR in node.id:
                self.issue(f"{path}.nodes[{i}].id", _separator_message("node", node.id))
            gnode = self._node(node, f"{path}.nodes[{i}]", _below(injectable, node.id))
            if gnode is not None:
                graph.nodes[node.id] = gnode

        # ordered sets: a wide join must not cost a scan per edge. Paths of problems are
        # only formatted once there is a problem: a document is mostly fine.
        upstream: dict[str, dict[str, None]] = {nid: {} for nid in index}
        inputs: dict[str, list[DataBinding]] = {}
        nodes = wf.nodes
        for j, edge in enumerate(wf.edges):
            source, target = edge.source, edge.target
            si, ti = index.get(source.node), index.get(target.node)
            if si is None or ti is None:
                for end_name, end, found in (("source", source, si), ("target", target, ti)):
                    if found is None:
                        self.issue(f"{path}.edges[{j}].{end_name}.node",
                                   f"unknown node {end.node!r}")
                continue
            src, dst = nodes[si], nodes[ti]
            src_port = dst_port = None
            if source.port is not None:
                src_port = self._port(src, source.port, "output", path, j, "source")
            if target.port is not None:
                dst_port = self._port(dst, target.port, "input", path, j, "target")
            ups = upstream[target.node]
            ups[source.node] = None
            if src_port is None or dst_port is None:
                continue
            if src_port.binding is None or dst_port.binding is None:
                continue  # a dependency only: no data flows
            binding = self._edge_binding(wf, index, edge.id or f"edges[{j}]", src, src_port,
                                         dst, dst_port, f"{path}.edges[{j}]")
            if binding is not None:
                found_inputs = inputs.get(target.node)
                if found_inputs is None:
                    inputs[target.node] = [binding]
                else:
                    found_inputs.append(binding)
                ups[binding.source_node] = None

        downstream: dict[str, list[str]] = {nid: [] for nid in index}
        for nid, ups in upstream.items():
            for up in ups:
                downstream[up].append(nid)
        self._check_cycles(upstream, downstream, path)
        for nid, gnode in graph.nodes.items():
            gnode.upstream = tuple(upstream[nid])
            gnode.downstream = tuple(downstream[nid])
            bindings = inputs.get(nid)
            if bindings:
                gnode.inputs = tuple(bindings)
                gnode.flat_inputs = all(len(b.target.segments) == 1
                                        and isinstance(b.target.segments[0], str)
                                        for b in bindings)
            if gnode.spec is not None and not gnode.is_container:
                self._check_parameters(gnode, path, index[nid], injectable)
        graph.entry = tuple(nid for nid in graph.nodes if not upstream[nid])
        return graph

    def _port(self, node: Node, key: str, kind: str, path: str, edge: int,
              end: str) -> Port | None:
        """The port an end of edge `edge` of the graph at `path` names (a problem if none)."""
        by_key = self._ports.get((id(node), kind))
        if by_key is None:
            ui = node.ui
            ports = (ui.output_ports if kind == "output" else ui.input_ports) if ui else ()
            by_key = self._ports[(id(node), kind)] = {}
            for declared in ports:
                by_key.setdefault(declared.key, declared)  # the first of a duplicated key wins
        port = by_key.get(key)
        if port is not None:
            return port
        known = sorted(by_key)
        self.issue(f"{path}.edges[{edge}].{end}.port",
                   f"node {node.id!r} has no {kind} port {key!r}"
                         + (f" (it has {known})" if known else " (it declares none)"))
        return None

    # --- nodes -----------------------------------------------------------------------------

    def _node(self, node: Node, path: str, inherited: Injectable) -> GraphNode | None:
        if node.is_container:
            return self._container(node, path, inherited)
        if node.container_config is not None:
            self.issue(f"{path}.containerConfig",
                       f"only {'workflow.container'!r} nodes take a containerConfig")
        if node.package is None:
            self.issue(f"{path}.package", f"node {node.id!r} needs a package {{name, version}}")
            return None
        name, version = node.package.name, node.package.version
        spec = self.catalog.get(name, version, node.type)
        if spec is None:
            versions = self.catalog.versions(name)
            if not versions:
                self.issue(f"{path}.package.name", f"no installed plugin provides package {name!r}")
            elif version not in versions:
                self.issue(f"{path}.package.version",
                           f"package {name!r} has no version {version!r}; installed: {versions}")
            else:
                types = self.catalog.types(name, version)
                self.issue(f"{path}.type", f"package {name}=={version} has no node type "
                                           f"{node.type!r}; it provides {types}")
            return None
        retry = node.retry
        gnode = GraphNode(
            id=node.id, node=node, spec=spec,
            max_attempts=retry.max_attempts if retry else spec.retry,
            backoff=retry.backoff_seconds if retry else spec.backoff,
            timeout=node.timeout_seconds or spec.timeout,
            idempotent=spec.idempotent,
            concurrency_key=node.concurrency_key,
        )
        return gnode

    def _container(self, node: Node, path: str, inherited: Injectable) -> GraphNode | None:
        cfg = node.container_config
        if cfg is None:
            self.issue(f"{path}.containerConfig", "a workflow.container node needs a "
                                                  "containerConfig with a subgraphId")
            return None
        if cfg.subgraph_id not in self.subgraphs:
            self.issue(f"{path}.containerConfig.subgraphId",
                       f"subgraph {cfg.subgraph_id!r} is not defined"
                       + (f" (defined: {sorted(self.subgraphs)})" if self.subgraphs else ""))
            return None
        if cfg.subgraph_id in self.compiling:
            chain = " -> ".join([*self.compiling, cfg.subgraph_id])
            self.issue(f"{path}.containerConfig.subgraphId", f"subgraph cycle: {chain}")
            return None
        if self.over_limit:
            return None  # reported once by run()
        if len(self.compiling) >= self.limits.max_depth:
            self.issue(path, f"containers nested deeper than {self.limits.max_depth} levels")
            return None
        if cfg.loop is not None and cfg.loop.enabled and cfg.loop.condition:
            try:
                parse_path(cfg.loop.condition)
            except BindingPathError as exc:
                self.issue(f"{path}.containerConfig.loop.condition", str(exc))
        definition, sub_path = self.subgraphs[cfg.subgraph_id]
        inner_ids = {n.id for n in definition.nodes}
        for key, value in node.parameters.items():
            if key not in inner_ids:
                self.issue(f"{path}.parameters.{key}",
                           f"container parameters are keyed by node id of subgraph "
                           f"{cfg.subgraph_id!r}; it has no node {key!r}")
            elif not isinstance(value, dict):
                self.issue(f"{path}.parameters.{key}",
                           f"must be an object: the parameters given to node {key!r}")
        injectable = inherited | {(key,) for key in node.parameters} | {
            target for port in (node.ui.input_ports if node.ui else ())
            if (target := self._container_target(node, port)) is not None
        }
        # Subgraphs are compiled per container use: what a container injects differs.
        self.compiling.append(cfg.subgraph_id)
        try:
            sub = self._graph(definition, f"{sub_path}.definition", cfg.subgraph_id, injectable)
        finally:
            self.compiling.pop()
        for key, value in node.parameters.items():
            inner = sub.nodes.get(key)
            if inner is not None and inner.spec is not None and isinstance(value, dict):
                self._check_values(inner.spec, value, f"{path}.parameters.{key}")
        retry = cfg.retry
        return GraphNode(
            id=node.id, node=node, spec=None, subgraph=sub,
            max_attempts=retry.max_attempts if retry else 1,
            backoff=retry.backoff_seconds if retry else 0.0,
            timeout=cfg.timeout_seconds,
            loop=cfg.loop if cfg.loop is not None and cfg.loop.enabled else None,
        )

    def _container_target(self, node: Node, port: Port) -> tuple[str, ...] | None:
        """Where an input port of a container writes into its parameters (None if nowhere)."""
        if port.binding is None:
            return None
        try:
            path = parse_path(port.binding.path)
            scope = _scope(port.binding)
        except BindingPathError:
            return None  # reported with the edge that uses the port
        prefix: tuple[str, ...] = ()
        if scope is not None and scope.kind == "subgraph":
            resolved = self._resolve_scope(scope, node, None, {}, "", quiet=True)
            if resolved is None:
                return None
            prefix = resolved[1]
        return (*prefix, *(str(s) for s in path.segments))

    def _check_parameters(
        self, gnode: GraphNode, graph_path: str, i: int, injectable: Injectable
    ) -> None:
        """Check the static parameters of node `i` of the graph at `graph_path` against the
        node type's parameters schema, leaving out bound fields.

        Required fields are checked only when nothing else can supply them: no edge binds
        them and no container injects parameters into the node.
        """
        spec = gnode.spec
        assert spec is not None
        params = gnode.node.parameters
        path = f"{graph_path}.nodes[{i}].parameters"
        checks = self._check_values(spec, params, path)
        if checks is None or not checks.required:
            return
        targets = [b.target for b in gnode.inputs]
        bound = {str(t.segments[0]) for t in targets if t.segments}
        whole = any(not t.segments for t in targets)
        if whole or _below(injectable, gnode.id):
            return
        for name in checks.required:
            if name not in params and name not in bound:
                self.issue(path, f"node type {spec.type!r} requires parameter {name!r} "
                                 "(set it, or bind it from an edge)")

    def _check_values(self, spec: NodeType, params: dict[str, Any], path: str) -> Any:
        """Check each given parameter against the node type's schema; the checks used
        (None when the schema names no properties: anything goes)."""
        checks = checks_for(spec)
        if checks is None:
            return None
        for key, value in params.items():
            if not checks.knows(key):
                self.issue(f"{path}.{key}", f"node type {spec.type!r} has no parameter "
                                            f"{key!r} (it takes {sorted(checks.properties)})")
                continue
            for where, reason in checks.errors(key, value):
                self.issue(f"{path}.{key}{where}", reason)
        return checks

    # --- edges and bindings ------------------------------------------------------------------

    def _edge_binding(
        self, wf: Workflow, index: dict[str, int], label: str,
        src: Node, src_port: Port, dst: Node, dst_port: Port, epath: str,
    ) -> DataBinding | None:
        assert src_port.binding is not None and dst_port.binding is not None
        try:
            source = parse_path(src_port.binding.path)
            src_scope = _scope(src_port.binding)
        except BindingPathError as exc:
            self.issue(f"{epath}.source.port", f"port {src_port.key!r} of {src.id!r}: {exc}")
            return None
        try:
            target = parse_path(dst_port.binding.path)
            dst_scope = _scope(dst_port.binding)
        except BindingPathError as exc:
            self.issue(f"{epath}.target.port", f"port {dst_port.key!r} of {dst.id!r}: {exc}")
            return None
        if target.root != "parameters":
            self.issue(f"{epath}.target.port", f"input port {dst_port.key!r} of {dst.id!r} "
                                               f"binds {target}, but inputs write parameters")
            return None
        source_node = src.id
        if src_scope is not None:
            resolved = self._resolve_scope(src_scope, src, wf, index, f"{epath}.source.port")
            if resolved is None:
                return None
            source_node, prefix = resolved
            # `@sub.#x` + `results.a` reads the container's results at x.a (x's results);
            # + `parameters.a` reads what the container injects into x at a
            source = BindingPath(source.root, (*prefix, *source.segments))
        if dst_scope is not None:
            resolved = self._resolve_scope(dst_scope, dst, wf, index, f"{epath}.target.port")
            if resolved is None:
                return None
            node_id, prefix = resolved
            if node_id != dst.id:
                self.issue(f"{epath}.target.port",
                           f"input port {dst_port.key!r} of {dst.id!r} is scoped to node "
                           f"{node_id!r}; an input can only write into its own node")
                return None
            target = BindingPath("parameters", (*prefix, *target.segments))
        cfg = dst.container_config
        if dst.is_container and cfg is not None and target.segments:
            definition = self.subgraphs.get(cfg.subgraph_id, (None, ""))[0]
            first = str(target.segments[0])
            if definition is not None and first not in {n.id for n in definition.nodes}:
                self.issue(f"{epath}.target.port",
                           f"input port {dst_port.key!r} of container {dst.id!r} writes "
                           f"{target}, but container parameters are keyed by node id of "
                           f"subgraph {cfg.subgraph_id!r}, which has no node {first!r}")
                return None
        return DataBinding(edge=label, source_node=source_node, source=source, target=target)

    def _resolve_scope(
        self, scope: ScopeRef, owner: Node, wf: Workflow | None, index: dict[str, int],
        path: str, *, quiet: bool = False,
    ) -> tuple[str, tuple[str, ...]] | None:
        """(node in this graph to read from or write to, path prefix inside its data)."""
        if quiet:
            self._quiet = True
            try:
                return self._resolve_scope(scope, owner, wf, index, path)
            finally:
                self._quiet = False
        if scope.kind == "local":
            if scope.node_id not in index:
                self.issue(path, f"scope '#{scope.node_id}' names no node of this graph")
                return None
            return scope.node_id, ()
        # subgraph scope: the owner must be a container whose subgraph starts the alias chain
        cfg = owner.container_config
        if not owner.is_container or cfg is None or cfg.subgraph_id != scope.aliases[0]:
            self.issue(path, f"scope '@{'.'.join(scope.aliases)}' must be on a port of the "
                             f"container that runs subgraph {scope.aliases[0]!r}")
            return None
        prefix: list[str] = []
        current = scope.aliases[0]
        for alias in scope.aliases[1:]:
            definition = self.subgraphs.get(current, (None, ""))[0]
            holders = [n.id for n in definition.nodes if n.is_container and n.container_config
                       and n.container_config.subgraph_id == alias] if definition else []
            if len(holders) != 1:
                self.issue(path, f"alias {alias!r} must be run by exactly one container of "
                                 f"subgraph {current!r} (found {holders})")
                return None
            prefix.append(holders[0])
            current = alias
        definition = self.subgraphs.get(current, (None, ""))[0]
        if scope.node_id is not None:
            if definition is None or scope.node_id not in {n.id for n in definition.nodes}:
                self.issue(path, f"subgraph {current!r} has no node {scope.node_id!r}")
                return None
            prefix.append(scope.node_id)
        return owner.id, tuple(prefix)

    def _check_cycles(
        self, upstream: dict[str, dict[str, None]], downstream: dict[str, list[str]], path: str
    ) -> None:
        indegree = {nid: len(ups) for nid, ups in upstream.items()}
        ready = [nid for nid, d in indegree.items() if d == 0]
        seen = 0
        while ready:
            nid = ready.pop()
            seen += 1
            for down in downstream[nid]:
                indegree[down] -= 1
                if indegree[down] == 0:
                    ready.append(down)
        if seen == len(upstream):
            return
        stuck = {nid for nid, d in indegree.items() if d > 0}
        cycle = _find_cycle(stuck, upstream)
        self.issue(f"{path}.edges", "cycle: " + " -> ".join(cycle))


def _find_cycle(stuck: set[str], upstream: dict[str, dict[str, None]]) -> list[str]:
    """One cycle among the nodes left over by Kahn's algorithm, as a closed walk."""
    start = min(stuck)
    walk, pos = [start], {start: 0}
    node = start
    while True:
        node = min(up for up in upstream[node] if up in stuck)
        if node in pos:
            cycle = [*walk[pos[node]:], node]
            return list(reversed(cycle))
        pos[node] = len(walk)
        walk.append(node)


def _scope(binding: Binding) -> ScopeRef | None:
    s = binding.scope
    if s is None:
        return scope_from_parts(binding.prefix, None, None, None)
    return scope_from_parts(s.prefix or binding.prefix, s.kind, s.subgraph_aliases, s.node_id)


def _split_msgspec(message: str) -> tuple[str, str]:
    """msgspec's `<reason> - at `$.a[0]`` as (`$.a[0]`, reason); `$` when it names no path."""
    m = _MSGSPEC_PATH.search(message)
    return (m.group(1), message[: m.start()]) if m else ("$", message)
