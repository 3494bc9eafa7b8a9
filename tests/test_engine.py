"""Tests for nodehost.engine at the root level: scheduling, data, failures, retries, fencing."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from builders import (
    CATALOG,
    Driver,
    Fail,
    chain,
    edge,
    node,
    port,
    workflow,
)
from nodehost.commands import Submit
from nodehost.documents import Documents
from nodehost.engine import Cancel, Engine, Ready, RunFinished, Timer
from nodehost.model import ErrorInfo
from nodehost.reports import Artifact, Chunk, Metric, Partial, Progress
from nodehost.runstate import run_summary


def diamond() -> dict[str, Any]:
    return workflow([node(n) for n in "abcd"],
                    [edge("a", "b"), edge("a", "c"), edge("b", "d"), edge("c", "d")])


# --- scheduling ----------------------------------------------------------------------------------


def test_submit_makes_only_entry_nodes_ready() -> None:
    """A new run is queued, with Ready effects for the nodes without upstreams only."""
    documents = Documents(CATALOG)
    engine = Engine(compile=documents)
    prepared = documents.prepare(workflow([node("a"), node("b"), node("c")], [edge("a", "b")]))
    assert engine.apply(Submit(run_id="r1", tenant="default", client_id="c1",
                               workflow=msgspec.Raw(prepared.document),
                               definition_hash=prepared.definition_hash))
    run = engine.runs["r1"]
    effects = engine.take_effects()
    assert [e.task.task_id for e in effects if isinstance(e, Ready)] == ["a", "c"]
    assert run.status == "queued" and run.started_at is None
    assert engine.take_effects() == []


def test_linear_chain_runs_in_order() -> None:
    """a -> b -> c: each node is dispatched only after the one before succeeded."""
    d = Driver()
    run = d.submit(workflow([node("a"), node("b"), node("c")], chain("a", "b", "c")))
    assert d.running_ids() == ["a"] and run.status == "running"
    d.complete("a")
    assert d.running_ids() == ["b"]
    d.complete("b")
    d.complete("c")
    assert d.dispatched_ids() == ["a", "b", "c"]
    assert run.status == "succeeded" and run.finished_at is not None
    assert d.finished == [run]
    assert set(d.statuses(run).values()) == {"succeeded"}


def test_diamond_join_waits_for_both_upstreams() -> None:
    """d runs once, after both b and c succeeded."""
    d = Driver()
    run = d.submit(diamond())
    d.complete("a")
    assert sorted(d.running_ids()) == ["b", "c"]
    d.complete("b")
    assert "d" not in d.running_ids()
    d.complete("c")
    assert d.running_ids() == ["d"]
    d.run()
    assert d.dispatched_ids().count("d") == 1 and run.status == "succeeded"


def test_run_id_is_a_uuid_and_unique() -> None:
    """Without a run id the engine makes a uuid4; reusing an id is refused."""
    d = Driver()
    run = d.submit(workflow([node("a")]))
    assert len(run.run_id) == 36 and run.run_id.count("-") == 4
    d.submit(workflow([node("a")]), run_id="r1")
    with pytest.raises(ValueError, match="exists"):
        d.submit(workflow([node("a")]), run_id="r1")


# --- data along edges ----------------------------------------------------------------------------


def test_data_flows_through_port_bindings() -> None:
    """Dotted paths with list indexes and JSON pointers copy values into parameters."""
    d = Driver()
    doc = workflow(
        [node("a", outputs=[port("name", "results.items[1].name"),
                            port("slash", "/results/a~1b/0")]),
         node("b", "demo.echo", {"static": 1, "deep": {"keep": True}},
              inputs=[port("who", "parameters.who"), port("x", "/parameters/deep/x")])],
        [edge("a", "b", "name", "who"), edge("a", "b", "slash", "x")],
    )
    d.submit(doc)
    d.complete("a", {"items": [{"name": "first"}, {"name": "second"}], "a/b": [5, 6]})
    assert d.attempt("b").parameters == {
        "static": 1, "who": "second", "deep": {"keep": True, "x": 5},
    }


def test_local_scope_reads_another_node() -> None:
    """A source port scoped `#z` reads z's results, and the target waits for z."""
    d = Driver()
    doc = workflow(
        [node("a", outputs=[port("o", "results.v", prefix="#z")]), node("z"),
         node("b", inputs=[port("i", "parameters.got")])],
        [edge("a", "b", "o", "i")],
    )
    d.submit(doc)
    d.complete("a", {"v": "from a"})
    assert d.running_ids() == ["z"]
    d.complete("z", {"v": "from z"})
    assert d.attempt("b").parameters == {"got": "from z"}


def test_missing_source_value_fails_the_target_with_the_edge() -> None:
    """A binding whose source value is missing fails the target node (E.NODE.BINDING)."""
    d = Driver()
    doc = workflow(
        [node("a", outputs=[port("o", "results.nothing")]),
         node("b", inputs=[port("i", "parameters.x")]), node("c")],
        [edge("a", "b", "o", "i", id="a-to-b"), edge("b", "c")],
    )
    run = d.submit(doc)
    d.complete("a", {"other": 1})
    b = run.tasks["b"]
    assert b.status == "failed" and b.error.code == "E.NODE.BINDING"
    assert "a-to-b" in b.error.message and "/results/nothing" in b.error.message
    assert run.tasks["c"].status == "skipped"
    assert run.status == "failed" and "b" not in d.dispatched_ids()


def test_value_that_cannot_be_written_fails_the_target() -> None:
    """A whole-parameters binding given a non-object fails the target; the run ends."""
    d = Driver()
    doc = workflow(
        [node("a", outputs=[port("o", "results.n")]),
         node("b", inputs=[port("i", "parameters")])],
        [edge("a", "b", "o", "i")],
    )
    run = d.submit(doc)
    d.complete("a", {"n": 5})
    assert run.tasks["b"].error.code == "E.NODE.BINDING"
    assert "only an object" in run.tasks["b"].error.message
    assert run.status == "failed" and d.dispatched_ids() == ["a"]


def test_binding_into_a_list_item() -> None:
    """A target path with a list index writes into the static list, keeping the rest."""
    d = Driver()
    doc = workflow(
        [node("a", outputs=[port("o", "results.n")]),
         node("b", params={"items": [{"v": 0}, {"v": 1}]},
              inputs=[port("i", "parameters.items[1].v")])],
        [edge("a", "b", "o", "i")],
    )
    d.submit(doc)
    d.complete("a", {"n": 9})
    assert d.attempt("b").parameters == {"items": [{"v": 0}, {"v": 9}]}


def test_parameters_handed_to_an_attempt_are_a_copy() -> None:
    """A node that changes its parameters does not change what the next attempt gets."""
    d = Driver()
    run = d.submit(workflow([node("a", params={"n": 1, "deep": {"k": [1]}},
                                  retry={"maxAttempts": 2})]))
    first = d.attempt("a")
    first.parameters["n"] = 99
    first.parameters["deep"]["k"].append(2)
    d.fail("a")
    assert d.attempt("a").parameters == {"n": 1, "deep": {"k": [1]}}
    assert run.workflow.nodes[0].parameters == {"n": 1, "deep": {"k": [1]}}


def test_a_node_changing_bound_parameters_changes_nothing_upstream_or_beside_it() -> None:
    """Two nodes get one upstream value along edges; one changes what it got: the upstream's
    result, the other node's parameters and the published result stay as they were."""
    d = Driver()
    out = [port("o", "results.value")]
    run = d.submit(workflow(
        [node("a", outputs=out),
         node("b", inputs=[port("i", "parameters.in")]),
         node("c", inputs=[port("i", "parameters.in")])],
        [edge("a", "b", "o", "i"), edge("a", "c", "o", "i")],
    ))
    d.complete("a", {"value": {"boxes": [1, 2]}})
    published = msgspec.json.encode(d.events("node.result.snapshot", "a")[-1])
    b, c = d.attempt("b"), d.attempt("c")
    b.parameters["in"]["boxes"].append(3)
    b.parameters["in"]["new"] = True
    assert c.parameters == {"in": {"boxes": [1, 2]}}
    assert run.tasks["a"].result == {"value": {"boxes": [1, 2]}}
    assert run.tasks["b"].parameters == {"in": {"boxes": [1, 2]}}
    assert msgspec.json.encode(d.events("node.result.snapshot", "a")[-1]) == published


def test_partial_results_are_part_of_the_final_result() -> None:
    """Keys published with partial() stay in the result unless the final result overrides."""
    d = Driver()
    run = d.submit(workflow([node("a")]))
    dispatch_id = d.attempt("a").dispatch_id
    assert d.report(dispatch_id, Partial({"p": 1, "q": 1}))
    d.complete("a", {"q": 2})
    assert run.tasks["a"].result == {"p": 1, "q": 2}


# --- failures ------------------------------------------------------------------------------------


def branches() -> dict[str, Any]:
    """a -> b -> c, a -> b -> c2, and an independent x -> y."""
    return workflow([node(n) for n in ("a", "b", "c", "c2", "x", "y")],
                    [*chain("a", "b", "c"), edge("b", "c2"), *chain("x", "y")])


def test_failure_skips_downstream_and_lets_other_branches_finish() -> None:
    """b fails: c and c2 are skipped with the reason; x -> y go on; then the run fails."""
    d = Driver()
    run = d.submit(branches())
    d.complete("a")
    d.fail("b", "disk full", code="E.DISK")
    for skipped in ("c", "c2"):
        task = run.tasks[skipped]
        assert task.status == "skipped"
        assert task.message == "upstream 'b' failed"
        assert task.error.code == "E.UPSTREAM.FAILED"
    assert run.status == "running" and run.finished_at is None
    assert d.running_ids() == ["x"]
    assert not d.events("run.status")[-1].data.status == "failed"
    d.complete("x")
    assert run.status == "running"
    d.complete("y")
    assert run.status == "failed"
    assert run.error.code == "E.DISK" and run.error.message == "node b failed: disk full"
    assert "c" not in d.dispatched_ids() and "c2" not in d.dispatched_ids()
    status = d.events("run.status")[-1].data
    assert status.status == "failed" and status.reason == "node b failed: disk full"


def test_skipped_node_fails_the_run() -> None:
    """A run with skipped nodes is failed, never succeeded."""
    d = Driver()
    d.on("b", Fail())
    run = d.submit(branches())
    d.run()
    assert run.status == "failed"
    assert [t for t, s in d.statuses(run).items() if s == "succeeded"] == ["a", "x", "y"]


def test_fail_fast_cancels_the_rest_at_once() -> None:
    """With failFast, running nodes get Cancel effects and the run fails at once."""
    d = Driver()
    run = d.submit(branches(), fail_fast=True)
    x_attempt = d.attempt("x")
    d.complete("a")
    d.fail("b")
    assert run.status == "failed" and d.finished == [run]
    assert d.cancels == [x_attempt.dispatch_id]
    assert run.tasks["x"].status == "cancelled" and run.tasks["y"].status == "cancelled"
    assert {run.tasks["c"].status, run.tasks["c2"].status} <= {"skipped", "cancelled"}
    assert not d.complete_attempt(x_attempt.dispatch_id, {})
    assert run.error.message == "node b failed: boom"


def test_cancel_run() -> None:
    """Cancel: running attempts get Cancel, the rest is cancelled, the run is cancelled."""
    d = Driver()
    run = d.submit(workflow([node("a"), node("b"), node("c")], [edge("a", "c")]))
    attempts = {d.attempt(t).dispatch_id for t in ("a", "b")}
    assert d.cancel_run(run.run_id, "operator said so")
    d.pump()
    assert set(d.cancels) == attempts
    assert set(d.statuses(run).values()) == {"cancelled"}
    assert run.status == "cancelled" and d.finished == [run]
    assert d.events("run.status")[-1].data.reason == "operator said so"
    assert not d.cancel_run(run.run_id)
    assert not d.cancel_run("no-such-run")
    assert not any(d.complete_attempt(a, {}) for a in attempts)


def test_cancel_after_a_branch_failed_ends_cancelled() -> None:
    """Cancel ends the run cancelled even if a branch had already failed."""
    d = Driver()
    run = d.submit(branches())
    d.complete("a")
    d.fail("b")
    d.cancel_run(run.run_id)
    d.pump()
    assert run.status == "cancelled" and run.tasks["x"].status == "cancelled"


def test_cancel_a_node_waiting_for_its_retry() -> None:
    """A node in backoff is cancelled; its retry timer firing later changes nothing."""
    d = Driver()
    run = d.submit(workflow([node("a", retry={"maxAttempts": 3, "backoffSeconds": 5})]))
    d.fail("a")
    [_timer] = d.timers
    d.cancel_run(run.run_id)
    d.fire(kind="retry")
    assert run.tasks["a"].status == "cancelled" and d.running == {}
    assert d.engine.dispatch(run.tasks["a"]) is None


# --- retries and timeouts ------------------------------------------------------------------------


def test_retries_back_off_exponentially_with_jitter() -> None:
    """Delays are backoff * 2^(n-1) scaled by a jitter in [0.5, 1); then the node fails."""
    d = Driver(seed=11)
    run = d.submit(workflow([node("a", retry={"maxAttempts": 4, "backoffSeconds": 2})]))
    jitter = random.Random(11)
    for n in (1, 2, 3):
        assert d.attempt("a").attempt == n
        d.fail("a", f"try {n}")
        task = run.tasks["a"]
        assert task.status == "queued" and task.stage == "retrying"
        [timer] = d.timers
        assert timer.kind == "retry"
        assert timer.delay == pytest.approx(2 * 2 ** (n - 1) * jitter.uniform(0.5, 1.0))
        assert d.running == {}
        d.fire(kind="retry")
    assert d.attempt("a").attempt == 4
    d.fail("a", "try 4")
    assert run.tasks["a"].status == "failed" and d.timers == []
    assert run.error.message == "node a failed: try 4"
    assert len({x.dispatch_id for x in d.dispatches}) == 4


def test_retry_without_backoff_is_immediate() -> None:
    """With backoffSeconds 0 the next attempt is dispatched at once, no timer."""
    d = Driver()
    run = d.submit(workflow([node("a", retry={"maxAttempts": 2})]))
    d.fail("a")
    assert d.timers == [] and d.attempt("a").attempt == 2
    d.complete("a")
    assert run.status == "succeeded" and run.tasks["a"].attempt == 2


def test_non_retryable_failure_is_not_retried() -> None:
    """fail(retryable=False) fails the node even with attempts left."""
    d = Driver()
    run = d.submit(workflow([node("a", retry={"maxAttempts": 5})]))
    d.fail("a", retryable=False)
    assert run.tasks["a"].status == "failed" and len(d.dispatches) == 1


def test_package_declared_retry_is_the_default() -> None:
    """A node type declared with retry=3, backoff=0.5 retries without a node retry field."""
    d = Driver()
    run = d.submit(workflow([node("a", "demo.flaky")]))
    d.fail("a")
    assert d.timers[0].delay <= 0.5
    d.fire()
    d.fail("a")
    d.fire()
    d.fail("a")
    assert run.tasks["a"].status == "failed" and len(d.dispatches) == 3


def test_timeout_cancels_the_attempt_and_fails_the_node() -> None:
    """timeoutSeconds: a timer; when it fires the attempt is cancelled, the node fails."""
    d = Driver()
    run = d.submit(workflow([node("a", timeoutSeconds=5), node("b")], [edge("a", "b")]))
    attempt = d.attempt("a")
    assert attempt.timeout == 5
    [timer] = d.timers
    assert (timer.kind, timer.delay) == ("timeout", 5)
    d.fire(kind="timeout")
    assert d.cancels == [attempt.dispatch_id]
    a = run.tasks["a"]
    assert a.status == "failed" and a.error.code == "E.TIMEOUT"
    assert a.error.message == "timed out after 5 s"
    assert run.tasks["b"].status == "skipped" and run.status == "failed"
    assert not d.complete_attempt(attempt.dispatch_id, {})


def test_timeout_with_retries_dispatches_again() -> None:
    """A timed-out node with attempts left is dispatched again; the late result is fenced."""
    d = Driver()
    run = d.submit(workflow([node("a", timeoutSeconds=5, retry={"maxAttempts": 2})]))
    first = d.attempt("a")
    d.fire(kind="timeout")
    second = d.attempt("a")
    assert second.attempt == 2 and second.dispatch_id != first.dispatch_id
    assert not d.complete_attempt(first.dispatch_id, {"late": True})
    d.complete("a", {"ok": True})
    assert run.status == "succeeded" and run.tasks["a"].result == {"ok": True}


def test_package_declared_timeout_is_the_default() -> None:
    """demo.sleep declares timeout=60; the node field overrides it."""
    d = Driver()
    d.submit(workflow([node("a", "demo.sleep", {"seconds": 1}),
                       node("b", "demo.sleep", {"seconds": 1}, timeoutSeconds=2)]))
    assert {t.task.task_id: t.delay for t in d.timers} == {"a": 60, "b": 2}


def test_timer_after_completion_changes_nothing() -> None:
    """A timeout timer that fires after the attempt finished is ignored."""
    d = Driver()
    run = d.submit(workflow([node("a", timeoutSeconds=5)]))
    d.complete("a")
    events = len(d.envelopes)
    d.fire()
    assert run.status == "succeeded" and len(d.envelopes) == events


def test_stale_timeout_does_not_hit_the_next_attempt() -> None:
    """Attempt 1's timeout timer firing during attempt 2 changes nothing."""
    d = Driver()
    run = d.submit(workflow([node("a", timeoutSeconds=5, retry={"maxAttempts": 2})]))
    [old] = d.timers
    d.fail("a")
    d.timers.remove(old)
    d.fire_timer(old)
    d.pump()
    assert d.attempt("a").attempt == 2 and d.cancels == []
    assert run.tasks["a"].status == "running"


# --- fencing -------------------------------------------------------------------------------------


def test_stale_and_unknown_dispatch_ids_are_ignored() -> None:
    """Results and reports for an attempt that is not current return False and emit nothing."""
    d = Driver()
    run = d.submit(workflow([node("a", retry={"maxAttempts": 2}), node("b")], [edge("a", "b")]))
    stale = d.attempt("a").dispatch_id
    d.fail("a")
    current = d.attempt("a").dispatch_id
    before = len(d.envelopes)
    for dispatch_id in (stale, "no-such-dispatch"):
        assert not d.complete_attempt(dispatch_id, {"x": 1})
        assert not d.fail_attempt(dispatch_id, ErrorInfo(code="E", message="m"))
        assert not d.report(dispatch_id, Progress(0.5, "stage", "msg"))
        assert not d.report(dispatch_id, Partial({"x": 1}))
        assert not d.report(dispatch_id, Chunk("log", "t", None, None, False, None))
        assert not d.report(dispatch_id, Metric("m", 1.0))
        assert not d.report(dispatch_id, Artifact({"resourceId": "r", "type": "t"}))
    assert len(d.envelopes) == before and d.engine.take_effects() == []
    assert run.tasks["a"].status == "running" and run.tasks["a"].partial is None
    assert d.report(current, Progress(0.5, None, None))
    assert d.complete_attempt(current, {})
    assert not d.complete_attempt(current, {})


def test_artifacts_and_metrics_of_a_failed_attempt_are_dropped() -> None:
    """Only the successful attempt's artifacts and metrics are the node's."""
    d = Driver()
    run = d.submit(workflow([node("a", retry={"maxAttempts": 2})]))
    first = d.attempt("a").dispatch_id
    d.report(first, Artifact({"resourceId": "half-written", "type": "file"}))
    d.report(first, Metric("frames", 10))
    d.fail("a")
    second = d.attempt("a").dispatch_id
    d.report(second, Artifact({"resourceId": "good", "type": "file"}))
    d.complete("a")
    a = run.tasks["a"]
    assert [x["resourceId"] for x in a.artifacts] == ["good"] and a.metrics == {}
    assert [x["resourceId"] for x in run_summary(run).artifacts] == ["good"]


# --- status rollup -------------------------------------------------------------------------------


def test_run_status_rollup_in_events() -> None:
    """run.status goes queued -> running -> succeeded, each once."""
    d = Driver()
    d.submit(workflow([node("a"), node("b")]))
    d.run()
    assert [e.data.status for e in d.events("run.status")] == ["queued", "running", "succeeded"]


def test_summary_lists_every_node_with_its_state() -> None:
    """The run summary has each node's status, attempt and error."""
    d = Driver()
    d.on("b", Fail("nope"))
    run = d.submit(branches())
    d.run()
    summary = run_summary(run)
    by_id = {n.node_id: n for n in summary.nodes}
    assert by_id["b"].status == "failed" and by_id["b"].error.message == "nope"
    assert by_id["c"].status == "skipped" and by_id["a"].seq == 1
    assert summary.status == "failed" and summary.error.message == "node b failed: nope"


def test_effects_are_the_only_output() -> None:
    """take_effects drains: a second call returns nothing; RunFinished comes once."""
    d = Driver()
    run = d.submit(workflow([node("a")]))
    d.complete_attempt(d.attempt("a").dispatch_id, {})
    effects = d.engine.take_effects()
    assert effects == [RunFinished(run)]
    assert d.engine.take_effects() == []
    assert not any(isinstance(e, Cancel | Timer) for e in effects)
