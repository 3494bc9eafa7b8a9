"""The scheduler on anyio: limits, cancellation, timeouts, retries, executors, fairness."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import anyio
import msgspec
import pytest

from hosts import local_host
from nodehost import Context, NodeError, Package
from nodehost.plugins import Catalog
from nodehost.runstate import Run

pytestmark = pytest.mark.anyio


class Probe:
    """Shared state the test nodes report into, and gates the test opens."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.peak_by_key: dict[str, int] = {}
        self.by_key: dict[str, int] = {}
        self.started: list[str] = []
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.want_entered = 1
        self.cancelled: list[str] = []


class Sleepy(msgspec.Struct):
    key: str = ""


class Out(msgspec.Struct):
    count: int


def make_catalog(probe: Probe) -> Catalog:
    pkg = Package("t.sched", "1.0")
    other = Package("t.other", "2.0")

    @pkg.node("t.block")
    async def block(ctx: Context, params: Sleepy) -> dict:
        probe.running += 1
        probe.peak = max(probe.peak, probe.running)
        probe.by_key[params.key] = probe.by_key.get(params.key, 0) + 1
        probe.peak_by_key[params.key] = max(probe.peak_by_key.get(params.key, 0),
                                            probe.by_key[params.key])
        probe.started.append(ctx.node_id)
        if len(probe.started) >= probe.want_entered:
            probe.entered.set()
        try:
            await probe.gate.wait()
        except BaseException:
            probe.cancelled.append(ctx.node_id)
            raise
        finally:
            probe.running -= 1
            probe.by_key[params.key] -= 1
        return {"node": ctx.node_id}

    @other.node("t.other.block")
    async def other_block(ctx: Context, params: dict) -> dict:
        return await block(ctx, Sleepy())

    @pkg.node("t.forever")
    async def forever(ctx: Context, params: dict) -> dict:
        probe.started.append(ctx.node_id)
        probe.entered.set()
        try:
            await anyio.sleep_forever()
        except BaseException:
            probe.cancelled.append(ctx.node_id)
            raise
        return {}

    @pkg.node("t.threaded")
    def threaded(ctx: Context, params: dict) -> dict:
        ctx.log(f"in {threading.current_thread().name}")
        ctx.progress(0.5, "half way")
        ctx.partial({"half": True})
        ctx.metric("items", 3)
        return {"thread": threading.current_thread() is not threading.main_thread()}

    @pkg.node("t.node_error")
    async def node_error(ctx: Context, params: dict) -> dict:
        raise NodeError("E.T.BROKEN", "the widget broke", remediation="replace the widget")

    @pkg.node("t.crash")
    async def crash(ctx: Context, params: dict) -> dict:
        return {"value": 1 / params.get("zero", 0)}

    @pkg.node("t.bad_result")
    async def bad_result(ctx: Context, params: dict) -> Out:
        return {"count": "many"}  # type: ignore[return-value]

    @pkg.node("t.typed")
    async def typed(ctx: Context, params: Sleepy) -> dict:
        return {"key": params.key}

    @pkg.node("t.stubborn")
    async def stubborn(ctx: Context, params: dict) -> dict:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            probe.cancelled.append(ctx.node_id)
        return {"swallowed": True}  # a node should not, but may, swallow its cancellation

    @pkg.node("t.yields")
    async def yields(ctx: Context, params: dict) -> dict:
        probe.started.append(ctx.node_id)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()  # raises at once in a cancelled scope
        return {"yielded": 3}

    @pkg.node("t.flaky", retry=3, backoff=0.01)
    async def flaky(ctx: Context, params: dict) -> dict:
        if ctx.attempt < 3:
            raise NodeError("E.T.FLAKY", f"attempt {ctx.attempt} failed")
        return {"attempt": ctx.attempt}

    catalog = Catalog()
    catalog.add(pkg)
    catalog.add(other)
    return catalog


def node(node_id: str, type: str, package: str = "t.sched", version: str = "1.0",
         **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": type, "package": {"name": package, "version": version},
            **extra}


def doc(*nodes: dict[str, Any], edges: tuple[tuple[str, str], ...] = (),
        client: str = "tests") -> dict[str, Any]:
    return {
        "workflow": {
            "id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "test"},
            "nodes": list(nodes),
            "edges": [{"source": {"node": a}, "target": {"node": b}} for a, b in edges],
        },
        "clientId": client,
    }


def by_id(run: Run) -> dict[str, Any]:
    return {t.task_id: t for t in run.tasks.values()}


async def test_global_parallelism_is_never_exceeded() -> None:
    """With parallelism 3, ten ready nodes never run more than three at once."""
    probe = Probe()
    probe.want_entered = 3
    host = local_host(make_catalog(probe), parallelism=3)
    async with host.running():
        run = host.submit(doc(*(node(f"n{i}", "t.block") for i in range(10))))
        await probe.entered.wait()
        assert host.scheduler.statistics()["running"] == 3
        probe.gate.set()
        await host.scheduler.wait_run(run.run_id)
    assert run.status == "succeeded"
    assert probe.peak == 3
    assert len(probe.started) == 10


async def test_per_package_limit_leaves_other_packages_free() -> None:
    """A package limit of 1 holds that package back but not another package."""
    probe = Probe()
    probe.want_entered = 3
    host = local_host(make_catalog(probe), parallelism=10, per_package={"t.sched": 1})
    nodes = [node(f"a{i}", "t.block") for i in range(3)]
    nodes += [node(f"b{i}", "t.other.block", "t.other", "2.0") for i in range(2)]
    async with host.running():
        run = host.submit(doc(*nodes))
        await probe.entered.wait()
        assert sorted(probe.started) == ["a0", "b0", "b1"]
        probe.gate.set()
        await host.scheduler.wait_run(run.run_id)
    assert run.status == "succeeded"
    assert len(probe.started) == 5


async def test_concurrency_key_runs_one_at_a_time_across_runs() -> None:
    """Nodes sharing a concurrencyKey (one camera) never overlap, even in different runs."""
    probe = Probe()
    probe.want_entered = 2
    host = local_host(make_catalog(probe), parallelism=10)
    def cam(i: int) -> dict[str, Any]:
        return node(f"cam{i}", "t.block", concurrencyKey="camera-1",
                    parameters={"key": "camera-1"})
    async with host.running():
        first = host.submit(doc(cam(0), cam(1), node("free", "t.block")))
        second = host.submit(doc(cam(2)))
        await probe.entered.wait()
        assert sorted(probe.started) == ["cam0", "free"]
        probe.gate.set()
        await host.scheduler.wait_run(first.run_id)
        await host.scheduler.wait_run(second.run_id)
    assert probe.peak_by_key["camera-1"] == 1
    assert first.status == second.status == "succeeded"


async def test_runs_share_the_slots_fairly() -> None:
    """A big run submitted first does not starve a small run submitted after it."""
    probe = Probe()
    probe.want_entered = 2
    host = local_host(make_catalog(probe), parallelism=2)
    async with host.running():
        big = host.submit(doc(*(node(f"big{i}", "t.block") for i in range(20))))
        small = host.submit(doc(node("small", "t.block")))
        await probe.entered.wait()
        probe.gate.set()
        await host.scheduler.wait_run(big.run_id)
        await host.scheduler.wait_run(small.run_id)
    tasks = [*big.tasks.values(), *small.tasks.values()]
    order = [t.task_id for t in sorted(tasks, key=lambda t: int(t.dispatch_id.split(".")[1]))]
    # big0 and big1 took both slots at once; then the queue alternates: big2, small, big3...
    assert order[:5] == ["big0", "big1", "big2", "small", "big3"]


async def test_cancel_stops_running_nodes_and_marks_the_rest() -> None:
    """Cancelling a run cancels the running node's scope; the downstream is cancelled."""
    probe = Probe()
    host = local_host(make_catalog(probe))
    async with host.running():
        run = host.submit(doc(node("a", "t.forever"), node("b", "t.block"), edges=(("a", "b"),)))
        await probe.entered.wait()
        assert host.scheduler.cancel(run.run_id, "operator said stop")
        await host.scheduler.wait_run(run.run_id)
        # the attempt's task has been cancelled through its scope
        while host.scheduler.statistics()["running"]:
            await anyio.lowlevel.checkpoint()
    assert run.status == "cancelled"
    assert probe.cancelled == ["a"]
    tasks = by_id(run)
    assert tasks["a"].status == "cancelled" and tasks["b"].status == "cancelled"
    assert tasks["a"].message == "operator said stop"


async def test_timeout_fails_the_node_and_cancels_it() -> None:
    """timeoutSeconds stops a hanging node and fails it with E.TIMEOUT."""
    probe = Probe()
    host = local_host(make_catalog(probe))
    async with host.running():
        run = await host.run(doc(node("hang", "t.forever", timeoutSeconds=0.05)))
    task = by_id(run)["hang"]
    assert run.status == "failed"
    assert task.status == "failed"
    assert task.error.code == "E.TIMEOUT"
    assert probe.cancelled == ["hang"]


async def test_timeout_then_retry_dispatches_again() -> None:
    """A node that timed out is dispatched again while it has attempts left."""
    probe = Probe()
    host = local_host(make_catalog(probe))
    async with host.running():
        run = await host.run(doc(node("hang", "t.forever", timeoutSeconds=0.02,
                                      retry={"maxAttempts": 2})))
    assert probe.started == ["hang", "hang"]
    assert by_id(run)["hang"].attempt == 2


async def test_retries_with_backoff_until_success() -> None:
    """A node failing twice then succeeding ends succeeded on its third attempt."""
    host = local_host(make_catalog(Probe()))
    async with host.running():
        run = await host.run(doc(node("f", "t.flaky")))
    assert run.status == "succeeded"
    assert by_id(run)["f"].result == {"attempt": 3}


async def test_sync_node_runs_in_a_thread_and_reports() -> None:
    """A sync node runs off the event loop; its logs, progress and partials arrive."""
    host = local_host(make_catalog(Probe()))
    with host.bus.subscribe() as seen:
        async with host.running():
            run = await host.run(doc(node("s", "t.threaded")))
        envelopes = seen.drain()
    task = by_id(run)["s"]
    assert run.status == "succeeded"
    assert task.result == {"half": True, "thread": True}
    assert task.metrics == {"items": 3.0}
    deltas = [msgspec.to_builtins(e.data) for e in envelopes if e.type == "node.result.delta"]
    assert deltas[0]["path"] == "/channels/log"
    assert deltas[0]["payload"]["text"].startswith("in ")
    assert deltas[1]["path"] == "/half"
    states = [msgspec.to_builtins(e.data)["state"] for e in envelopes if e.type == "node.state"]
    assert any(s.get("progress") == 0.5 and s.get("message") == "half way" for s in states)


async def test_node_error_carries_code_message_and_remediation() -> None:
    """NodeError fails the node with its code; the remediation is kept in the details."""
    host = local_host(make_catalog(Probe()))
    async with host.running():
        run = await host.run(doc(node("x", "t.node_error"), node("y", "t.block"),
                                 edges=(("x", "y"),)))
    x, y = by_id(run)["x"], by_id(run)["y"]
    assert (x.error.code, x.error.message) == ("E.T.BROKEN", "the widget broke")
    assert x.error.details == {"remediation": "replace the widget"}
    assert y.status == "skipped"
    assert run.error is not None and "x" in run.error.message


async def test_unexpected_exception_is_a_runner_failure_with_traceback() -> None:
    """Any other exception fails the node with E.RUNNER.FAILURE and where it happened."""
    host = local_host(make_catalog(Probe()))
    async with host.running():
        run = await host.run(doc(node("c", "t.crash")))
    err = by_id(run)["c"].error
    assert err.code == "E.RUNNER.FAILURE"
    assert err.message == "ZeroDivisionError: division by zero"
    assert "test_scheduler.py" in err.details["traceback"]


async def test_results_of_the_wrong_type_fail_without_retry() -> None:
    """A result that does not fit the declared type fails the node with E.NODE.RESULTS."""
    host = local_host(make_catalog(Probe()))
    async with host.running():
        run = await host.run(doc(node("r", "t.bad_result", retry={"maxAttempts": 3})))
    task = by_id(run)["r"]
    assert task.error.code == "E.NODE.RESULTS"
    assert "$.count" in task.error.message
    assert task.attempt == 1


async def test_parameters_bound_at_run_time_are_checked_at_dispatch() -> None:
    """A value delivered along an edge that does not fit fails with E.NODE.PARAMETERS."""
    host = local_host(make_catalog(Probe()))
    source = node("src", "t.crash", parameters={"zero": 1},
                  ui={"outputPorts": [{"key": "v", "binding": {"path": "/results/value"}}]})
    target = node("dst", "t.typed", ui={"inputPorts": [
        {"key": "k", "binding": {"path": "/parameters/key"}}]})
    document = doc(source, target)
    document["workflow"]["edges"] = [{"source": {"node": "src", "port": "v"},
                                      "target": {"node": "dst", "port": "k"}}]
    async with host.running():
        run = await host.run(document)
    task = by_id(run)["dst"]
    assert task.status == "failed"
    assert task.error.code == "E.NODE.PARAMETERS"
    assert "$.parameters.key" in task.error.message


async def test_submitted_before_start_runs_once_started() -> None:
    """Runs submitted before the scheduler starts are dispatched when it does."""
    host = local_host(make_catalog(Probe()))
    run = host.submit(doc(node("t", "t.typed", parameters={"key": "k"})))
    async with host.running():
        await host.scheduler.wait_run(run.run_id)
    assert by_id(run)["t"].result == {"key": "k"}


async def test_a_cancelled_attempt_leaves_the_next_one_on_its_worker_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With one slot, the nodes after a timed-out one (even one that swallowed its
    cancellation) run on the same worker, wait for things and succeed."""
    import nodehost.scheduler

    monkeypatch.setattr(nodehost.scheduler, "_monotonic", lambda: 0.0)  # no time slices
    probe = Probe()
    host = local_host(make_catalog(probe), parallelism=1)
    with anyio.fail_after(5):
        async with host.running():
            run = await host.run(doc(node("hang", "t.forever", timeoutSeconds=0.02),
                                     node("stubborn", "t.stubborn", timeoutSeconds=0.02),
                                     node("after", "t.yields")))
    tasks = by_id(run)
    assert [tasks[n].error.code for n in ("hang", "stubborn")] == ["E.TIMEOUT"] * 2
    assert probe.cancelled == ["hang", "stubborn"]
    assert probe.started == ["hang", "after"]  # each attempt ran once (stubborn: no probe)
    assert tasks["after"].status == "succeeded" and tasks["after"].result == {"yielded": 3}


async def test_nodes_that_never_wait_still_let_other_tasks_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A long chain of nodes that return at once does not hold the event loop: other tasks
    (the API, event streams) run in between, at least every few milliseconds."""
    import nodehost.scheduler

    clock = iter(range(1_000_000))
    monkeypatch.setattr(nodehost.scheduler, "_monotonic", lambda: next(clock) / 1000)  # 1 ms a read
    host = local_host(make_catalog(Probe()))
    n = 40
    chain = [node(f"n{i}", "t.typed") for i in range(n)]
    seen: set[int] = set()
    async with host.running():
        run = host.submit(doc(*chain, edges=tuple((f"n{i}", f"n{i + 1}") for i in range(n - 1))))
        while not run.final:
            seen.add(sum(t.status == "succeeded" for t in run.tasks.values()))
            await anyio.lowlevel.checkpoint()
    assert run.status == "succeeded"
    # this task looked in at many points of the chain, not only before and after it
    assert len(seen - {0, n}) >= n // 4


async def test_a_timed_out_attempt_gives_its_package_slot_back_once() -> None:
    """With a package limit of 1, the nodes queued behind a timed-out one run one by one."""
    probe = Probe()
    host = local_host(make_catalog(probe), parallelism=4, per_package={"t.sched": 1})
    async with host.running():
        run = host.submit(doc(node("hang", "t.forever", timeoutSeconds=0.02),
                              node("b1", "t.block"), node("b2", "t.block")))
        probe.want_entered = 2  # hang, then the first block
        while len(probe.started) < 2:
            probe.entered = anyio.Event()
            await probe.entered.wait()
        await anyio.wait_all_tasks_blocked()
        assert probe.running == 1 and host.scheduler.statistics()["running"] == 1
        probe.gate.set()
        await host.scheduler.wait_run(run.run_id)
    assert probe.peak == 1 and run.status == "failed"


async def test_many_workers_together_let_other_tasks_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide fan-out of nodes that return at once, on 32 workers: another task (an event
    stream, the API) gets a turn at least every hundred or so nodes, not once per worker."""
    import nodehost.scheduler

    monkeypatch.setattr(nodehost.scheduler, "_monotonic", lambda: 0.0)  # only the count
    host = local_host(make_catalog(Probe()), parallelism=32)
    n = 1000
    fan = [node("root", "t.typed"), *(node(f"n{i}", "t.typed") for i in range(n))]
    seen: list[int] = []
    async with host.running():
        run = host.submit(doc(*fan, edges=tuple(("root", f"n{i}") for i in range(n))))
        while not run.final:
            seen.append(sum(t.status == "succeeded" for t in run.tasks.values()))
            await anyio.lowlevel.checkpoint()
    assert run.status == "succeeded"
    gaps = [b - a for a, b in itertools.pairwise([*seen, n + 1])]
    # a burst, then one attempt of each other worker; trio runs tasks in batches whose
    # order it may reverse, so this task may look in before one batch and after the next
    assert max(gaps) <= 2 * (nodehost.scheduler._BURST + 32)
