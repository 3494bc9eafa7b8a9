"""Sync nodes in-process: a thread each, until a node type shows it is quick enough to run
on the event loop (no thread hop); back to threads for good once it is not."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any

import msgspec
import pytest

from hosts import local_host
from nodehost import Context, Package
from nodehost.events import Envelope
from nodehost.executors.inprocess import DEMOTE_FACTOR, PROMOTE_AFTER
from nodehost.plugins import Catalog

pytestmark = pytest.mark.anyio

package = Package("t.inline", "1.0")
LEAK: contextvars.ContextVar[str] = contextvars.ContextVar("leak", default="clean")
BUDGET_US = 2000  # generous: a quick node here takes some microseconds


class Work(msgspec.Struct):
    seconds: float = 0.0
    fail: bool = False


class Where(msgspec.Struct):
    thread: int
    reported: bool


@package.node("t.inline.where")
def where(ctx: Context, params: Work) -> Where:
    if params.seconds:
        time.sleep(params.seconds)  # the node's work: a slow attempt, not a wait on the test
    if params.fail:
        raise ValueError("asked to fail")
    LEAK.set("leaked")
    ctx.progress(0.5)
    return Where(thread=threading.get_ident(), reported=True)


def doc(*params: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    extra = {} if timeout is None else {"timeoutSeconds": timeout}
    return {"id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "t"},
            "nodes": [{"id": f"n{i}", "type": "t.inline.where",
                       "package": {"name": "t.inline", "version": "1.0"},
                       "parameters": p, **extra} for i, p in enumerate(params)]}


def host(budget_us: int = BUDGET_US, events: list[Envelope] | None = None) -> Any:
    catalog = Catalog()
    catalog.add(package)
    return local_host(catalog, executor="inprocess", parallelism=1,
                      executors={"inline_sync_us": budget_us},
                      observers=[] if events is None else [events.append])


async def threads_of(h: Any, *params: dict[str, Any], timeout: float | None = None,
                     ) -> list[bool]:
    """One run, its nodes one after another: for each, whether it ran on the loop's thread."""
    run = await h.run(doc(*params, timeout=timeout))
    assert run.status == "succeeded", run.error
    loop_thread = threading.get_ident()
    return [run.tasks[f"n{i}"].result["thread"] == loop_thread for i in range(len(params))]


async def test_a_quick_sync_node_type_moves_onto_the_event_loop() -> None:
    h = host()
    async with h.running():
        inline = await threads_of(h, *[{}] * (PROMOTE_AFTER + 5))
    assert inline == [False] * PROMOTE_AFTER + [True] * 5
    assert LEAK.get() == "clean"  # what an inline node sets stays in its own context


async def test_a_slow_attempt_sends_the_type_back_to_threads_for_good(
        caplog: pytest.LogCaptureFixture) -> None:
    h = host()
    slow = {"seconds": BUDGET_US * DEMOTE_FACTOR * 1.5 / 1e6}
    async with h.running():
        assert (await threads_of(h, *[{}] * PROMOTE_AFTER))[-1] is False
        with caplog.at_level(logging.WARNING, "nodehost.executors.inprocess"):
            inline = await threads_of(h, {}, slow, *[{}] * (PROMOTE_AFTER + 2))
    assert inline == [True, True] + [False] * (PROMOTE_AFTER + 2)
    assert "t.inline.where of t.inline==1.0" in caplog.text
    assert "run in threads from now on" in caplog.text


async def test_a_type_that_is_not_quick_in_threads_stays_there() -> None:
    h = host(budget_us=1)  # nothing is that quick
    async with h.running():
        assert await threads_of(h, *[{"seconds": 0.0001}] * (PROMOTE_AFTER + 3)) == \
            [False] * (PROMOTE_AFTER + 3)


async def test_attempts_with_a_timeout_always_take_a_thread() -> None:
    h = host()
    async with h.running():
        await threads_of(h, *[{}] * PROMOTE_AFTER)
        assert await threads_of(h, {}, {}, timeout=30) == [False, False]
        assert await threads_of(h, {}) == [True]


async def test_a_budget_of_zero_keeps_every_sync_node_in_a_thread() -> None:
    h = host(budget_us=0)
    async with h.running():
        assert await threads_of(h, *[{}] * (PROMOTE_AFTER + 3)) == [False] * (PROMOTE_AFTER + 3)


async def test_inline_nodes_report_and_fail_as_threaded_ones_do() -> None:
    events: list[Envelope] = []
    h = host(events=events)
    async with h.running():
        await threads_of(h, *[{}] * PROMOTE_AFTER)
        run = await h.run(doc({"fail": True}))
        assert run.status == "failed"
        error = run.tasks["n0"].error
        assert (error.code, error.message) == ("E.RUNNER.FAILURE", "ValueError: asked to fail")
        assert "asked to fail" in error.details["traceback"]
        events.clear()
        run = await h.run(doc({}))
        assert run.status == "succeeded"
        assert run.tasks["n0"].result == {"thread": threading.get_ident(), "reported": True}
        progress = [e.data.state.progress for e in events if e.type == "node.state"]
        assert 0.5 in progress
