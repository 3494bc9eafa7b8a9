"""The subprocess executor: results, reports, warm reuse, and containment of bad nodes."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest

import subprocess_nodes
from hosts import local_host
from nodehost import Context, Package
from nodehost.events import Envelope
from nodehost.executors.subprocess import SubprocessExecutor
from nodehost.host import Host
from nodehost.plugins import Catalog
from nodehost.runstate import Run

pytestmark = pytest.mark.anyio

PKG = {"name": "t.isolated", "version": "1.0"}


def node(node_id: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": f"t.isolated.{kind}", "package": PKG, **extra}


def doc(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "t"},
            "nodes": list(nodes)}


class Harness:
    def __init__(self, host: Host, executor: SubprocessExecutor) -> None:
        self.host = host
        self.executor = executor
        self.events: list[Envelope] = []

    async def run(self, *nodes: dict[str, Any]) -> Run:
        return await self.host.run(doc(*nodes))

    def deltas(self, node_id: str) -> list[dict[str, Any]]:
        """The node.result.delta events of a node, as on the wire."""
        return [msgspec.to_builtins(e.data) for e in self.events
                if e.type == "node.result.delta" and e.data.node_id == node_id]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    catalog = Catalog()
    catalog.add(subprocess_nodes.package)
    holder: list[Harness] = []
    host = local_host(catalog, executor="subprocess",
                      observers=[lambda e: holder[0].events.append(e)],
                      executors={"idle_workers": 1, "memory_limit_mb": 400,
                                 "kill_grace_seconds": 0.5})
    executor = host.executors["subprocess"]
    assert isinstance(executor, SubprocessExecutor)
    holder.append(Harness(host, executor))
    async with host.running():
        yield holder[0]
    assert executor.statistics()["idle"] == 0  # closed with the host


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_results_and_reports_come_back_from_the_worker(harness: Harness) -> None:
    """Results, progress, logs, prints, partials and metrics cross the process boundary."""
    run = await harness.run(node("e", "echo", parameters={"text": "ab", "times": 2}))
    task = run.tasks["e"]
    assert run.status == "succeeded", task.error
    assert task.result["text"] == "abab"
    assert task.result["first"] == "ab"
    assert task.result["pid"] != os.getpid()
    assert task.metrics == {"length": 2.0}
    channels = [(d["chunkMeta"]["channel"], d["payload"].get("text")) for d in
                harness.deltas("e") if "chunkMeta" in d]
    assert ("log", "to the log") in channels
    assert ("stderr", "printed by the node\n") in channels
    states = [msgspec.to_builtins(e.data)["state"] for e in harness.events
              if e.type == "node.state"]
    assert any(s.get("progress") == 0.5 and s.get("message") == "half" for s in states)


async def test_bytes_chunks_and_sync_nodes(harness: Harness) -> None:
    """A sync node's byte chunks arrive base64-encoded with their mime type."""
    run = await harness.run(node("s", "sync"))
    assert run.status == "succeeded"
    [chunk] = [d for d in harness.deltas("s") if d["chunkMeta"]["channel"] == "raw"]
    assert chunk["payload"]["mimeType"] == "application/octet-stream"
    assert chunk["payload"]["data"] == "AAE="


async def test_a_warm_worker_serves_the_next_attempt(harness: Harness) -> None:
    """The second run of a node type reuses the warm worker: no new process."""
    first = await harness.run(node("a", "echo", parameters={"text": "x"}))
    second = await harness.run(node("b", "echo", parameters={"text": "y"}))
    assert first.tasks["a"].result["pid"] == second.tasks["b"].result["pid"]
    assert harness.executor.started == 1


async def test_async_attempts_share_one_worker_at_once(harness: Harness) -> None:
    """Two async nodes are in flight in one worker together: the one waits for the other,
    which would never come if each had a worker (or the worker ran one at a time)."""
    run = await harness.run(node("w", "wait", timeoutSeconds=20),
                            node("r", "release", timeoutSeconds=20))
    assert run.status == "succeeded", run.error
    assert run.tasks["w"].result["pid"] == run.tasks["r"].result["pid"]
    assert harness.executor.started == 1


async def test_what_an_attempt_leaves_running_does_not_reach_the_next(
        harness: Harness) -> None:
    """The worker keeps one event loop across attempts, but a task a node left behind is
    cancelled before the next attempt runs."""
    first = await harness.run(node("a", "leaves_a_task"))
    second = await harness.run(node("b", "leaves_a_task"))
    assert first.tasks["a"].result["pid"] == second.tasks["b"].result["pid"]
    assert second.tasks["b"].result["previous_running"] is False


async def test_a_crash_fails_only_that_node(harness: Harness) -> None:
    """A worker killed by SIGSEGV fails its node with the signal; its sibling succeeds."""
    run = await harness.run(node("boom", "crash"), node("fine", "echo",
                                                        parameters={"text": "ok"}))
    boom = run.tasks["boom"]
    assert boom.status == "failed"
    assert boom.error.code == "E.RUNNER.FAILURE"
    assert "killed by signal SIGSEGV" in boom.error.message
    assert boom.error.details["signal"] == "SIGSEGV"
    assert run.tasks["fine"].status == "succeeded"
    # and the next attempt gets a fresh worker
    again = await harness.run(node("e", "echo", parameters={"text": "z"}))
    assert again.status == "succeeded"


async def test_an_exit_code_is_reported(harness: Harness) -> None:
    """A worker that exits mid-attempt fails the node with its exit code."""
    run = await harness.run(node("x", "exit", parameters={"code": 3}))
    assert "exit code 3" in run.tasks["x"].error.message
    assert run.tasks["x"].error.details["exitCode"] == 3


async def test_a_hang_is_timed_out_and_its_process_tree_killed(harness: Harness) -> None:
    """timeoutSeconds kills the worker and the process it started."""
    run = await harness.run(node("h", "hang", timeoutSeconds=1.5))
    task = run.tasks["h"]
    assert task.error.code == "E.TIMEOUT"
    [log] = [d["payload"]["text"] for d in harness.deltas("h")
             if d["chunkMeta"]["channel"] == "log"]
    grandchild = int(log.split()[1])
    with anyio.fail_after(10):
        while alive(grandchild):
            await anyio.sleep(0.02)


async def test_cancel_kills_the_node_process(harness: Harness) -> None:
    """Cancelling a run kills the running node's worker process group."""
    host = harness.host
    run = host.submit(doc(node("h", "hang")))
    with anyio.fail_after(30):
        while run.tasks["h"].progress is None:  # the node said it is hanging
            await anyio.sleep(0.01)
    [log] = [d["payload"]["text"] for d in harness.deltas("h")
             if d["chunkMeta"]["channel"] == "log"]
    grandchild = int(log.split()[1])
    host.scheduler.cancel(run.run_id)
    await host.scheduler.wait_run(run.run_id)
    assert run.status == "cancelled"
    with anyio.fail_after(10):
        while alive(grandchild):
            await anyio.sleep(0.02)


async def test_a_memory_blow_up_fails_only_that_node(harness: Harness) -> None:
    """Over the worker's memory limit, the node fails; the daemon is untouched."""
    run = await harness.run(node("m", "hog"), node("ok", "echo", parameters={"text": "k"}))
    assert run.tasks["m"].status == "failed"
    assert "out of memory" in run.tasks["m"].error.message
    assert run.tasks["ok"].status == "succeeded"


async def test_node_errors_and_bad_parameters(harness: Harness) -> None:
    """NodeError keeps its code and remediation; a bound value of the wrong type fails the
    node in the worker without a retry."""
    source = node("s", "sync", ui={"outputPorts": [
        {"key": "pid", "binding": {"path": "/results/pid"}}]})
    target = node("p", "echo", retry={"maxAttempts": 3}, ui={"inputPorts": [
        {"key": "text", "binding": {"path": "/parameters/text"}}]})
    document = doc(node("f", "fail"), source, target)
    document["edges"] = [{"source": {"node": "s", "port": "pid"},
                          "target": {"node": "p", "port": "text"}}]
    run = await harness.host.run(document)
    f, p = run.tasks["f"], run.tasks["p"]
    assert (f.error.code, f.error.details) == ("E.T.NOPE", {"remediation": "say yes"})
    assert p.error.code == "E.NODE.PARAMETERS"
    assert "$.parameters.text" in p.error.message
    assert p.attempt == 1


async def test_functions_that_cannot_be_imported_are_refused_clearly() -> None:
    """A node defined inside a function cannot run in a worker; the error says why."""
    pkg = Package("t.local", "1.0")

    @pkg.node("t.local.x")
    async def local(ctx: Context, params: dict) -> dict:
        return {}

    ghost = Package("t.ghost", "1.0")

    async def ghostly(ctx: Context, params: dict) -> dict:
        return {}

    ghostly.__module__ = "no_such_module_here"
    ghostly.__qualname__ = "ghostly"
    ghost.node("t.ghost.x")(ghostly)
    catalog = Catalog()
    catalog.add(pkg)
    catalog.add(ghost)
    host = local_host(catalog, executor="subprocess")
    async with host.running():
        run = await host.run(doc(
            {"id": "l", "type": "t.local.x", "package": {"name": "t.local", "version": "1.0"}},
            {"id": "g", "type": "t.ghost.x", "package": {"name": "t.ghost", "version": "1.0"}},
        ))
    local_error, ghost_error = run.tasks["l"].error, run.tasks["g"].error
    assert local_error.code == ghost_error.code == "E.DISPATCH.UNAVAILABLE"
    assert "is not importable" in local_error.message
    assert "cannot import no_such_module_here:ghostly" in ghost_error.message
    assert "No module named 'no_such_module_here'" in ghost_error.message


def test_worker_exit_signal_names() -> None:
    """Signals are named the way operators know them."""
    from nodehost.executors.subprocess import _exit_text

    assert _exit_text(-signal.SIGKILL) == "killed by signal SIGKILL"
    assert _exit_text(2) == "exit code 2"


@pytest.mark.parametrize(("limit", "status"), [(None, "failed"), (0, "succeeded")],
                         ids=["default limit", "no limit"])
async def test_workers_have_a_memory_limit_by_default(limit: int | None, status: str) -> None:
    """Without a word in the config a worker may map at most 2 GiB; 0 lifts the limit."""
    catalog = Catalog()
    catalog.add(subprocess_nodes.package)
    executors = {} if limit is None else {"memory_limit_mb": limit}
    host = local_host(catalog, executor="subprocess", executors=executors)
    async with host.running():
        run = await host.run(doc(node("r", "reserve", parameters={"mib": 3072})))
    task = run.tasks["r"]
    assert task.status == status, task.error
