"""The journal of commands: applying it again rebuilds every run and every event exactly."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import CATALOG, Driver, container, edge, node, subgraph, workflow
from nodehost.documents import Documents
from nodehost.engine import Engine, Ready
from nodehost.recovery import replay
from nodehost.reports import Chunk, Metric, Partial, Progress
from nodehost.runstate import Task, run_summary
from nodehost.store.records import decode_record, encode_record
from nodehost.store.store import Store
from test_engine_properties import documents


class JournaledDriver(Driver):
    """The test Driver whose engine records its commands, round-tripped through msgpack."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.records: list[Any] = []
        self.engine.recorder = lambda r: self.records.append(decode_record(encode_record(r)))


def fresh_engine(envelopes: list[Any] | None = None) -> Engine:
    """An empty engine, as a restarted host has (its own compiler, no recorder)."""
    return Engine(compile=Documents(CATALOG),
                  sink=envelopes.append if envelopes is not None else None)


def replayed(d: JournaledDriver) -> tuple[Engine, list[Any]]:
    envelopes: list[Any] = []
    engine = fresh_engine(envelopes)
    replay(engine, d.records)
    return engine, envelopes


def state(engine: Engine) -> Any:
    return {run_id: msgspec.to_builtins(run_summary(run)) for run_id, run in engine.runs.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), data=st.data())
def test_replay_rebuilds_runs_and_events_exactly(doc: dict[str, Any], data: st.DataObject) -> None:
    """At any point, replaying the journal gives the same runs and the same event stream."""
    d = JournaledDriver()
    d.submit(doc)
    for _ in range(data.draw(st.integers(0, 60))):
        actions = []
        if d.running:
            actions += ["complete", "fail", "report"]
        if d.timers:
            actions.append("timer")
        if not actions:
            break
        action = data.draw(st.sampled_from(actions))
        if action == "timer":
            timer = data.draw(st.sampled_from(d.timers))
            d.fire(kind=timer.kind, task_id=timer.task.task_id)
            continue
        attempt = data.draw(st.sampled_from(list(d.running.values())))
        if action == "report":
            d.report(attempt.dispatch_id, Progress(0.5, "half", "msg"))
            d.report(attempt.dispatch_id, Chunk("log", "line", b"\x00", "x/y", False,
                                  {"k": 1}))
            d.report(attempt.dispatch_id, Partial({"p": [1, 2]}))
            d.report(attempt.dispatch_id, Metric("m", 2.5))
        elif action == "complete":
            d.complete(attempt.task_id, {"ok": attempt.attempt})
        else:
            d.fail(attempt.task_id, retryable=data.draw(st.booleans()))
        d.advance(0.25)
    engine, envelopes = replayed(d)
    assert state(engine) == state(d.engine)
    assert [msgspec.to_builtins(e) for e in envelopes] == \
        [msgspec.to_builtins(e) for e in d.envelopes]
    assert engine.event_seq == d.engine.event_seq


def test_resume_fails_interrupted_nodes_or_retries_idempotent_ones() -> None:
    """After a restart, a running node fails with E.HOST.RESTARTED unless it may be retried."""
    doc = workflow([node("a"), node("b", type="demo.flaky", retry={"maxAttempts": 2}),
                    node("c")], [edge("a", "c")])
    d = JournaledDriver()
    run = d.submit(doc)
    assert sorted(d.running_ids()) == ["a", "b"]
    engine, _ = replayed(d)
    engine.recorder = d.records.append  # journal what resume decides
    # pretend b's node type is idempotent and a's is not
    restored = engine.runs[run.run_id]
    restored.tasks["b"].g.idempotent = True
    counts = engine.resume()
    assert counts["interrupted"] == 2
    a, b = restored.tasks["a"], restored.tasks["b"]
    assert a.status == "failed" and a.error.code == "E.HOST.RESTARTED"
    assert restored.tasks["c"].status == "skipped"
    assert b.status == "queued" and b.phase == "ready"
    ready = [e.task.task_id for e in engine.take_effects() if isinstance(e, Ready)]
    assert ready == ["b"]


def test_runs_of_one_document_share_one_graph_live_and_replayed() -> None:
    """A document submitted again, or replayed for each of its runs, is compiled once: the
    runs share the graph (recovery of many runs of one workflow costs one compile)."""
    doc = workflow([node("a"), node("b")], [edge("a", "b")])
    d = JournaledDriver()
    first, second = d.submit(doc), d.submit(doc)
    gc.collect()  # nothing but the runs holds the compiled document
    third = d.submit(doc)
    assert first.graph is second.graph is third.graph
    engine, _ = replayed(d)
    gc.collect()
    graphs = {id(run.graph) for run in engine.runs.values()}
    assert len(engine.runs) == 3 and len(graphs) == 1


def test_event_ids_survive_compaction_of_forgotten_runs() -> None:
    """Records of a forgotten run can be dropped without renumbering later events."""
    d = JournaledDriver()
    first = d.submit(workflow([node("x")], []))
    d.run()
    second = d.submit(workflow([node("y")], []))
    assert d.forget([first.run_id]) == [first.run_id]
    kept = [r for r in d.records if getattr(r, "run_id", None) != first.run_id]
    d.records[:] = kept
    engine, envelopes = replayed(d)
    assert list(engine.runs) == [second.run_id]
    originals = [e for e in d.envelopes if e.scope.run_id == second.run_id]
    assert [e.id for e in envelopes] == [e.id for e in originals]


def test_a_forgotten_run_is_freed_at_once() -> None:
    """Forgetting a run lets its tasks and frames go by reference counting alone: memory
    comes back even for the history the daemon froze out of the cycle collector."""
    def tasks_alive() -> int:
        return sum(type(o) is Task for o in gc.get_objects())

    d = JournaledDriver()
    doc = workflow([container("c", "s"), node("after")], [edge("c", "after")],
                   [subgraph("s", [node("x"), node("y")], [edge("x", "y")])])
    gc.collect()
    gc.disable()
    try:
        run_id = d.submit(doc).run_id
        d.run()
        assert d.engine.runs[run_id].status == "succeeded"
        before = tasks_alive()
        assert d.forget([run_id]) == [run_id]
        assert tasks_alive() == before - 4  # c, after, and x, y of the frame c ran
    finally:
        gc.enable()


@pytest.mark.anyio
async def test_compaction_keeps_retained_runs_and_bounds_the_history(tmp_path: Path) -> None:
    """A snapshot drops forgotten runs' records; reopening replays only what is kept."""
    store = Store(tmp_path, segment_bytes=4096)
    store.open()
    d = JournaledDriver()
    d.engine.recorder = store.append
    old = [d.submit(workflow([node("x"), node("y")], [edge("x", "y")])) for _ in range(20)]
    d.run()
    kept = d.submit(workflow([node("z")], []))
    first_segment = tmp_path / "journal" / f"{1:020d}.journal"
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        d.forget([r.run_id for r in old])
        await store.compact()
        assert first_segment.exists()  # the newest snapshot's fallback still needs it
        d.advance(1)
        d.submit(workflow([node("w")], []))
        d.run()
        d.forget([r.run_id for r in d.engine.runs.values() if r.run_id != kept.run_id])
        await store.compact()
        tg.cancel_scope.cancel()
    store.close()
    assert not first_segment.exists()  # history before the previous snapshot is gone
    again = Store(tmp_path)
    recovered = again.open()
    again.close()
    assert {getattr(r, "run_id", None) for r in recovered.records} == {kept.run_id}
    engine = fresh_engine()
    replay(engine, recovered.records)
    assert state(engine) == {kept.run_id: state(d.engine)[kept.run_id]}


def test_retention_forgets_old_and_surplus_finished_runs_only() -> None:
    """Finished runs past max_age go, then the oldest beyond max_runs; active runs stay."""
    from datetime import timedelta

    from nodehost.recovery import Retention, runs_to_forget

    d = JournaledDriver()
    finished = []
    for _ in range(4):
        finished.append(d.submit(workflow([node("x")], [])))
        d.run()
        d.advance(3600)
    active = d.submit(workflow([node("x")], []))
    assert not active.final
    now = d.now
    by_age = runs_to_forget(d.engine.runs.values(), Retention(timedelta(hours=2.5), None), now)
    assert by_age == [finished[0].run_id, finished[1].run_id]
    by_count = runs_to_forget(d.engine.runs.values(), Retention(None, 1), now)
    assert by_count == [r.run_id for r in finished[:3]]
    assert active.run_id not in runs_to_forget(d.engine.runs.values(), Retention(None, 1),
                                               now + timedelta(days=365))


def test_a_replay_builds_only_the_events_a_buffer_can_still_hold() -> None:
    """With keep_events, the state and the event ids are the same, older events are only
    counted, and the newest come out exactly as they first did."""
    d = JournaledDriver()
    for _ in range(5):
        d.submit(workflow([node("a"), node("b"), node("c")], [edge("a", "b"), edge("b", "c")]))
        d.run()
    envelopes: list[Any] = []
    engine = fresh_engine(envelopes)
    replay(engine, d.records, keep_events=10)
    assert state(engine) == state(d.engine)
    assert engine.event_seq == d.engine.event_seq
    assert 10 <= len(envelopes) < len(d.envelopes)
    tail = [msgspec.to_builtins(e) for e in d.envelopes[-len(envelopes):]]
    assert [msgspec.to_builtins(e) for e in envelopes] == tail
    assert engine.quiet_until == 0  # live events are built again
