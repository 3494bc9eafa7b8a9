"""The write-ahead rule: nothing is seen or done before the records behind it are durable.

An event reaches subscribers only once the record it comes from is on disk (so a crash can
never take back an event a client saw, nor give its id to another event), and an attempt of
a node that is not idempotent starts only once its Dispatch record is (so a crash never
makes it run twice: the restart fails it with E.HOST.RESTARTED instead). Idempotent nodes
start at once: running one twice is harmless. The journal here is held back by the test,
as a slow disk would hold it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from builders import workflow
from hosts import local_host
from nodehost.node_api import Context, Package
from nodehost.plugins import Catalog
from nodehost.store.journal import JournalWriter
from nodehost.store.store import Store

pytestmark = pytest.mark.anyio

EFFECTS: list[str] = []  # what the node with side effects did
PURE_RAN: list[anyio.Event] = []


def catalog() -> Catalog:
    package = Package("wal", "1.0")

    @package.node("wal.effect")
    def effect(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        """A side effect: must happen once, whatever crashes."""
        EFFECTS.append(ctx.task_id)
        return {}

    @package.node("wal.pure", idempotent=True)
    async def pure(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        """Harmless to run twice."""
        PURE_RAN[0].set()
        return {}

    cat = Catalog()
    cat.add(package)
    return cat


def wal_node(id: str, type: str) -> dict[str, Any]:
    return {"id": id, "type": type, "package": {"name": "wal", "version": "1.0"}}


@pytest.fixture
def held_journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Journal writes wait until the event is set (set at the end in any case; a failing
    test waits up to 10 s for the host to stop)."""
    gate = threading.Event()
    real = JournalWriter.write_batch

    def write_batch(self: JournalWriter, batch: Any) -> None:
        assert gate.wait(10), "the test never released the journal"
        real(self, batch)

    monkeypatch.setattr(JournalWriter, "write_batch", write_batch)
    try:
        yield gate
    finally:
        gate.set()


async def test_events_and_side_effects_wait_for_the_journal(
        tmp_path: Path, held_journal: threading.Event) -> None:
    """While the journal is held: the idempotent node runs, the other one waits, and no
    event goes out; once it is durable, every event goes out in order and the waiting node
    runs, once."""
    EFFECTS.clear()
    PURE_RAN[:] = [anyio.Event()]
    store = Store(tmp_path / "store")
    store.open()
    host = local_host(catalog(), store=store)
    try:
        with host.bus.subscribe() as subscription:
            with anyio.fail_after(10):
                async with host.running():
                    run = host.submit(workflow([wal_node("side", "wal.effect"),
                                                wal_node("pure", "wal.pure")]))
                    await PURE_RAN[0].wait()  # started without waiting for the disk
                    assert EFFECTS == []
                    assert host.scheduler.statistics()["waiting_for_journal"] == 1
                    assert subscription.drain() == [] and host.bus.published == 0
                    assert host.engine.event_seq > 0 and host.last_event_id == 0

                    held_journal.set()
                    await host.scheduler.wait_run(run.run_id)
                    await store.wait_durable()
                    assert run.status == "succeeded"
                    assert EFFECTS == ["side"]
                    events = subscription.drain()
                    assert [int(e.id) for e in events] == list(
                        range(1, host.engine.event_seq + 1))
                    assert host.last_event_id == host.engine.event_seq
                    assert host.scheduler.statistics()["waiting_for_journal"] == 0
    finally:
        store.close()


async def test_a_cancel_while_waiting_for_the_journal_never_starts_the_node(
        tmp_path: Path, held_journal: threading.Event) -> None:
    """A run cancelled while its node waits for the disk: the node never runs."""
    EFFECTS.clear()
    store = Store(tmp_path / "store")
    store.open()
    host = local_host(catalog(), store=store)
    try:
        with anyio.fail_after(10):
            async with host.running():
                run = host.submit(workflow([wal_node("side", "wal.effect")]))
                assert host.scheduler.statistics()["waiting_for_journal"] == 1
                assert host.scheduler.cancel(run.run_id)
                held_journal.set()
                await host.scheduler.wait_run(run.run_id)
                await store.wait_durable()
        assert run.status == "cancelled" and EFFECTS == []
    finally:
        store.close()
