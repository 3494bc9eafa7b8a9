"""Tests for nodehost.validate: every rejection names the JSON path of what is wrong."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from builders import (
    CATALOG,
    compile_doc,
    container,
    edge,
    node,
    port,
    subgraph,
    workflow,
)
from nodehost.errors import Issue, WorkflowInvalid
from nodehost.model import StartRunRequest, Workflow
from nodehost.validate import (
    Limits,
    decode_with_raw,
    definition_hash,
    load_request,
    load_workflow,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def issues(doc: dict[str, Any], limits: Limits = Limits()) -> list[Issue]:
    """The issues a document is rejected with (fails the test if it is accepted)."""
    with pytest.raises(WorkflowInvalid) as info:
        compile_doc(doc, CATALOG, limits)
    return info.value.issues


def only(doc: dict[str, Any], limits: Limits = Limits()) -> Issue:
    found = issues(doc, limits)
    assert len(found) == 1, found
    return found[0]


def sleep(id: str, **params: Any) -> dict[str, Any]:
    return node(id, "demo.sleep", params)


# --- graph structure -----------------------------------------------------------------------------


def test_a_valid_document_compiles() -> None:
    """A chain with data bindings compiles, with dependencies in both directions."""
    doc = workflow(
        [node("a", outputs=[port("out", "results.x")]),
         node("b", inputs=[port("in", "parameters.y")])],
        [edge("a", "b", "out", "in")],
    )
    _, graph = compile_doc(doc)
    assert graph.entry == ("a",)
    assert graph.nodes["b"].upstream == ("a",)
    assert graph.nodes["a"].downstream == ("b",)
    assert str(graph.nodes["b"].inputs[0].target) == "/parameters/y"


def test_duplicate_node_id() -> None:
    """A second node with the same id is rejected at its own id."""
    issue = only(workflow([node("a"), node("b"), node("a")]))
    assert issue.path == "$.nodes[2].id"
    assert "duplicate node id 'a'" in issue.message and "$.nodes[0]" in issue.message


def test_duplicate_node_id_inside_a_subgraph() -> None:
    """Paths inside subgraph definitions are full paths from the document root."""
    doc = workflow([container("c", "s")], [], [subgraph("s", [node("x"), node("x")])])
    assert only(doc).path == "$.subgraphs[0].definition.nodes[1].id"


@pytest.mark.parametrize("end", ["source", "target"])
def test_edge_to_an_unknown_node(end: str) -> None:
    """An edge naming a node that does not exist is rejected at that end."""
    ends = {"source": "a", "target": "a", end: "ghost"}
    issue = only(workflow([node("a")], [edge(ends["source"], ends["target"])]))
    assert issue.path == f"$.edges[0].{end}.node"
    assert "'ghost'" in issue.message


def test_edge_to_an_unknown_port() -> None:
    """An edge naming a port the node does not declare is rejected, listing the ports."""
    doc = workflow(
        [node("a", outputs=[port("out", "results.x")]),
         node("b", inputs=[port("in", "parameters.x"), port("in2")])],
        [edge("a", "b", "out", "nope")],
    )
    issue = only(doc)
    assert issue.path == "$.edges[0].target.port"
    assert "no input port 'nope'" in issue.message and "['in', 'in2']" in issue.message


def test_edge_from_a_node_without_ports() -> None:
    """A source port on a node that declares no ports is rejected."""
    issue = only(workflow([node("a"), node("b")], [edge("a", "b", "out")]))
    assert issue.path == "$.edges[0].source.port"
    assert "declares none" in issue.message


def test_cycle_in_a_graph() -> None:
    """A cycle is rejected at the edges, naming the nodes on it in order."""
    doc = workflow([node("a"), node("b"), node("c"), node("d")],
                   [edge("a", "b"), edge("b", "c"), edge("c", "a"), edge("c", "d")])
    issue = only(doc)
    assert issue.path == "$.edges"
    assert issue.message == "cycle: a -> b -> c -> a"


def test_self_loop_is_a_cycle() -> None:
    """A node depending on itself is a cycle too."""
    assert only(workflow([node("a")], [edge("a", "a")])).message == "cycle: a -> a"


def test_cycle_inside_a_subgraph() -> None:
    """A cycle inside a subgraph is reported at that subgraph's edges."""
    doc = workflow([container("c", "s")], [],
                   [subgraph("s", [node("x"), node("y")], [edge("x", "y"), edge("y", "x")])])
    assert only(doc).path == "$.subgraphs[0].definition.edges"


def test_cycle_across_subgraphs() -> None:
    """Container A's subgraph holds a container that runs A's subgraph again."""
    doc = workflow(
        [container("A", "s1")], [],
        [subgraph("s1", [node("x"), container("B", "s2")]),
         subgraph("s2", [container("C", "s1")])],
    )
    issue = only(doc)
    assert issue.path == "$.subgraphs[1].definition.nodes[0].containerConfig.subgraphId"
    assert issue.message == "subgraph cycle: s1 -> s2 -> s1"


def test_subgraph_running_itself() -> None:
    """A subgraph with a container running that same subgraph is a cycle."""
    doc = workflow([container("A", "s")], [], [subgraph("s", [container("again", "s")])])
    issue = only(doc)
    assert issue.path == "$.subgraphs[0].definition.nodes[0].containerConfig.subgraphId"
    assert "s -> s" in issue.message


def test_nested_subgraph_definitions_are_found() -> None:
    """A subgraph defined inside another subgraph's definition can be used."""
    inner = subgraph("inner", [node("leaf")])
    doc = workflow([container("A", "outer")], [],
                   [subgraph("outer", [container("B", "inner")], [], [inner])])
    _, graph = compile_doc(doc)
    assert "leaf" in graph.nodes["A"].subgraph.nodes["B"].subgraph.nodes


def test_subgraph_definition_may_leave_out_id_version_and_metadata() -> None:
    """As in the seed, a subgraph definition without id, schemaVersion or metadata is fine."""
    doc = workflow([container("c", "s")], [],
                   [{"id": "s", "definition": {"nodes": [node("x")], "edges": []}}])
    _, graph = compile_doc(doc)
    assert graph.nodes["c"].subgraph.id == "s" and "x" in graph.nodes["c"].subgraph.nodes
    doc["subgraphs"][0]["definition"]["schemaVersion"] = "soon"
    with pytest.raises(WorkflowInvalid) as info:
        load_workflow(doc)
    assert info.value.issues[0].path == "$.subgraphs[0].definition.schemaVersion"


def test_container_with_a_missing_subgraph() -> None:
    """A container naming a subgraph that is not defined is rejected, listing those that are."""
    doc = workflow([container("c", "nope")], [], [subgraph("s", [node("x")])])
    issue = only(doc)
    assert issue.path == "$.nodes[0].containerConfig.subgraphId"
    assert "'nope' is not defined" in issue.message and "['s']" in issue.message


def test_container_without_container_config() -> None:
    """A workflow.container needs a containerConfig."""
    doc = workflow([{"id": "c", "type": "workflow.container"}])
    assert only(doc).path == "$.nodes[0].containerConfig"


def test_container_config_on_an_ordinary_node() -> None:
    """Only containers take a containerConfig."""
    doc = workflow([node("a", containerConfig={"subgraphId": "s"})])
    assert only(doc).path == "$.nodes[0].containerConfig"


def test_container_parameters_keyed_by_an_unknown_inner_node() -> None:
    """Container parameters are keyed by inner node id; an unknown key is rejected."""
    doc = workflow([container("c", "s", {"x": {}, "ghost": {}})], [],
                   [subgraph("s", [node("x")])])
    issue = only(doc)
    assert issue.path == "$.nodes[0].parameters.ghost"


def test_container_parameter_for_an_inner_node_must_be_an_object() -> None:
    """`{innerId: 5}` cannot be merged into inner parameters: rejected, not ignored."""
    doc = workflow([container("c", "s", {"x": 5})], [], [subgraph("s", [node("x")])])
    assert only(doc).path == "$.nodes[0].parameters.x"


def test_container_parameters_are_checked_against_the_inner_schema() -> None:
    """What a container gives an inner node must fit that node's declared parameters."""
    doc = workflow([container("c", "s", {"z": {"seconds": "soon"}})], [],
                   [subgraph("s", [node("z", "demo.sleep", {})])])
    issue = only(doc)
    assert issue.path == "$.nodes[0].parameters.z.seconds"
    assert issue.message == '"soon" is not of type "number"'


def test_container_input_must_write_into_an_inner_node() -> None:
    """A container input bound to `parameters.ghost` names no inner node: rejected."""
    doc = workflow(
        [node("a", outputs=[port("o", "results.v")]),
         container("c", "s", inputs=[port("i", "parameters.ghost.v")])],
        [edge("a", "c", "o", "i")], [subgraph("s", [node("x")])],
    )
    issue = only(doc)
    assert issue.path == "$.edges[0].target.port" and "'ghost'" in issue.message


@pytest.mark.parametrize("where", ["node", "subgraph"])
def test_ids_cannot_contain_the_task_id_separator(where: str) -> None:
    """`::` joins frame and node ids, so node and subgraph ids may not contain it."""
    if where == "node":
        doc = workflow([node("a::b")])
        path = "$.nodes[0].id"
    else:
        doc = workflow([container("c", "s::t")], [], [subgraph("s::t", [node("x")])])
        path = "$.subgraphs[0].id"
    issue = only(doc)
    assert issue.path == path and "'::'" in issue.message


def test_duplicate_subgraph_ids() -> None:
    """Two subgraphs with one id are rejected at the second."""
    doc = workflow([container("c", "s")], [],
                   [subgraph("s", [node("x")]), subgraph("s", [node("y")])])
    assert only(doc).path == "$.subgraphs[1].id"


def test_loop_condition_must_be_a_path() -> None:
    """A loop condition that is not a binding path is rejected at the condition."""
    loop = {"enabled": True, "maxIterations": 3, "condition": "nonsense.x"}
    doc = workflow([container("c", "s", loop=loop)], [], [subgraph("s", [node("x")])])
    assert only(doc).path == "$.nodes[0].containerConfig.loop.condition"


# --- packages, versions, types -------------------------------------------------------------------


def test_node_without_a_package() -> None:
    """An ordinary node needs a package."""
    doc = workflow([{"id": "a", "type": "demo.echo"}])
    assert only(doc).path == "$.nodes[0].package"


def test_unknown_package() -> None:
    """A package no plugin provides is rejected at package.name."""
    issue = only(workflow([node("a", package="acme")]))
    assert issue.path == "$.nodes[0].package.name"
    assert "'acme'" in issue.message


def test_unknown_version_lists_the_installed_ones() -> None:
    """An uninstalled version is rejected at package.version, listing what is installed."""
    issue = only(workflow([node("a"), node("b", version="9.9")]))
    assert issue.path == "$.nodes[1].package.version"
    assert "'9.9'" in issue.message and "['1.0.0', '1.1.0']" in issue.message


def test_unknown_type_lists_the_package_types() -> None:
    """A type the package version does not provide is rejected at type."""
    issue = only(workflow([node("a", "demo.nope", version="1.1.0")]))
    assert issue.path == "$.nodes[0].type"
    assert "demo.nope" in issue.message and "demo.sleep" in issue.message


def test_container_package_is_ignored() -> None:
    """A container's package, if given, is not looked up."""
    c = container("c", "s")
    c["package"] = {"name": "nobody", "version": "0"}
    compile_doc(workflow([c], [], [subgraph("s", [node("x")])]))


# --- parameters against the node's declared schema -----------------------------------------------


def test_parameter_of_the_wrong_type() -> None:
    """A parameter that fails the node's msgspec Struct is rejected at its own path."""
    issue = only(workflow([sleep("a", seconds="soon")]))
    assert issue.path == "$.nodes[0].parameters.seconds"
    assert issue.message == '"soon" is not of type "number"'


def test_parameter_error_deep_inside_a_value() -> None:
    """The path goes down into the value (a list item here)."""
    issue = only(workflow([node("a", "demo.sum", {"values": [1, "two"]})]))
    assert issue.path == "$.nodes[0].parameters.values[1]"


def test_unknown_parameter_when_the_struct_forbids_it() -> None:
    """A Struct with forbid_unknown_fields rejects extra parameters."""
    issue = only(workflow([sleep("a", seconds=1, bogus=2)]))
    assert issue.path == "$.nodes[0].parameters.bogus"


def test_missing_required_parameter() -> None:
    """A required parameter that nothing supplies is rejected."""
    issue = only(workflow([sleep("a")]))
    assert issue.path == "$.nodes[0].parameters"
    assert "requires parameter 'seconds'" in issue.message


def test_required_parameter_supplied_by_an_edge() -> None:
    """A required parameter bound from an upstream node need not be set statically."""
    doc = workflow(
        [node("a", outputs=[port("o", "results.n")]),
         node("b", "demo.sleep", {}, inputs=[port("i", "parameters.seconds")])],
        [edge("a", "b", "o", "i")],
    )
    compile_doc(doc)


def test_required_parameter_supplied_by_the_container() -> None:
    """Container parameters keyed by inner node id supply required parameters."""
    doc = workflow([container("c", "s", {"z": {"seconds": 1}})], [],
                   [subgraph("s", [node("z", "demo.sleep", {})])])
    compile_doc(doc)


def test_required_parameter_supplied_through_a_nested_scope() -> None:
    """A container input scoped `@outer.inner.#z` supplies z two levels down."""
    doc = workflow(
        [node("src", outputs=[port("o", "results.n")]),
         container("c", "outer", inputs=[
             port("i", "parameters.seconds", prefix="@outer.inner.#z")])],
        [edge("src", "c", "o", "i")],
        [subgraph("outer", [container("mid", "inner")]),
         subgraph("inner", [node("z", "demo.sleep", {})])],
    )
    _, graph = compile_doc(doc)
    assert str(graph.nodes["c"].inputs[0].target) == "/parameters/mid/z/seconds"


def test_subgraph_parameters_are_checked() -> None:
    """Parameters inside subgraphs are checked too, with full paths."""
    doc = workflow([container("c", "s")], [],
                   [subgraph("s", [sleep("x", seconds=1), sleep("y", seconds=[])])])
    assert only(doc).path == "$.subgraphs[0].definition.nodes[1].parameters.seconds"


def test_a_subgraph_used_twice_reports_its_problems_once() -> None:
    """Two containers running one broken subgraph give one issue, not two."""
    doc = workflow([container("c1", "s"), container("c2", "s")], [],
                   [subgraph("s", [sleep("x", seconds="x")])])
    assert len(issues(doc)) == 1


# --- bindings and scopes -------------------------------------------------------------------------


def test_malformed_binding_path() -> None:
    """A port binding that is not a path is rejected at the edge end that uses it."""
    doc = workflow([node("a", outputs=[port("o", "results[x")]),
                    node("b", inputs=[port("i", "parameters.y")])],
                   [edge("a", "b", "o", "i")])
    assert only(doc).path == "$.edges[0].source.port"


def test_input_binding_must_write_parameters() -> None:
    """An input port bound to `results` is rejected."""
    doc = workflow([node("a", outputs=[port("o", "results.x")]),
                    node("b", inputs=[port("i", "results.y")])],
                   [edge("a", "b", "o", "i")])
    issue = only(doc)
    assert issue.path == "$.edges[0].target.port" and "inputs write parameters" in issue.message


def test_local_scope_to_an_unknown_node() -> None:
    """`#ghost` on a port is rejected, not dropped."""
    doc = workflow([node("a", outputs=[port("o", "results.x", prefix="#ghost")]),
                    node("b", inputs=[port("i", "parameters.y")])],
                   [edge("a", "b", "o", "i")])
    issue = only(doc)
    assert issue.path == "$.edges[0].source.port" and "'#ghost'" in issue.message


def test_input_scoped_to_another_node() -> None:
    """An input port may only write into its own node."""
    doc = workflow([node("a", outputs=[port("o", "results.x")]),
                    node("b", inputs=[port("i", "parameters.y", prefix="#a")])],
                   [edge("a", "b", "o", "i")])
    assert only(doc).path == "$.edges[0].target.port"


def test_subgraph_scope_on_a_node_that_is_no_container() -> None:
    """`@alias.#node` only makes sense on the container that runs that subgraph."""
    doc = workflow(
        [node("a", outputs=[port("o", "results.x", prefix="@s.#x")]),
         node("b", inputs=[port("i", "parameters.y")]), container("c", "s")],
        [edge("a", "b", "o", "i")], [subgraph("s", [node("x")])],
    )
    issue = only(doc)
    assert issue.path == "$.edges[0].source.port" and "@s" in issue.message


def test_subgraph_scope_to_an_unknown_inner_node() -> None:
    """`@s.#ghost` is rejected when subgraph s has no node ghost."""
    doc = workflow(
        [container("c", "s", outputs=[port("o", "results.v", prefix="@s.#ghost")]),
         node("b", inputs=[port("i", "parameters.y")])],
        [edge("c", "b", "o", "i")], [subgraph("s", [node("x")])],
    )
    issue = only(doc)
    assert issue.path == "$.edges[0].source.port" and "'ghost'" in issue.message


def test_structured_scope_is_resolved() -> None:
    """A structured `scope {kind, subgraphAliases, nodeId}` resolves like a prefix."""
    scope = {"kind": "subgraph", "subgraphAliases": ["s"], "nodeId": "x"}
    doc = workflow(
        [container("c", "s", outputs=[port("o", "results.v", scope=scope)]),
         node("b", inputs=[port("i", "parameters.y")])],
        [edge("c", "b", "o", "i")], [subgraph("s", [node("x")])],
    )
    _, graph = compile_doc(doc)
    assert str(graph.nodes["b"].inputs[0].source) == "/results/x/v"


def test_invalid_scope_prefix() -> None:
    """A prefix that is neither `#node` nor `@alias...` is rejected."""
    doc = workflow([node("a", outputs=[port("o", "results.x", prefix="x y")]),
                    node("b", inputs=[port("i", "parameters.y")])],
                   [edge("a", "b", "o", "i")])
    assert only(doc).path == "$.edges[0].source.port"


# --- decoding ------------------------------------------------------------------------------------


def test_invalid_json() -> None:
    """Bytes that are not JSON are rejected at `$`."""
    with pytest.raises(WorkflowInvalid) as info:
        load_workflow(b'{"id": ')
    [issue] = info.value.issues
    assert issue.path == "$" and issue.message.startswith("not valid JSON")


def test_document_over_the_size_limit() -> None:
    """A document over max_document_bytes is refused before it is parsed."""
    body = json.dumps(workflow([node("a", params={"pad": "x" * 500})])).encode()
    with pytest.raises(WorkflowInvalid) as info:
        load_workflow(body, Limits(max_document_bytes=200))
    [issue] = info.value.issues
    assert issue.path == "$" and f"{len(body)} bytes" in issue.message and "200" in issue.message
    load_workflow(body, Limits(max_document_bytes=len(body)))


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (lambda d: d["nodes"][0].update(id=5), "$.nodes[0].id", "Expected `str`, got `int`"),
        (lambda d: d["nodes"][0].update(timeoutSeconds=-1), "$.nodes[0].timeoutSeconds",
         "Expected `float` > 0.0"),
        (lambda d: d.update(nodes=[]), "$.nodes", "Expected `array` of length >= 1"),
        (lambda d: d.pop("schemaVersion"), "$", "Object missing required field `schemaVersion`"),
        (lambda d: d["edges"].append({"source": {"node": "a"}, "target": {"node": 1}}),
         "$.edges[0].target.node", "Expected `str`, got `int`"),
        (lambda d: d["nodes"][0].update(retry={"maxAttempts": 0}),
         "$.nodes[0].retry.maxAttempts", "Expected `int` >= 1"),
    ],
)
def test_wrong_field_types_name_the_path(change: Any, path: str, message: str) -> None:
    """A field of ours with a wrong type or value is rejected with msgspec's path."""
    doc = workflow([node("a")])
    change(doc)
    for data in (doc, json.dumps(doc)):
        with pytest.raises(WorkflowInvalid) as info:
            load_workflow(data)
        [issue] = info.value.issues
        assert (issue.path, issue.message) == (path, message)


def test_request_paths_start_at_the_request() -> None:
    """In a StartRunRequest the path goes through `workflow`."""
    with pytest.raises(WorkflowInvalid) as info:
        load_request({"workflow": workflow([{**node("a"), "id": 3}]), "clientId": "c"})
    assert info.value.issues[0].path == "$.workflow.nodes[0].id"


def test_several_problems_are_reported_at_once() -> None:
    """Every problem is listed, each with its own path."""
    doc = workflow(
        [node("a"), node("a"), node("b", package="acme"), sleep("c", seconds="x"),
         container("d", "missing")],
        [edge("a", "ghost")],
    )
    found = issues(doc)
    assert sorted(i.path for i in found) == [
        "$.edges[0].target.node",
        "$.nodes[1].id",
        "$.nodes[2].package.name",
        "$.nodes[3].parameters.seconds",
        "$.nodes[4].containerConfig.subgraphId",
    ]
    text = str(WorkflowInvalid(found))
    assert "5 problem(s)" in text and "$.nodes[2].package.name: " in text


def test_node_limit_counts_every_container_use() -> None:
    """A subgraph counts once per container running it, against max_nodes."""
    doc = workflow([container(f"c{i}", "s") for i in range(3)], [],
                   [subgraph("s", [node("x"), node("y")])])
    compile_doc(doc, limits=Limits(max_nodes=9))
    issue = only(doc, Limits(max_nodes=8))
    assert issue.path == "$" and "more than 8 nodes" in issue.message


def test_exponential_expansion_is_stopped_early() -> None:
    """Ten containers per level, ten levels deep: refused quickly, not expanded 10^10 times."""
    subs = [subgraph(f"s{k}", [container(f"c{i}", f"s{k + 1}") for i in range(10)])
            for k in range(10)]
    subs.append(subgraph("s10", [node("leaf")]))
    doc = workflow([container("top", "s0")], [], subs)
    started = time.perf_counter()
    issue = only(doc, Limits(max_nodes=10_000))
    assert time.perf_counter() - started < 5
    assert "more than 10000 nodes" in issue.message


def test_nesting_depth_limit() -> None:
    """Containers nested deeper than max_depth are rejected."""
    subs = [subgraph(f"s{k}", [container("c", f"s{k + 1}")]) for k in range(4)]
    subs.append(subgraph("s4", [node("leaf")]))
    doc = workflow([container("top", "s0")], [], subs)
    compile_doc(doc, limits=Limits(max_depth=5))
    assert "deeper than 4" in only(doc, Limits(max_depth=4)).message


# --- unknown fields and the definition hash ------------------------------------------------------


def _ui_heavy_doc() -> dict[str, Any]:
    a = node("a", outputs=[port("o", "results.x")], position={"x": 10, "y": 20},
             previewImage="data:image/png;base64,AAAA")
    a["ui"]["widgets"] = [{"kind": "slider"}]
    return workflow([a, node("b", inputs=[port("i", "parameters.y")])],
                    [edge("a", "b", "o", "i")], futureField={"v": 2})


def test_unknown_fields_are_kept_not_rejected() -> None:
    """UI-only and unknown fields decode fine and the raw document keeps them as sent."""
    doc = _ui_heavy_doc()
    body = json.dumps(doc).encode()
    wf, raw = decode_with_raw(body, Workflow)
    assert isinstance(wf, Workflow) and [n.id for n in wf.nodes] == ["a", "b"]
    assert raw == doc
    assert raw["nodes"][0]["position"] == {"x": 10, "y": 20}
    request, raw_req = decode_with_raw({"workflow": doc, "clientId": "c", "x": 1},
                                       StartRunRequest)
    assert request.client_id == "c" and raw_req["workflow"]["futureField"] == {"v": 2}
    compile_doc(doc)


def test_unknown_field_with_our_name_must_have_our_type() -> None:
    """An unknown-looking field that collides with ours is checked (here `retry`)."""
    doc = workflow([node("a", retry="3 times")])
    with pytest.raises(WorkflowInvalid) as info:
        decode_with_raw(doc, Workflow)
    assert info.value.issues[0].path == "$.nodes[0].retry"


def test_definition_hash_is_stable_under_key_order() -> None:
    """Reordering keys (at any depth) does not change the hash; changing a value does."""
    doc = workflow([node("a", params={"k": 1, "m": {"p": 1, "q": 2}}), node("b")],
                   [edge("a", "b")])

    def reorder(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reorder(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reorder(v) for v in value]
        return value

    flipped = reorder(doc)
    assert json.dumps(flipped) != json.dumps(doc)
    h = definition_hash(load_workflow(json.dumps(doc)))
    assert h == definition_hash(load_workflow(json.dumps(flipped)))
    assert len(h) == 64 and int(h, 16) >= 0
    doc["nodes"][0]["parameters"]["m"]["q"] = 3
    assert definition_hash(load_workflow(doc)) != h


@pytest.mark.parametrize(("example", "expected"), [
    ("container.json", "d02d1f7f9d83b4be98e5be305978d5a6604af4182948460e559cb628d400b6d7"),
    ("data-along-edges.json", "f774cc8aa644e90eb7566f85287b07f3049d9606803b99612211ddb2236ca52e"),
    ("failing-branch.json", "85b9ed377fd22e23bbeed8a72a616037578a33da37dc488c00c0be3d1cc7bdc2"),
])
def test_definition_hash_of_the_examples_never_changes(example: str, expected: str) -> None:
    """The hash clients and the journal hold for a document stays the same across releases
    (sha256 of the canonical JSON: sorted keys, compact). The documents are the examples as
    they were when the hashes were first pinned (tests/fixtures/hash_examples)."""
    doc = json.loads((Path(__file__).parent / "fixtures" / "hash_examples" / example)
                     .read_text())
    wf = load_request(doc).workflow if "workflow" in doc else load_workflow(doc)
    assert definition_hash(wf) == expected


def test_definition_hash_ignores_ui_only_fields() -> None:
    """Moving a node on the canvas (position, preview image) does not change the hash."""
    doc = _ui_heavy_doc()
    h = definition_hash(load_workflow(doc))
    doc["nodes"][0]["position"] = {"x": 99, "y": 0}
    doc["nodes"][0]["previewImage"] = "data:image/png;base64,BBBB"
    assert definition_hash(load_workflow(doc)) == h
