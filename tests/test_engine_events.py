"""Tests for the envelopes the engine emits: order, ids, scope, payloads, deltas, cost."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import pytest

import nodehost.engine as engine_module
from builders import (
    Driver,
    Fail,
    chain,
    container,
    edge,
    node,
    subgraph,
    workflow,
)
from nodehost.events import EVENT_TYPES, Envelope, NodeState, sse_frame
from nodehost.reports import Artifact, Chunk, Metric, Partial, Progress

C = "wf::c::s"


def wire(envelope: Envelope) -> Any:
    """An envelope's data as a client decodes it."""
    return msgspec.json.decode(msgspec.json.encode(envelope.data))


def stamp(when: datetime | None) -> str | None:
    """A timestamp as it is on the wire."""
    return msgspec.json.decode(msgspec.json.encode(when))


def ids(envelopes: list[Envelope]) -> list[int]:
    return [int(e.id) for e in envelopes]


def trace(d: Driver) -> list[tuple[str, str | None, str | None]]:
    """(type, taskId, status) of every envelope, in order."""
    return [(e.type, getattr(e.data, "task_id", None), getattr(e.data, "status", None))
            for e in d.envelopes]


def test_every_transition_emits_in_order() -> None:
    """A two-node chain: the exact envelopes, numbered 1, 2, 3... in the order of changes."""
    d = Driver()
    d.submit(workflow([node("a"), node("b")], chain("a", "b")))
    d.complete("a", {"v": 1})
    d.complete("b")
    assert trace(d) == [
        ("run.status", None, "queued"),
        ("run.snapshot", None, None),
        ("run.status", None, "running"),
        ("node.state", "a", "running"),
        ("node.state", "a", "succeeded"),
        ("node.result.snapshot", "a", None),
        ("node.state", "b", "running"),
        ("node.state", "b", "succeeded"),
        ("node.result.snapshot", "b", None),
        ("run.status", None, "succeeded"),
        ("run.snapshot", None, None),
    ]
    assert ids(d.envelopes) == list(range(1, len(d.envelopes) + 1))
    assert {e.type for e in d.envelopes} == set(EVENT_TYPES) - {"node.result.delta", "stream.reset"}


def test_scope_names_tenant_run_and_client_session() -> None:
    """Every envelope is scoped {tenant, runId, clientSessionId = clientId}."""
    d = Driver()
    run = d.submit(workflow([node("a")]), client_id="dash-7", tenant="acme")
    d.run()
    for e in d.envelopes:
        assert e.version == "v1"
        assert msgspec.to_builtins(e.scope) == {
            "tenant": "acme", "runId": run.run_id, "clientSessionId": "dash-7"}
        data = msgspec.to_builtins(e.data)  # as on the wire
        assert data["kind"] == e.type and data.get("runId", run.run_id) == run.run_id


def test_payload_shapes() -> None:
    """The data of each type carries the seed's fields."""
    d = Driver()
    run = d.submit(workflow([node("a")]))
    d.complete("a", {"answer": 42})
    status = wire(d.events("run.status")[-1])
    assert status["status"] == "succeeded"
    assert status["startedAt"] == stamp(run.started_at)
    assert status["finishedAt"] == stamp(run.finished_at)
    snapshot = wire(d.events("run.snapshot")[-1])
    assert "nodes" not in snapshot["run"] and snapshot["run"]["runId"] == run.run_id
    assert [(n["nodeId"], n["status"], n["result"]) for n in snapshot["nodes"]] == [
        ("a", "succeeded", {"answer": 42})]
    state = wire(d.events("node.state", "a")[-1])
    assert state["nodeId"] == "a" and state["state"]["stage"] == "succeeded"
    assert state["state"]["lastUpdatedAt"] == stamp(d.now)
    result = wire(d.events("node.result.snapshot", "a")[-1])
    assert result["revision"] == 1 and result["format"] == "json"
    assert result["content"] == {"answer": 42} and result["artifacts"] == []
    assert result["complete"] is True


def test_failure_events_carry_the_error() -> None:
    """A failed node's node.state has the error; the skipped one has the reason."""
    d = Driver()
    d.on("a", Fail("broken", code="E.X"))
    d.submit(workflow([node("a"), node("b")], chain("a", "b")))
    d.run()
    failed = wire(d.events("node.state", "a")[-1])
    assert failed["status"] == "failed"
    assert failed["state"]["error"] == {"code": "E.X", "message": "broken"}
    assert d.events("node.result.snapshot", "a")[-1].data.summary == "broken"
    skipped = wire(d.events("node.state", "b")[-1])
    assert skipped["status"] == "skipped"
    assert skipped["state"]["message"] == "upstream 'a' failed"
    assert d.events("run.status")[-1].data.reason == "node a failed: broken"


def test_retry_is_visible_in_node_state() -> None:
    """A failed attempt with retries left shows as queued/retrying with its error."""
    d = Driver()
    d.submit(workflow([node("a", retry={"maxAttempts": 2})]))
    d.fail("a", "flaky")
    retrying = [e.data for e in d.events("node.state", "a")][1]
    assert retrying.status == "queued" and retrying.state.stage == "retrying"
    assert retrying.state.error is not None and retrying.state.error.message == "flaky"
    assert d.stages("a") == ["running", "queued", "running"]
    assert [e.data.attempt for e in d.events("node.state", "a")] == [1, 1, 2]


def test_subgraph_nodes_and_containers_publish_events() -> None:
    """Nodes at every depth emit node.state and result snapshots; containers too."""
    d = Driver()
    d.submit(workflow(
        [container("outer", "s1")], [],
        [subgraph("s1", [container("mid", "s2")]), subgraph("s2", [node("q")])]))
    d.run()
    q = "wf::outer::s1::mid::s2::q"
    for task_id in ("outer", "wf::outer::s1::mid", q):
        assert d.stages(task_id) == ["running", "succeeded"], task_id
        [snap] = d.events("node.result.snapshot", task_id)
        assert snap.data.complete is True
    assert d.events("node.state", q)[0].data.node_id == "q"
    assert ids(d.envelopes) == list(range(1, len(d.envelopes) + 1))
    # a parent finishes after its child in the event order
    last = {e.data.task_id: int(e.id) for e in d.events("node.state")}
    assert last[q] < last["wf::outer::s1::mid"] < last["outer"]


def test_snapshots_list_nodes_at_every_depth() -> None:
    """The final run.snapshot lists inner nodes with their frame."""
    d = Driver()
    d.submit(workflow([container("c", "s")], [], [subgraph("s", [node("x")])]))
    d.run()
    snapshot = msgspec.to_builtins(d.events("run.snapshot")[-1].data)
    nodes = {n["taskId"]: n for n in snapshot["nodes"]}
    assert set(nodes) == {"c", f"{C}::x"}
    assert nodes[f"{C}::x"]["metadata"]["__frame"]["containerNodeId"] == "c"


def test_deltas_share_one_sequence_per_revision() -> None:
    """Chunk and partial deltas count 1, 2, 3... together; revision = attempt."""
    d = Driver()
    d.submit(workflow([node("a", retry={"maxAttempts": 2})]))
    first = d.attempt("a").dispatch_id
    assert d.report(first, Chunk("log", "hello"))
    assert d.report(first, Partial({"boxes": [1], "count": 1}))
    assert d.report(first, Chunk("stdout", None, b"\x00\x01", "application/octet-stream", True,
                                 {"k": "v"}))
    d.fail("a")
    second = d.attempt("a").dispatch_id
    d.report(second, Partial({"count": 2}))
    d.report(second, Chunk("log", "again"))
    deltas = [wire(x) for x in d.events("node.result.delta")]
    assert [(x["revision"], x["sequence"]) for x in deltas] == [
        (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2)]
    log, boxes, count, raw = deltas[:4]
    assert (log["operation"], log["path"]) == ("append", "/channels/log")
    assert log["payload"] == {"text": "hello"} and log["chunkMeta"] == {"channel": "log"}
    assert log["terminal"] is False
    assert (boxes["operation"], boxes["path"], boxes["payload"]) == (
        "replace", "/boxes", {"value": [1]})
    assert count["path"] == "/count"
    assert raw["path"] == "/channels/stdout" and raw["terminal"] is True
    assert raw["payload"] == {"data": "AAE=", "mimeType": "application/octet-stream"}
    assert raw["chunkMeta"] == {"channel": "stdout", "metadata": {"k": "v"}}


def test_chunk_channel_is_escaped_in_the_path() -> None:
    """A channel name is one pointer segment: `/` and `~` are escaped."""
    d = Driver()
    d.submit(workflow([node("a")]))
    d.report(d.attempt("a").dispatch_id, Chunk("llm/tokens~", "t", None, None, False, None))
    assert d.events("node.result.delta")[0].data.path == "/channels/llm~1tokens~0"


def test_progress_emits_node_state() -> None:
    """Progress reports show in node.state with stage, progress and message."""
    d = Driver()
    d.submit(workflow([node("a")]))
    d.report(d.attempt("a").dispatch_id, Progress(0.25, "loading", "model 1/4"))
    state = d.events("node.state", "a")[-1].data.state
    assert state == NodeState(stage="loading", progress=0.25, message="model 1/4",
                              last_updated_at=d.now)


def test_every_envelope_encodes_as_an_sse_frame() -> None:
    """Envelopes (errors and timestamps included) encode to a three-line SSE frame."""
    d = Driver()
    d.on("b", Fail())
    d.submit(workflow([container("c", "s"), node("b"), node("z")], [edge("b", "z")],
                      [subgraph("s", [node("x")])]))
    d.report(d.attempt(f"{C}::x").dispatch_id, Chunk("log", "x", None, None, False, None))
    d.run()
    for envelope in d.envelopes:
        frame = sse_frame(envelope)
        head, _event, data, blank = frame.split(b"\n", 3)
        assert head == b"id: " + envelope.id.encode() and blank == b"\n"
        decoded = msgspec.json.decode(data.removeprefix(b"data: "))
        assert decoded["type"] == envelope.type and decoded["data"]["kind"] == envelope.type


def test_event_ids_continue_from_the_given_sequence() -> None:
    """Engine(event_seq=N) numbers its first envelope N + 1."""
    d = Driver(event_seq=41)
    d.submit(workflow([node("a")]))
    assert d.envelopes[0].id == "42"
    assert d.engine.event_seq == int(d.envelopes[-1].id)


# --- per-event cost does not grow with the run ---------------------------------------------------


def wide(n: int) -> dict[str, Any]:
    """n independent nodes n0000, n0001, ... (same id lengths for every n)."""
    return workflow([node(f"n{i:04d}") for i in range(n)])


def sizes(n: int) -> dict[str, int]:
    d = Driver()
    d.submit(wide(n), run_id="run-fixed")
    attempt = d.attempt("n0000").dispatch_id
    start = len(d.envelopes)
    d.report(attempt, Progress(0.5, None, "half"))
    d.report(attempt, Chunk("log", "line", None, None, False, None))
    d.report(attempt, Partial({"k": 1}))
    d.complete("n0000", {"k": 2})
    # the id (the daemon-wide sequence) is the only field allowed to differ
    return {e.type + str(i): len(msgspec.json.encode(msgspec.structs.replace(e, id="0")))
            for i, e in enumerate(d.envelopes[start:])}


def test_event_size_does_not_grow_with_the_run() -> None:
    """node.state and delta envelopes are as big for a 5,000-node run as for a 10-node one."""
    small, big = sizes(10), sizes(5_000)
    assert small == big
    assert {k.rstrip("0123456789") for k in small} == {
        "node.state", "node.result.delta", "node.result.snapshot"}


def test_only_submit_and_finish_build_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress, chunks, partials, dispatch and completion never summarise the whole run."""
    calls: list[str] = []
    real = engine_module.run_summary

    def counting(run: Any, **kw: Any) -> Any:
        calls.append(run.run_id)
        return real(run, **kw)

    monkeypatch.setattr(engine_module, "run_summary", counting)
    d = Driver()
    d.submit(wide(50), run_id="r")
    assert len(calls) == 1
    for i in range(49):
        task_id = f"n{i:04d}"
        attempt = d.attempt(task_id).dispatch_id
        d.report(attempt, Progress(0.5, None, None))
        d.report(attempt, Chunk("log", "x", None, None, False, None))
        d.report(attempt, Partial({"p": 1}))
        d.complete(task_id)
    assert len(calls) == 1
    d.complete("n0049")
    assert len(calls) == 2 and d.events("run.snapshot")[-1].data.run.status == "succeeded"


def test_published_envelopes_do_not_change_afterwards() -> None:
    """An envelope's data is never mutated by later changes of the run."""
    d = Driver()
    d.submit(workflow([node("a", retry={"maxAttempts": 2})]))
    first = d.attempt("a").dispatch_id
    d.report(first, Artifact({"resourceId": "r1", "type": "file"}))
    d.fail("a")
    encoded = [msgspec.json.encode(e) for e in d.envelopes]
    second = d.attempt("a").dispatch_id
    d.report(second, Artifact({"resourceId": "r2", "type": "file"}))
    d.report(second, Partial({"x": 1}))
    d.complete("a", {"y": 2})
    assert [msgspec.json.encode(e) for e in d.envelopes[: len(encoded)]] == encoded


def test_the_final_snapshot_carries_what_the_node_reported() -> None:
    """Metrics, artifacts and partial results reported during the attempt are in the final
    run.snapshot as a client receives it, the partial merged under the result."""
    d = Driver()
    d.submit(workflow([node("a")]))
    dispatch_id = d.attempt("a").dispatch_id
    assert d.report(dispatch_id, Metric("items", 3))
    assert d.report(dispatch_id, Metric("bytes", 10))
    assert d.report(dispatch_id, Artifact({"resourceId": "r1", "type": "text/plain"}))
    assert d.report(dispatch_id, Artifact({"resourceId": "r2", "type": "image/png"}))
    assert d.report(dispatch_id, Partial({"boxes": [1]}))
    assert d.report(dispatch_id, Partial({"count": 1}))
    d.complete("a", {"done": True})
    [last] = msgspec.json.decode(msgspec.json.encode(d.events("run.snapshot")[-1].data))["nodes"]
    assert last["metadata"]["metrics"] == {"items": 3.0, "bytes": 10.0}
    assert [a["resourceId"] for a in last["artifacts"]] == ["r1", "r2"]
    assert last["result"] == {"boxes": [1], "count": 1, "done": True}
