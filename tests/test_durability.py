"""Durability of the daemon: restarts, interrupted nodes, disk full, corruption, fsync errors.

A real daemon (uvicorn on a Unix socket) with its journal in a temporary state directory;
asyncio only, as uvicorn.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from http_support import (
    SseReader,
    catalog,
    daemon_config,
    doc,
    gated,
    node,
    release,
    run_done,
    short_tmpdir,
)
from nodehost import Context, Package
from nodehost.config import Config
from nodehost.plugins import Catalog
from nodehost.service import Daemon, StartError
from nodehost.store import journal as journal_module
from nodehost.store import snapshot as snapshot_module
from nodehost.store.journal import DiskFull, JournalWriter, segments
from nodehost.store.store import StoreFailed

pytestmark = pytest.mark.anyio

resumable = Package("t.resumable", "1.0")
_runs: list[int] = []


@resumable.node("t.resumable.count", idempotent=True, retry=2)
async def count(ctx: Context, params: dict) -> dict:
    """Idempotent: blocks on its first attempt (until the host goes), succeeds after."""
    _runs.append(ctx.attempt)
    if ctx.attempt == 1:
        await anyio.sleep_forever()
    return {"attempt": ctx.attempt}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def full_catalog() -> Catalog:
    cat = catalog()
    cat.add(resumable)
    return cat


class Live:
    def __init__(self, daemon: Daemon, path: str) -> None:
        self.daemon = daemon
        self.client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=path),
                                        base_url="http://localhost/api/v1")

    @property
    def engine(self) -> Any:
        assert self.daemon.host is not None
        return self.daemon.host.engine

    async def submit(self, document: dict[str, Any], **headers: str) -> str:
        response = await self.client.post("/runs", json=document, headers=headers)
        assert response.status_code == 202, response.text
        return response.json()["runId"]

    async def wait_final(self, run_id: str) -> dict[str, Any]:
        assert self.daemon.host is not None
        await self.daemon.host.scheduler.wait_run(run_id)
        response = await self.client.get(f"/runs/{run_id}")
        return response.json()


@asynccontextmanager
async def daemon(config: Config, *, crash: bool = False) -> AsyncIterator[Live]:
    """A running daemon; at the end it stops gracefully, or with `crash` is cut off where it
    stands (its tasks cancelled: no drain, nothing recorded for the running nodes)."""
    d = Daemon(config, full_catalog())
    d.open()
    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        live = Live(d, config.server.address().path or "")
        try:
            yield live
        finally:
            await live.client.aclose()
            if crash:
                tg.cancel_scope.cancel()
            else:
                d.stop()


def nodes(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["taskId"]: n for n in summary["nodes"]}


async def test_a_restart_keeps_runs_events_documents_and_idempotency_keys() -> None:
    """Everything acknowledged before a stop is there after it, and event ids go on."""
    with short_tmpdir() as tmp:
        config = daemon_config(tmp)
        done_doc = doc(node("a", seconds=0))
        done_doc["workflow"]["x-dashboard"] = {"layout": "grid"}  # unknown: kept as sent
        hung_doc, _ = gated()
        async with daemon(config, crash=True) as first:
            done = await first.submit(done_doc, **{"Idempotency-Key": "key-1"})
            hung = await first.submit(hung_doc)
            before = await first.wait_final(done)
            last_id = first.engine.event_seq
        async with daemon(config) as second:
            assert second.daemon.recovery is not None
            assert second.daemon.recovery.resumed["interrupted"] == 1
            after = (await second.client.get(f"/runs/{done}")).json()
            assert after == before
            # the node that was running is failed: its type is not idempotent
            failed = await second.wait_final(hung)
            assert failed["status"] == "failed"
            [gate] = [n for n in failed["nodes"] if n["status"] == "failed"]
            assert gate["error"]["code"] == "E.HOST.RESTARTED"
            # the same key and body give the same run, across the restart
            again = await second.client.post("/runs", json=done_doc,
                                             headers={"Idempotency-Key": "key-1"})
            assert again.status_code == 202 and again.json()["runId"] == done
            definition = (await second.client.get(f"/runs/{done}/definition")).json()
            assert definition["x-dashboard"] == {"layout": "grid"}
            # event ids continue: what came after the stop replays from last_id + 1
            async with second.client.stream(
                "GET", "/events", params={"runId": hung},
                headers={"Last-Event-ID": str(last_id)},
            ) as response:
                frames = await SseReader(response).until(run_done(hung))
            assert int(frames[0]["id"]) == last_id + 1
            assert all(f["event"] != "stream.reset" for f in frames)


async def test_a_graceful_stop_queues_running_nodes_to_run_after_the_restart() -> None:
    """Stopped by SIGTERM (drain over), a running node is queued again, not failed, and runs
    after the restart without using up a retry."""
    with short_tmpdir() as tmp:
        config = daemon_config(tmp)  # drain_seconds = 0: stop running nodes at once
        hung_doc, gate_name = gated()
        async with daemon(config) as first:
            run_id = await first.submit(hung_doc)
            with anyio.fail_after(10):
                while first.engine.runs[run_id].status != "running":
                    await anyio.sleep(0.01)
        async with daemon(config) as second:
            task = next(iter(second.engine.runs[run_id].tasks.values()))
            assert task.status == "running" and task.tries == 1
            assert second.daemon.recovery.resumed["interrupted"] == 0  # type: ignore[union-attr]
            release(gate_name)
            summary = await second.wait_final(run_id)
        assert summary["status"] == "succeeded"
        [only] = summary["nodes"]
        assert only["metadata"]["attempt"] == 2


async def test_idempotent_nodes_resume_after_a_crash() -> None:
    """A running node that declared itself idempotent runs again after a crash."""
    _runs.clear()
    with short_tmpdir() as tmp:
        config = daemon_config(tmp)
        document = doc(node("n", type="t.resumable.count"))
        document["workflow"]["nodes"][0]["package"] = {"name": "t.resumable", "version": "1.0"}
        async with daemon(config, crash=True) as first:
            run_id = await first.submit(document)
            with anyio.fail_after(10):
                while not _runs:
                    await anyio.sleep(0.01)
        async with daemon(config) as second:
            summary = await second.wait_final(run_id)
    assert summary["status"] == "succeeded"
    assert nodes(summary)["n"]["result"] == {"attempt": 2}
    assert _runs == [1, 2]


async def test_a_full_disk_refuses_new_runs_with_507_and_keeps_serving_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the journal cannot be written: 507 for new runs, reads go on; then it recovers."""
    real = JournalWriter.write_batch
    full = {"on": False}

    def write_batch(self: JournalWriter, batch: Any) -> None:
        if full["on"] and batch[1]:
            raise DiskFull("journal: No space left on device")
        real(self, batch)

    monkeypatch.setattr(JournalWriter, "write_batch", write_batch)
    with short_tmpdir() as tmp:
        config = daemon_config(tmp)
        async with daemon(config) as live:
            earlier = await live.submit(doc(node("a", seconds=0)))
            await live.wait_final(earlier)
            journal = live.daemon.journal
            assert journal is not None
            journal.full_retry_interval = 0.05
            full["on"] = True
            # a run submitted now is journaled, but not acknowledged until there is space
            hung_doc, gate_name = gated()
            pending = live.client.post("/runs", json=hung_doc)
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    results: list[httpx.Response] = []

                    async def post() -> None:
                        results.append(await pending)

                    tg.start_soon(post)
                    while not journal.full:
                        await anyio.sleep(0.01)
                    refused = await live.client.post("/runs", json=doc(node("b", seconds=0)))
                    assert refused.status_code == 507
                    assert refused.json()["error"] == "insufficient_storage"
                    read = await live.client.get(f"/runs/{earlier}")
                    assert read.status_code == 200
                    assert not results  # the first request is not acknowledged yet
                    full["on"] = False
            assert results[0].status_code == 202
            assert not journal.full
            release(gate_name)
            ok = await live.client.post("/runs", json=doc(node("c", seconds=0)))
            assert ok.status_code == 202


class FullDisk:
    """ENOSPC from the writes of one place: journal frames ("append"), a new segment's
    header ("roll") or a snapshot ("snapshot"), while `full` is set (the writes below the
    store, where a real full disk answers)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
        self.where = where
        self.full = False
        self.refused = 0
        real = journal_module._write_all

        def journal_write(fd: int, data: Any) -> None:
            header = bytes(data[:4]) == journal_module.MAGIC and len(data) == 16
            if self.full and (where == "roll") == header and where != "snapshot":
                self.refused += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd, data)

        def snapshot_write(fd: int, data: Any) -> None:
            if self.full and where == "snapshot":
                self.refused += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd, data)

        monkeypatch.setattr(journal_module, "_write_all", journal_write)
        monkeypatch.setattr(snapshot_module, "_write_all", snapshot_write)


@pytest.mark.parametrize("where", ["append", "roll", "snapshot"])
async def test_a_full_disk_anywhere_answers_507_and_recovers_by_itself(
        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Whichever write finds the disk full: new runs get 507, reads and every POST get an
    answer, the daemon keeps running, takes runs again once there is space, and after a
    restart every acknowledged run is there."""
    disk = FullDisk(monkeypatch, where)
    with short_tmpdir() as tmp:
        config = daemon_config(tmp, toml="[journal]\nsnapshot_every_records = 100\n"
                                         "[retention]\ncheck_interval_seconds = 0.05\n")
        acked: list[str] = []
        async with daemon(config) as live:
            journal = live.daemon.journal
            assert journal is not None
            journal.full_retry_interval = 0.05
            acked.append(await live.submit(doc(node("a", seconds=0))))
            await live.wait_final(acked[0])
            if where == "roll":
                assert journal._writer is not None
                journal._writer.segment_bytes = 1  # every batch starts a segment
            disk.full = True
            answers: list[int] = []
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:

                    async def post() -> None:
                        response = await live.client.post("/runs", json=doc(node("b",
                                                                                 seconds=0)))
                        answers.append(response.status_code)
                        if response.status_code == 202:
                            acked.append(response.json()["runId"])

                    while not journal.full:  # a snapshot is due after about 30 runs
                        answered = len(answers)
                        tg.start_soon(post)  # the one that finds the disk full waits for space
                        while len(answers) == answered and not journal.full:
                            await anyio.sleep(0.005)  # polling both, under fail_after
                    tg.start_soon(post)  # may wait for space (it was journaled), or be 507
                    refused = await live.client.post("/runs", json=doc(node("c", seconds=0)))
                    assert refused.status_code == 507, refused.text
                    assert refused.json()["error"] == "insufficient_storage"
                    assert (await live.client.get(f"/runs/{acked[0]}")).status_code == 200
                    assert (await live.client.get("/healthz")).status_code == 200
                    disk.full = False
                while journal.full:
                    await anyio.sleep(0.02)  # the store retries every 0.05 s
            assert disk.refused and set(answers) <= {202, 507}
            assert (await live.client.post("/runs", json=doc(node("d", seconds=0)))
                    ).status_code == 202
            for run_id in acked:
                assert (await live.wait_final(run_id))["status"] == "succeeded"
        async with daemon(config) as again:
            for run_id in acked:
                response = await again.client.get(f"/runs/{run_id}")
                assert response.json()["status"] == "succeeded", run_id


async def test_a_failed_fsync_stops_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO from fdatasync is fatal: the daemon ends with StoreFailed, nothing is retried."""
    with short_tmpdir() as tmp:
        config = daemon_config(tmp)
        calls = {"n": 0}
        real = os.fdatasync

        def failing(fd: int) -> None:
            calls["n"] += 1
            raise OSError(errno.EIO, "Input/output error")

        with pytest.raises(BaseExceptionGroup) as info:
            async with daemon(config) as live:
                monkeypatch.setattr(journal_module.os, "fdatasync", failing)
                with anyio.fail_after(10):
                    response = await live.client.post("/runs", json=doc(node("a", seconds=0)))
                    assert response.status_code == 202  # pragma: no cover - must not happen
        monkeypatch.setattr(journal_module.os, "fdatasync", real)
        assert info.group_contains(StoreFailed)
        assert calls["n"] == 1


def test_a_corrupt_journal_refuses_to_start_and_says_where(tmp_path: Path) -> None:
    """Damage in the middle of the journal stops start-up with the file and the offset."""
    with short_tmpdir() as tmp:
        config = daemon_config(tmp)
        d = Daemon(config, full_catalog())
        d.open()  # creates the journal
        assert d.journal is not None
        for i in range(3):
            d.journal.append(_filler(i))
        d.journal._writer.write_batch(d.journal._writer.take_batch())  # type: ignore[union-attr]
        d.journal.close()
        d._cleanup()
        [seg] = segments(Path(tmp) / "state" / "store" / "journal")
        data = bytearray(seg.path.read_bytes())
        data[16 + 8 + 2] ^= 0xFF  # inside the first record; two good ones follow
        seg.path.write_bytes(bytes(data))
        with pytest.raises(StartError) as info:
            Daemon(config, full_catalog()).open()
        message = str(info.value)
        assert str(seg.path) in message and "at byte 16" in message
        assert "To proceed" in message


def _filler(i: int) -> Any:
    from datetime import UTC, datetime

    from nodehost.commands import CancelRun

    return CancelRun(ts=datetime.now(UTC), seq=i, run_id=f"run-{i}", reason="filler")


@pytest.mark.parametrize(("kills", "batch_ms"), [(20, 2.0), (6, 1000.0)],
                         ids=["default batches", "1 s batches"])
def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path, kills: int,
                                                      batch_ms: float) -> None:
    """Kill -9 a real daemon while clients submit and followers watch the event stream:
    every acknowledged run survives and finishes, no non-idempotent node starts twice, no
    event id is given to two events, and every follower resuming with Last-Event-ID sees
    every run end. With 1 s batches the window between an effect and its record being
    durable is wide: the write-ahead rule must close it."""
    script = Path(__file__).with_name("durability_load.py")
    with short_tmpdir() as tmp:
        result = subprocess.run([sys.executable, str(script), tmp, str(kills), str(batch_ms)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["kills"] == kills
    assert report["acknowledged"] >= 5 * kills
    assert report["missing"] == []
    assert report["changed"] == []
    assert report["unfinished"] == []
    assert report["doubled"] == []
    # the command node really ran: every run that succeeded started it (once)
    succeeded = report["statuses"].get("succeeded", 0)
    assert succeeded >= report["acknowledged"] // 2 and report["started"] >= succeeded
    assert report["reused_ids"] == []
    assert report["unseen_ends"] == [[], []]
    assert report["events"] > 0 and report["resets"] == 0


async def test_a_runs_work_directory_goes_when_retention_forgets_the_run() -> None:
    """Each run writes in a work directory of its own; retention removes it with the run."""
    with short_tmpdir() as tmp:
        config = daemon_config(tmp, toml="[retention]\nmax_runs = 1\n"
                                         "check_interval_seconds = 0.05\n")
        write = node("w", "nodehost.std.file.write", path="note.txt", content="mine")
        async with daemon(config) as live:
            work = Path(tmp) / "state" / "work" / "default"
            first = await live.submit(doc(write))
            await live.wait_final(first)
            assert (work / first / "note.txt").read_text() == "mine"
            second = await live.submit(doc(write))
            await live.wait_final(second)
            with anyio.fail_after(10):
                while (work / first).exists():
                    await anyio.sleep(0.02)  # retention runs every 0.05 s
            assert (await live.client.get(f"/runs/{first}")).status_code == 404
            assert (work / second / "note.txt").read_text() == "mine"
