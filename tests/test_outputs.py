"""What a node produces is checked before it is accepted: nothing is reported `succeeded`
and then lost because the journal could not store it, and a chatty node cannot fill the
journal or the daemon's memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import output_nodes
from builders import workflow
from hosts import local_host
from nodehost.config import Config, ExecutorsConfig, OutputsConfig
from nodehost.host import build_host
from nodehost.plugins import Catalog
from nodehost.store.store import Store

pytestmark = pytest.mark.anyio


def catalog() -> Catalog:
    cat = Catalog()
    cat.add(output_nodes.package)
    return cat


def out_node(type: str, **params: Any) -> dict[str, Any]:
    return {"id": "n", "type": type, "package": {"name": "out", "version": "1.0"},
            "parameters": params}


def host_with(tmp_path: Path, executor: str = "inprocess", **outputs: Any) -> Any:
    store = Store(tmp_path / "store")
    store.open()
    config = Config(outputs=OutputsConfig(**outputs),
                    executors=ExecutorsConfig(default=executor, inprocess=[]))  # type: ignore[arg-type]
    return build_host(config, catalog(), store=store), store


async def run_one(tmp_path: Path, node: dict[str, Any], executor: str = "inprocess",
                  **outputs: Any) -> Any:
    host, store = host_with(tmp_path, executor, **outputs)
    try:
        with anyio.fail_after(30):
            async with host.running():
                run = await host.run(workflow([node]))
                await store.wait_durable()
        return run, host
    finally:
        store.close()


@pytest.mark.parametrize("executor", ["inprocess", "subprocess"])
async def test_a_result_over_the_limit_fails_the_attempt(tmp_path: Path, executor: str) -> None:
    run, _ = await run_one(tmp_path, out_node("out.big", bytes=5000), executor,
                           max_result_bytes=4096)
    task = run.tasks["n"]
    assert run.status == "failed" and task.error.code == "E.RESULT.TOO_LARGE"
    assert "over the limit of 4096" in task.error.message
    assert task.result is None


@pytest.mark.parametrize("executor", ["inprocess", "subprocess"])
async def test_a_result_the_journal_cannot_store_fails_the_attempt(
        tmp_path: Path, executor: str) -> None:
    """An integer past 64 bits: E.RESULT.UNENCODABLE, journaled, the same after a restart."""
    run, _ = await run_one(tmp_path, out_node("out.huge_int"), executor)
    assert run.tasks["n"].error.code == "E.RESULT.UNENCODABLE"
    again = Store(tmp_path / "store")
    recovered = again.open()
    try:
        host = local_host(catalog())
        host.recover(recovered)
        [restored] = host.engine.runs.values()
        assert restored.status == "failed"
        assert restored.tasks["n"].error.code == "E.RESULT.UNENCODABLE"
    finally:
        again.close()


async def test_a_partial_result_over_the_limit_fails_the_attempt(tmp_path: Path) -> None:
    run, _ = await run_one(tmp_path, out_node("out.partial", bytes=5000),
                           max_partial_bytes=1000)
    task = run.tasks["n"]
    assert task.error.code == "E.RESULT.TOO_LARGE" and task.result is None


async def test_output_past_the_log_budget_is_dropped_after_a_note(tmp_path: Path) -> None:
    """500 lines of 100 bytes with a 10,000-byte budget: the first 100 lines, one note,
    nothing more; the node still succeeds."""
    run, host = await run_one(tmp_path, out_node("out.chatty", lines=500), max_log_bytes=10_000)
    assert run.status == "succeeded"
    with host.bus.subscribe(lambda e: e.type == "node.result.delta", after=0) as sub:
        texts = [e.data.payload["text"] for e in sub.drain()]
    assert len(texts) == 101
    assert texts[99].startswith("00099") and "max_log_bytes" in texts[100]
