"""Property tests for nodehost.engine: random workflows driven by random results and timers.

Whatever happens (failures, retries, timeouts, loops, failFast, cancel, stale results), every
run ends, nothing is dispatched before its upstreams succeeded, and the events stay in order.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import Driver, container, edge, node, subgraph, workflow
from nodehost.model import ErrorInfo
from nodehost.reports import Chunk, Partial


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A random DAG with random retries and timeouts, and containers nested two deep."""
    subs: list[dict[str, Any]] = []

    def level(prefix: str, depth: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        nodes: list[dict[str, Any]] = []
        for i in range(draw(st.integers(1, 4))):
            nid = f"{prefix}{i}"
            if depth < 2 and draw(st.integers(0, 2)) == 0:
                sid = f"s{len(subs)}"
                subs.append({})
                inner_nodes, inner_edges = level(f"{sid}n", depth + 1)
                subs[int(sid[1:])] = subgraph(sid, inner_nodes, inner_edges)
                nodes.append(container(
                    nid, sid,
                    retry=draw(st.sampled_from([None, (2, 0), (3, 1)])),
                    timeout=draw(st.sampled_from([None, 5])),
                    loop=draw(st.sampled_from([None, {"enabled": True, "maxIterations": 2}])),
                ))
            else:
                extra: dict[str, Any] = {}
                if attempts := draw(st.sampled_from([None, 2, 3])):
                    extra["retry"] = {"maxAttempts": attempts,
                                      "backoffSeconds": draw(st.sampled_from([0, 1]))}
                if draw(st.booleans()):
                    extra["timeoutSeconds"] = 3
                nodes.append(node(nid, **extra))
        ids = [n["id"] for n in nodes]
        edges = [edge(a, b) for i, a in enumerate(ids) for b in ids[i + 1:] if draw(st.booleans())]
        return nodes, edges

    nodes, edges = level("n", 0)
    return workflow(nodes, edges, subs)


def upstreams_succeeded(d: Driver, task_id: str, run: Any) -> bool:
    task = run.tasks[task_id]
    return all(task.frame.tasks[up].status == "succeeded" for up in task.g.upstream)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), fail_fast=st.booleans(), data=st.data())
def test_random_runs_always_end_consistently(doc: dict[str, Any], fail_fast: bool,
                                             data: st.DataObject) -> None:
    """Random results, failures, timers and cancels: the run ends, with coherent events."""
    d = Driver()
    run = d.submit(doc, fail_fast=fail_fast)
    checked = 0
    cancelled = False
    stale: list[str] = []

    def check_dispatches() -> None:
        nonlocal checked
        for dispatch in d.dispatches[checked:]:
            assert upstreams_succeeded(d, dispatch.task_id, run), dispatch.task_id
        checked = len(d.dispatches)

    check_dispatches()
    for _ in range(150):
        if run.final:
            break
        actions = []
        if d.running:
            actions += ["complete", "complete", "fail", "fail_final", "report"]
        if d.timers:
            actions += ["timer", "timer"]
        if stale:
            actions.append("stale")
        if not actions:
            break
        action = data.draw(st.sampled_from([*actions, "cancel"] if data.draw(
            st.integers(0, 30)) == 0 else actions))
        if action in ("complete", "fail", "fail_final", "report"):
            attempt = data.draw(st.sampled_from(list(d.running.values())))
            if action == "report":
                assert d.report(attempt.dispatch_id, Chunk("log", "x", None, None,
                                             False, None))
                assert d.report(attempt.dispatch_id, Partial({"p": 1}))
                continue
            stale.append(attempt.dispatch_id)
            if action == "complete":
                assert d.complete(attempt.task_id, {"ok": True})
            else:
                assert d.fail(attempt.task_id, retryable=action == "fail")
        elif action == "timer":
            timer = data.draw(st.sampled_from(d.timers))
            d.fire(kind=timer.kind, task_id=timer.task.task_id)
        elif action == "stale":
            dispatch_id = data.draw(st.sampled_from(stale))
            if dispatch_id not in d.running:
                before = len(d.envelopes)
                assert not d.complete_attempt(dispatch_id, {})
                assert not d.fail_attempt(dispatch_id, ErrorInfo(code="E", message="late"))
                assert len(d.envelopes) == before
        else:
            cancelled = d.cancel_run(run.run_id)
            d.pump()
        check_dispatches()

    # let everything that is left succeed, firing timers when nothing runs
    for _ in range(5_000):
        if run.final:
            break
        if d.running:
            d.complete(next(iter(d.running.values())).task_id, {"ok": True})
        else:
            assert d.timers, f"run stuck: {d.statuses(run)}"
            d.fire(kind=d.timers[0].kind, task_id=d.timers[0].task.task_id)
        check_dispatches()
    assert run.final and d.finished == [run]
    assert all(t.final for t in run.tasks.values())

    root = [t.status for t in run.root.tasks.values()]
    if cancelled:
        assert run.status == "cancelled"
    elif all(s == "succeeded" for s in root):
        assert run.status == "succeeded" and run.error is None
    else:
        assert run.status == "failed" and run.error is not None

    assert [int(e.id) for e in d.envelopes] == list(range(1, len(d.envelopes) + 1))
    assert [e.data.status for e in d.events("run.status")][-1] == run.status
    deltas: dict[tuple[str, int], list[int]] = defaultdict(list)
    for e in d.events("node.result.delta"):
        deltas[(e.data.task_id, e.data.revision)].append(e.data.sequence)
    for sequences in deltas.values():
        assert sequences == list(range(1, len(sequences) + 1))
