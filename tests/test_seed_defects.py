"""One regression test per seed defect that DESIGN.md says nodehost must not have.

(The cursor that restarts from page one belongs to the HTTP layer, not to these modules.)
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import nodehost.engine as engine_module
from builders import (
    CATALOG,
    Driver,
    Fail,
    chain,
    compile_doc,
    container,
    edge,
    node,
    port,
    subgraph,
    workflow,
)
from nodehost.bus import EventBus
from nodehost.engine import Engine
from nodehost.errors import WorkflowInvalid
from nodehost.events import Envelope, NodeStateEvent, RunStatusEvent
from nodehost.reports import Chunk, Partial, Progress

C = "wf::c::s"


def test_node_requeued_after_a_timeout_can_never_be_dispatched_again() -> None:
    """A node requeued after a timeout that can never be dispatched again."""
    d = Driver()
    run = d.submit(workflow([node("a", timeoutSeconds=1, retry={"maxAttempts": 3,
                                                                 "backoffSeconds": 1})]))
    d.fire(kind="timeout")
    assert run.tasks["a"].status == "queued"
    d.fire(kind="retry")
    assert d.attempt("a").attempt == 2  # dispatched again, by the engine's own Ready
    d.complete("a")
    assert run.status == "succeeded"


def test_downstream_nodes_dispatched_after_an_upstream_failed_or_left_queued() -> None:
    """Downstream nodes dispatched after an upstream failed, or left queued for ever."""
    d = Driver()
    d.on("a", Fail())
    run = d.submit(workflow([node("a"), node("b"), node("c"), node("x")],
                            [*chain("a", "b", "c")]))
    d.run(timers=True)
    assert d.dispatched_ids() == ["a", "x"]
    assert run.tasks["b"].status == "skipped" and run.tasks["c"].status == "skipped"
    assert not any(t.status == "queued" for t in run.tasks.values())
    assert run.final


def test_break_that_stops_collecting_ready_nodes_after_a_container_starts() -> None:
    """A `break` that stops collecting ready nodes after a container starts."""
    d = Driver()
    doc = workflow(
        [node("first"), container("c1", "s"), node("n1"), container("c2", "s"), node("n2"),
         node("later1"), container("later_c", "s"), node("later2")],
        [edge("first", "later1"), edge("first", "later_c"), edge("first", "later2")],
        [subgraph("s", [node("x")])],
    )
    run = d.submit(doc)
    assert sorted(d.running_ids()) == sorted(
        ["first", "wf::c1::s::x", "n1", "wf::c2::s::x", "n2"])
    d.complete("first")
    assert {"later1", "wf::later_c::s::x", "later2"} <= set(d.running_ids())
    d.run()
    assert run.status == "succeeded"


def test_nodes_inside_subgraphs_publishing_no_events() -> None:
    """Nodes inside subgraphs publishing no events."""
    d = Driver()
    d.submit(workflow([container("c", "s")], [], [subgraph("s", [node("x")])]))
    attempt = d.attempt(f"{C}::x").dispatch_id
    d.report(attempt, Progress(0.5, None, None))
    d.report(attempt, Chunk("llm", "token", None, None, False, None))
    d.run()
    inner = {e.type for e in d.envelopes if getattr(e.data, "task_id", None) == f"{C}::x"}
    assert inner == {"node.state", "node.result.snapshot", "node.result.delta"}
    assert d.stages("c") == ["running", "succeeded"]


def test_nested_frames_that_never_complete_their_parent() -> None:
    """Nested frames that never complete their parent."""
    d = Driver()
    run = d.submit(workflow(
        [container("a", "s1")], [],
        [subgraph("s1", [container("b", "s2")]), subgraph("s2", [container("c", "s3")]),
         subgraph("s3", [node("leaf")])]))
    [leaf] = d.running_ids()
    assert leaf == "wf::a::s1::b::s2::c::s3::leaf"
    d.complete(leaf)
    assert run.status == "succeeded"
    assert {t.status for t in run.tasks.values()} == {"succeeded"}


@pytest.mark.parametrize("feature", ["retry", "timeout", "loop"])
def test_container_retry_timeout_loop_ignored(feature: str) -> None:
    """Container retry/timeout/loop ignored."""
    d = Driver()
    config: dict[str, Any] = {
        "retry": {"retry": (2, 0)},
        "timeout": {"timeout": 5},
        "loop": {"loop": {"enabled": True, "maxIterations": 2}},
    }[feature]
    run = d.submit(workflow([container("c", "s", **config)], [], [subgraph("s", [node("x")])]))
    if feature == "retry":
        d.fail(f"{C}::x")
        d.complete(f"{C}::x")
        assert run.status == "succeeded" and len(d.dispatches) == 2
    elif feature == "timeout":
        d.fire(kind="timeout")
        assert run.tasks["c"].error.code == "E.TIMEOUT" and run.status == "failed"
    else:
        d.run()
        assert len(d.dispatches) == 2 and run.status == "succeeded"


def test_the_whole_run_deep_copied_on_every_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole run deep-copied on every event under one global lock."""
    summaries: list[int] = []
    copied: list[int] = []
    real_summary, real_copy = engine_module.run_summary, engine_module._copy
    monkeypatch.setattr(engine_module, "run_summary",
                        lambda run, **kw: summaries.append(1) or real_summary(run, **kw))
    monkeypatch.setattr(engine_module, "_copy",
                        lambda value: copied.append(1) or real_copy(value))
    d = Driver()
    d.submit(workflow([node(f"n{i}", params={"blob": "x" * 1000}) for i in range(2_000)]))
    summaries.clear()
    copied.clear()
    attempt = d.attempt("n0").dispatch_id
    for i in range(100):
        d.report(attempt, Progress(i / 100, None, None))
        d.report(attempt, Chunk("log", "line", None, None, False, None))
        d.report(attempt, Partial({"i": i}))
    assert summaries == [] and copied == []


def test_events_published_out_of_order() -> None:
    """Events published out of order."""
    delivered: list[Envelope] = []
    seen: list[tuple[int, bool]] = []

    class Checked(Engine):
        """Checks, as each command's envelopes are handed over (once it is applied), that
        the last word of each about a node or the run is that node's or run's state."""

        def apply(self, command: Any) -> bool:
            start = len(delivered)
            accepted = super().apply(command)
            last: dict[tuple[str, str | None], Envelope] = {}
            for envelope in delivered[start:]:
                data = envelope.data
                key = (envelope.scope.run_id or "", getattr(data, "task_id", None))
                if isinstance(data, NodeStateEvent | RunStatusEvent):
                    last[key] = envelope
            for envelope in delivered[start:]:
                run = self.runs.get(envelope.scope.run_id or "")
                data = envelope.data
                ok = True
                if last.get((envelope.scope.run_id or "", getattr(data, "task_id", None))) \
                        is envelope and run is not None:
                    if isinstance(data, NodeStateEvent):
                        ok = run.tasks[data.task_id].status == data.status
                    elif isinstance(data, RunStatusEvent):
                        ok = run.status == data.status
                seen.append((int(envelope.id), ok))
            return accepted

    d = Driver()
    d.engine = Checked(compile=d.documents, sink=delivered.append, now=lambda: d.now)
    d.on("b", Fail())
    doc = workflow([node("a"), node("b", retry={"maxAttempts": 2}), container("c", "s")],
                   [edge("a", "b")], [subgraph("s", [node("x"), node("y")], chain("x", "y"))])
    d.submit(doc)
    d.submit(doc)
    d.run()
    assert [i for i, _ in seen] == list(range(1, len(seen) + 1))
    assert all(ok for _, ok in seen)


def test_two_delta_counters_colliding() -> None:
    """Two delta counters colliding."""
    d = Driver()
    d.submit(workflow([node("a")]))
    attempt = d.attempt("a").dispatch_id
    for i in range(3):
        d.report(attempt, Chunk("log", str(i), None, None, False, None))
        d.report(attempt, Partial({"k": i}))
    sequences = [e.data.sequence for e in d.events("node.result.delta")]
    assert sequences == [1, 2, 3, 4, 5, 6]


def test_errors_attributed_to_the_wrong_node() -> None:
    """Errors attributed to the wrong node."""
    d = Driver()
    run = d.submit(workflow([node("a"), node("b"), node("c")]))
    later = d.attempt("c")  # dispatched last
    d.fail("b", "b broke")
    assert run.tasks["b"].status == "failed" and run.tasks["b"].error.message == "b broke"
    assert run.tasks["a"].status == "running" and run.tasks["c"].status == "running"
    assert run.tasks["c"].error is None and later.dispatch_id in d.running
    assert run.error.details == {"taskId": "b"}


def test_phantom_nodes_created_by_late_or_unknown_results() -> None:
    """Phantom nodes created by late or unknown results."""
    d = Driver()
    run = d.submit(workflow([container("c", "s", timeout=1), node("z")], [],
                            [subgraph("s", [node("x")])]))
    late = d.attempt(f"{C}::x").dispatch_id
    d.fire(kind="timeout")
    tasks, events = dict(run.tasks), len(d.envelopes)
    for dispatch_id in (late, "1.999", "x"):
        assert d.complete_attempt(dispatch_id, {"phantom": True}) is False
        assert d.report(dispatch_id, Progress(0.1, None, None)) is False
    assert run.tasks == tasks and len(d.envelopes) == events
    assert d.engine.take_effects() == []
    d.complete("z")
    assert run.status == "failed" and run.tasks[f"{C}::x"].status == "cancelled"


def test_duplicate_results_releasing_dependents_twice() -> None:
    """Duplicate results releasing dependents twice."""
    d = Driver()
    run = d.submit(workflow([node("a"), node("b"), node("join")],
                            [edge("a", "join"), edge("b", "join")]))
    a = d.attempt("a").dispatch_id
    assert d.complete("a")
    assert d.complete_attempt(a, {}) is False
    assert d.complete_attempt(a, {}) is False
    d.pump()
    assert "join" not in d.running_ids() and run.tasks["join"].status == "queued"
    d.complete("b")
    assert d.dispatched_ids().count("join") == 1


def test_scoped_bindings_silently_dropped() -> None:
    """Scoped bindings silently dropped."""
    # a scope that resolves delivers its data ...
    d = Driver()
    d.on("x", {"value": "inner"})
    d.submit(workflow(
        [container("c", "s", outputs=[port("o", "results.value", prefix="@s.#x")]),
         node("sink", inputs=[port("i", "parameters.got")])],
        [edge("c", "sink", "o", "i")], [subgraph("s", [node("x")])]))
    d.run()
    assert d.dispatches[-1].parameters == {"got": "inner"}
    # ... and one that does not is rejected with its path, not dropped
    with pytest.raises(WorkflowInvalid) as info:
        compile_doc(workflow(
            [container("c", "s", outputs=[port("o", "results.value", prefix="@s.#nope")]),
             node("sink", inputs=[port("i", "parameters.got")])],
            [edge("c", "sink", "o", "i")], [subgraph("s", [node("x")])]), CATALOG)
    assert [i.path for i in info.value.issues] == ["$.edges[0].source.port"]


def test_cycles_accepted_and_hanging_for_ever() -> None:
    """Cycles accepted and hanging for ever."""
    with pytest.raises(WorkflowInvalid) as info:
        compile_doc(workflow([node("a"), node("b")], [edge("a", "b"), edge("b", "a")]))
    assert info.value.issues[0].path == "$.edges"
    with pytest.raises(WorkflowInvalid):
        compile_doc(workflow([container("c", "s")], [], [subgraph("s", [container("d", "s")])]))


def test_replay_leaking_other_sessions_events() -> None:
    """Replay leaking other sessions' events."""
    bus = EventBus()
    d = Driver()
    d.engine = Engine(compile=d.documents, sink=bus.publish_nowait, now=lambda: d.now)
    mine = d.submit(workflow([node("a")]), client_id="me")
    d.submit(workflow([node("a")]), client_id="someone-else")
    d.run()
    sub = bus.subscribe(lambda e: e.scope.client_session_id == "me", after=0)
    try:
        replayed = []
        while True:
            try:
                replayed.append(sub.receive.receive_nowait())
            except anyio.WouldBlock:
                break
        assert replayed and all(e.replayed for e in replayed)
        assert {e.scope.client_session_id for e in replayed} == {"me"}
        assert {e.scope.run_id for e in replayed} == {mine.run_id}
    finally:
        bus.unsubscribe(sub)
        sub.receive.close()


def test_event_ids_restarting_at_1_after_a_restart() -> None:
    """Event ids restarting at 1 after a restart."""
    before = Driver()
    before.submit(workflow([node("a")]))
    before.run()
    last = before.engine.event_seq
    after = Driver(event_seq=last)  # the daemon restores the sequence from its state
    after.submit(workflow([node("a")]))
    assert int(after.envelopes[0].id) == last + 1
    assert {e.id for e in before.envelopes}.isdisjoint({e.id for e in after.envelopes})
