"""Tests for containers in nodehost.engine: frames, nesting, data, retry, timeout, loop."""

from __future__ import annotations

from typing import Any

from builders import (
    Driver,
    Fail,
    chain,
    container,
    edge,
    node,
    port,
    subgraph,
    workflow,
)
from nodehost.runstate import run_summary

C = "wf::c::s"  # the frame id of container c (running subgraph s) at the root of "wf"


def simple(**config: Any) -> dict[str, Any]:
    """root: c (runs s: x -> y) -> after."""
    return workflow(
        [container("c", "s", **config), node("after")], [edge("c", "after")],
        [subgraph("s", [node("x"), node("y")], chain("x", "y"))],
    )


def test_container_runs_its_subgraph_as_a_frame() -> None:
    """Inner task ids are `<frameId>::<nodeId>`; the container succeeds after its frame."""
    d = Driver()
    run = d.submit(simple())
    assert d.running_ids() == [f"{C}::x"]
    c = run.tasks["c"]
    assert c.status == "running" and c.child.frame_id == C
    d.complete(f"{C}::x", {"v": 1})
    d.complete(f"{C}::y", {"w": 2})
    assert c.status == "succeeded"
    assert c.result == {"x": {"v": 1}, "y": {"w": 2}}
    assert d.running_ids() == ["after"]
    d.complete("after")
    assert run.status == "succeeded"
    assert {n.task_id for n in run_summary(run).nodes} == {"c", "after", f"{C}::x", f"{C}::y"}


def test_container_parameters_are_injected_by_inner_node_id() -> None:
    """Container parameters {innerId: {...}} are merged into that inner node's parameters."""
    d = Driver()
    doc = workflow([container("c", "s", {"x": {"given": 1, "nested": {"b": 2}}})], [],
                   [subgraph("s", [node("x", params={"own": 0, "nested": {"a": 1}}),
                                   node("y", params={"own": 5})])])
    run = d.submit(doc)
    assert d.attempt(f"{C}::x").parameters == {"own": 0, "given": 1, "nested": {"a": 1, "b": 2}}
    d.complete(f"{C}::x")
    assert d.attempt(f"{C}::y").parameters == {"own": 5}
    # the documents are not changed by the merge
    assert run.workflow.subgraphs[0].definition.nodes[0].parameters == {"own": 0,
                                                                         "nested": {"a": 1}}


def test_data_into_and_out_of_a_container_through_scoped_ports() -> None:
    """`@s.#x` on a container input feeds x; on an output it reads x's results."""
    d = Driver()
    doc = workflow(
        [node("src", outputs=[port("o", "results.n")]),
         container("c", "s",
                   inputs=[port("in", "parameters.n", prefix="@s.#x")],
                   outputs=[port("out", "results.doubled", prefix="@s.#x")]),
         node("sink", inputs=[port("i", "parameters.got")])],
        [edge("src", "c", "o", "in"), edge("c", "sink", "out", "i")],
        [subgraph("s", [node("x")])],
    )
    d.on("src", {"n": 21})
    d.on("x", lambda a: {"doubled": a.parameters["n"] * 2})
    run = d.submit(doc)
    d.run()
    assert run.status == "succeeded"
    assert [x.parameters for x in d.dispatches if x.node_id == "x"] == [{"n": 21}]
    assert d.dispatches[-1].task_id == "sink" and d.dispatches[-1].parameters == {"got": 42}


def test_container_output_without_scope_uses_the_results_map() -> None:
    """`results.<innerId>.<key>` on a container output reads the results map directly."""
    d = Driver()
    doc = workflow(
        [container("c", "s", outputs=[port("o", "results.y.total")]),
         node("sink", inputs=[port("i", "parameters.t")])],
        [edge("c", "sink", "o", "i")],
        [subgraph("s", [node("x"), node("y")], chain("x", "y"))],
    )
    d.on("y", {"total": 7})
    d.submit(doc)
    d.run()
    assert d.dispatches[-1].parameters == {"t": 7}


def nested() -> dict[str, Any]:
    """root: outer (s1: p, mid (s2: q -> r)) -> after."""
    return workflow(
        [container("outer", "s1"), node("after")], [edge("outer", "after")],
        [subgraph("s1", [node("p"), container("mid", "s2")]),
         subgraph("s2", [node("q"), node("r")], chain("q", "r"))],
    )


OUTER = "wf::outer::s1"
MIDDLE = f"{OUTER}::mid::s2"


def test_nested_containers_complete_their_parents() -> None:
    """The innermost frame finishing completes mid, which completes outer, then `after` runs."""
    d = Driver()
    run = d.submit(nested())
    assert sorted(d.running_ids()) == sorted([f"{OUTER}::p", f"{MIDDLE}::q"])
    d.complete(f"{OUTER}::p", {"p": 1})
    d.complete(f"{MIDDLE}::q", {"q": 1})
    d.complete(f"{MIDDLE}::r", {"r": 1})
    assert run.tasks[f"{OUTER}::mid"].status == "succeeded"
    assert run.tasks["outer"].status == "succeeded"
    assert run.tasks["outer"].result == {"p": {"p": 1}, "mid": {"q": {"q": 1}, "r": {"r": 1}}}
    d.complete("after")
    assert run.status == "succeeded"


def test_nested_injection_through_two_levels() -> None:
    """`@s1.s2.#q` on the outer container's input reaches q two frames down."""
    d = Driver()
    doc = nested()
    doc["nodes"].insert(0, node("src", outputs=[port("o", "results.v")]))
    doc["nodes"][1]["ui"] = {"inputPorts": [port("i", "parameters.v", prefix="@s1.s2.#q")],
                             "outputPorts": []}
    doc["edges"].append(edge("src", "outer", "o", "i"))
    d.submit(doc)
    d.complete("src", {"v": "deep"})
    assert d.attempt(f"{MIDDLE}::q").parameters == {"v": "deep"}


def test_several_containers_run_at_once() -> None:
    """Every ready container starts, and every ready sibling is dispatched with them."""
    d = Driver()
    doc = workflow([container("c1", "s"), node("plain"), container("c2", "s")], [],
                   [subgraph("s", [node("x"), node("y")])])
    run = d.submit(doc)
    assert sorted(d.running_ids()) == sorted([
        "plain", "wf::c1::s::x", "wf::c1::s::y", "wf::c2::s::x", "wf::c2::s::y"])
    d.run()
    assert run.status == "succeeded"


def test_inner_failure_skips_inner_downstream_and_fails_the_container() -> None:
    """Inside a frame the failure policy applies; the container fails once its frame is done."""
    d = Driver()
    doc = workflow(
        [container("c", "s"), node("after"), node("free")], [edge("c", "after")],
        [subgraph("s", [node("x"), node("y"), node("z")], chain("x", "y"))],
    )
    run = d.submit(doc)
    d.fail(f"{C}::x", "bad input", code="E.INPUT")
    assert run.tasks[f"{C}::y"].status == "skipped"
    assert run.tasks["c"].status == "running"  # z still runs
    d.complete(f"{C}::z")
    c = run.tasks["c"]
    assert c.status == "failed" and c.error.code == "E.SUBGRAPH.FAILED"
    assert c.error.message == f"node {C}::x failed: bad input"
    assert run.tasks["after"].status == "skipped"
    d.complete("free")
    assert run.status == "failed"
    assert run.error.code == "E.INPUT" and run.error.details == {"taskId": f"{C}::x"}


def test_nested_failure_names_the_leaf() -> None:
    """A failure two frames down fails both containers; the run error names the leaf."""
    d = Driver()
    d.on("r", Fail("no"))
    run = d.submit(nested())
    d.run()
    assert run.tasks["outer"].error.message == f"node {MIDDLE}::r failed: no"
    assert run.error.message == f"node {MIDDLE}::r failed: no" and run.status == "failed"


def test_container_retry_runs_the_subgraph_again() -> None:
    """containerConfig.retry: a failed frame is run again, and success succeeds the run."""
    d = Driver()
    run = d.submit(simple(retry=(2, 0)))
    d.fail(f"{C}::x")
    assert run.tasks["c"].status == "running"
    second = d.attempt(f"{C}::x")
    assert second.attempt == 2
    assert run.tasks[f"{C}::y"].status == "queued"
    d.complete(f"{C}::x")
    d.complete(f"{C}::y")
    d.complete("after")
    c = run.tasks["c"]
    assert c.status == "succeeded" and c.attempt == 2
    assert run.status == "succeeded" and run.error is None


def test_container_retry_backs_off_then_gives_up() -> None:
    """Container retries wait for a retry timer; after the last try the container fails."""
    d = Driver()
    run = d.submit(simple(retry=(2, 4)))
    d.fail(f"{C}::x")
    [timer] = d.timers
    assert timer.kind == "retry" and timer.task.task_id == "c" and 2 <= timer.delay <= 4
    assert d.running == {}
    d.fire(kind="retry")
    d.fail(f"{C}::x")
    assert run.tasks["c"].status == "failed" and run.status == "failed"
    assert d.dispatched_ids() == [f"{C}::x", f"{C}::x"]


def test_container_shows_running_again_after_a_retry() -> None:
    """After a retry the container's stage is `running`, not still `retrying`."""
    d = Driver()
    d.submit(simple(retry=(2, 0)))
    d.fail(f"{C}::x")
    states = [e.data.state.stage for e in d.events("node.state", "c")]
    assert states == ["running", "retrying", "running"]


def test_bound_container_parameters_that_cannot_be_injected_fail_it() -> None:
    """A bound value that is not `{innerId: {...}}` fails the container, it is not dropped."""
    d = Driver()
    doc = workflow(
        [node("src", outputs=[port("o", "results.cfg")]),
         container("c", "s", inputs=[port("i", "parameters")])],
        [edge("src", "c", "o", "i")], [subgraph("s", [node("x")])],
    )
    for cfg, problem in (({"x": 5}, "must be an object"), ({"ghost": {}}, "no node 'ghost'")):
        d.on("src", {"cfg": cfg})
        run = d.submit(doc)
        d.run()
        c = run.tasks["c"]
        assert c.status == "failed" and c.error.code == "E.NODE.PARAMETERS"
        assert problem in c.error.message and f"{C}::x" not in d.dispatched_ids()
        assert set(run.tasks) == {"src", "c"}  # no inner node left queued in a finished run
    d.on("src", {"cfg": {"x": {"k": 1}}})
    d.submit(doc)
    d.run()
    assert d.dispatches[-1].parameters == {"k": 1}


def test_fail_fast_still_retries_the_container() -> None:
    """failFast cancels the failed frame at once, but the container's retry still applies."""
    d = Driver()
    doc = workflow([container("c", "s", retry=(2, 0)), node("free")], [],
                   [subgraph("s", [node("x"), node("y")])])
    run = d.submit(doc, fail_fast=True)
    y = d.attempt(f"{C}::y")
    d.fail(f"{C}::x")
    assert y.dispatch_id in d.cancels  # the rest of the frame, at once
    assert run.status == "running" and run.tasks["free"].status == "running"
    assert d.dispatched_ids().count(f"{C}::x") == 2
    d.fail(f"{C}::x")
    assert run.status == "failed" and run.tasks["free"].status == "cancelled"
    assert run.error.message == f"node {C}::x failed: boom"


def test_container_timeout_aborts_the_frame() -> None:
    """When a container's timeout fires, its running inner node is cancelled and it fails."""
    d = Driver()
    run = d.submit(simple(timeout=10))
    inner = d.attempt(f"{C}::x")
    [timer] = d.timers
    assert (timer.kind, timer.delay, timer.task.task_id) == ("timeout", 10, "c")
    d.fire(kind="timeout")
    assert d.cancels == [inner.dispatch_id]
    assert run.tasks[f"{C}::x"].status == "cancelled"
    c = run.tasks["c"]
    assert c.status == "failed" and c.error.code == "E.TIMEOUT"
    assert run.tasks["after"].status == "skipped" and run.status == "failed"
    assert not d.complete_attempt(inner.dispatch_id, {})


def test_container_timeout_then_retry() -> None:
    """A timed-out container with tries left runs its frame again and can succeed."""
    d = Driver()
    run = d.submit(simple(timeout=10, retry=(2, 0)))
    first = d.attempt(f"{C}::x")
    d.fire(kind="timeout")
    second = d.attempt(f"{C}::x")
    assert second.dispatch_id != first.dispatch_id
    assert [t.kind for t in d.timers] == ["timeout"]  # the second try's own timeout
    d.run()
    assert run.status == "succeeded" and run.tasks["c"].attempt == 2


def test_stale_inner_container_timeout_after_the_outer_retry() -> None:
    """An inner container's timer from the outer container's first try cannot time out its
    second try."""
    d = Driver()
    doc = workflow(
        [container("outer", "s1", timeout=10, retry=(2, 0))], [],
        [subgraph("s1", [container("mid", "s2", timeout=100)]),
         subgraph("s2", [node("q")])],
    )
    run = d.submit(doc)
    old_mid_timer = next(t for t in d.timers if t.task.node_id == "mid")
    d.fire(kind="timeout", task_id="outer")  # outer times out and is retried
    assert run.tasks[f"{OUTER}::mid"].status == "running"
    d.timers.remove(old_mid_timer)
    d.fire_timer(old_mid_timer)
    d.pump()
    assert run.tasks[f"{OUTER}::mid"].status == "running"
    assert d.running_ids() == [f"{OUTER}::mid::s2::q"]
    d.run()
    assert run.status == "succeeded"


def test_loop_runs_max_iterations() -> None:
    """A loop without condition runs its subgraph maxIterations times."""
    d = Driver()
    counter = iter(range(100))
    d.on("x", lambda a: {"n": next(counter)})
    run = d.submit(simple(loop={"enabled": True, "maxIterations": 3}))
    d.run()
    assert d.dispatched_ids().count(f"{C}::x") == 3
    c = run.tasks["c"]
    assert c.status == "succeeded" and c.result["x"] == {"n": 2}
    assert c.attempt == 3 and run.status == "succeeded"
    assert [e.data.state.message for e in d.events("node.state", "c")
            if e.data.status == "running"] == ["iteration 1", "iteration 2", "iteration 3"]


def test_loop_condition_stops_the_loop() -> None:
    """The loop goes on while the condition path (into the results) is truthy."""
    d = Driver()
    left = iter([True, True, False, True])
    d.on("y", lambda a: {"again": next(left)})
    run = d.submit(simple(loop={"enabled": True, "maxIterations": 10,
                                "condition": "results.y.again"}))
    d.run()
    assert d.dispatched_ids().count(f"{C}::y") == 3
    assert run.tasks["c"].result["y"] == {"again": False} and run.status == "succeeded"


def test_loop_condition_on_container_parameters() -> None:
    """A `parameters...` condition reads the container's parameters."""
    d = Driver()
    doc = workflow([container("c", "s", {"x": {"go": True}},
                              loop={"enabled": True, "maxIterations": 2,
                                    "condition": "parameters.x.go"})], [],
                   [subgraph("s", [node("x")])])
    d.submit(doc)
    d.run()
    assert d.dispatched_ids().count(f"{C}::x") == 2


def test_loop_disabled_runs_once() -> None:
    """loop.enabled false: one iteration."""
    d = Driver()
    d.submit(simple(loop={"enabled": False, "maxIterations": 5}))
    d.run()
    assert d.dispatched_ids().count(f"{C}::x") == 1


def test_loop_timeout_spans_iterations() -> None:
    """The container's timeout covers all its iterations: one timer, fired mid-loop."""
    d = Driver()
    run = d.submit(simple(loop={"enabled": True, "maxIterations": 5}, timeout=30))
    d.complete(f"{C}::x")
    d.complete(f"{C}::y")
    assert run.tasks["c"].turns == 2
    assert [t.kind for t in d.timers] == ["timeout"]
    d.fire(kind="timeout")
    assert run.tasks["c"].status == "failed" and run.tasks["c"].error.code == "E.TIMEOUT"


def test_fail_fast_inside_a_frame_cancels_root_nodes() -> None:
    """failFast applies to failures at any depth."""
    d = Driver()
    run = d.submit(workflow([container("c", "s"), node("free")], [],
                            [subgraph("s", [node("x")])]), fail_fast=True)
    free = d.attempt("free")
    d.fail(f"{C}::x", "inner")
    assert run.status == "failed" and free.dispatch_id in d.cancels
    assert run.error.message == f"node {C}::x failed: inner"


def test_cancel_reaches_nodes_in_frames() -> None:
    """Cancelling a run cancels running nodes at every depth."""
    d = Driver()
    run = d.submit(nested())
    inner = {d.attempt(t).dispatch_id for t in (f"{OUTER}::p", f"{MIDDLE}::q")}
    d.cancel_run(run.run_id)
    d.pump()
    assert set(d.cancels) == inner
    assert run.status == "cancelled"
    assert {t.status for t in run.tasks.values()} == {"cancelled"}
