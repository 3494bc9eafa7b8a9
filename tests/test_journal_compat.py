"""Journals written by nodehost c244de0 still recover: the journal format is a contract with
installed daemons, whose state directories outlive the code that wrote them.

fixtures/journal_c244de0/store/ is a daemon's store as c244de0 left it (journal segments and
a snapshot, with runs finished, forgotten and still active), and expected.json what that
version's own recovery of it gave. Both were made by fixtures/journal_c244de0/generate.py,
run with the c244de0 code. Here today's code opens a copy of that store the way the daemon
does (`Store(state/store, config.journal).open()`, `build_host(..., store=...)`,
`host.recover(...)`) and must give the same runs, event ids, resume decisions and replay
buffer; then it goes on serving, on the same journal.

The views compared (`run_view`, `envelope_view`) are written like generate.py's, from the
Task and Run attributes the API shows, so a difference is something a client would see.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from builders import CATALOG, node, workflow
from fixtures.journal_c244de0.views import envelope_view, iso, run_view
from nodehost.commands import Command, Fail, Forget, Report, Submit
from nodehost.config import Config, ExecutorsConfig
from nodehost.host import Host, build_host
from nodehost.recovery import RecoveryReport
from nodehost.reports import Artifact, Chunk, Metric, Partial, Progress
from nodehost.store.journal import read_journal
from nodehost.store.records import decode_record, encode_record
from nodehost.store.snapshot import read_newest
from nodehost.store.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "journal_c244de0"
EXPECTED: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())
RESTART = datetime.fromisoformat(EXPECTED["restartedAt"])  # the clock of the restart

# the record tags of c244de0 (its store.records), and what each is decoded into now
OLD_TAGS = {"submit", "dispatch", "complete", "fail", "report", "interrupt", "timer",
            "cancel", "forget"}
REPORT_KINDS: dict[str, type[Any]] = {
    "progress": Progress, "chunk": Chunk, "partial": Partial, "metric": Metric,
    "artifact": Artifact,
}



# --- opening the fixture as the daemon does ----------------------------------------------


def daemon_config() -> Config:
    """The defaults of config.toml, with the demo packages run in-process."""
    return Config(executors=ExecutorsConfig(default="inprocess", inprocess=[], subprocess=[]))


def copy_store(tmp_path: Path) -> Path:
    """The fixture's store in a state directory of its own (recovery writes to it)."""
    store_dir = tmp_path / "state" / "store"
    shutil.copytree(FIXTURE / "store", store_dir)
    return store_dir


def recovered_host(store_dir: Path) -> tuple[Host, Store, int, RecoveryReport]:
    """Daemon._open_journal then the start of Daemon.run: open the store, build the host on
    it and recover (on the fixed clock of the restart). Also the last lsn on disk."""
    config = daemon_config()
    store = Store(store_dir, config.journal)
    recovered = store.open()
    on_disk = store.last_lsn
    host = build_host(config, CATALOG, store=store, now=lambda: RESTART)
    report = host.recover(recovered)
    return host, store, on_disk, report


def raw_records(store_dir: Path) -> Iterator[tuple[str, list[Any], bytes]]:
    """(where, the record as a plain msgpack array, its bytes) of every record on disk:
    every journal segment (those before the snapshot too), then the newest snapshot."""
    for _, payload in read_journal(store_dir / "journal", repair=False):
        yield "segments", msgspec.msgpack.decode(payload), payload
    newest = read_newest(store_dir / "snapshots")
    assert newest is not None, "the fixture has a snapshot"
    for raw in msgspec.msgpack.decode(newest[1], type=list[msgspec.Raw]):
        payload = bytes(raw)
        yield "snapshot", msgspec.msgpack.decode(payload), payload


# --- the tests -----------------------------------------------------------------------------


def test_every_record_of_the_old_journal_decodes_into_a_command(tmp_path: Path) -> None:
    """Every record c244de0 wrote, in the segments and in the snapshot, decodes; its legacy
    `report` record (an engine method and its arguments) becomes a commands.Report holding
    the same values, and each decoded command encodes and decodes again as itself (a
    compaction by today's code rewrites them)."""
    store_dir = copy_store(tmp_path)
    tags: dict[str, Counter[str]] = {"segments": Counter(), "snapshot": Counter()}
    kinds: set[str] = set()
    for where, raw, payload in raw_records(store_dir):
        tag, ts, seq = raw[0], raw[1], raw[2]
        tags[where][tag] += 1
        command = decode_record(payload)
        assert isinstance(command, Command)
        assert (command.ts, command.seq) == (msgspec.convert(ts, datetime), seq)
        if tag == "report":
            _, _, _, run_id, dispatch_id, kind, args = raw
            assert isinstance(command, Report)
            assert (command.run_id, command.dispatch_id) == (run_id, dispatch_id)
            assert type(command.report) is REPORT_KINDS[kind]
            assert list(msgspec.structs.astuple(command.report)) == args
            kinds.add(kind)
        else:
            assert type(command).__struct_config__.tag == tag
            assert command.run_id == (raw[3] if tag != "forget" else "")
        assert decode_record(encode_record(command)) == command
    assert set(tags["segments"]) == OLD_TAGS, "the fixture has every kind of record"
    assert kinds == set(REPORT_KINDS), "and every kind of report"
    assert {where: dict(sorted(c.items())) for where, c in tags.items()} == {
        "segments": EXPECTED["recordTags"]["segments"],
        "snapshot": EXPECTED["recordTags"]["snapshot"],
    }


@pytest.mark.anyio
async def test_recovery_gives_the_runs_ids_and_resume_that_c244de0_gave(tmp_path: Path
                                                                        ) -> None:
    """Runs, nodes, results, errors, timestamps and documents as c244de0 recovered them; the
    event sequence goes on where it did; resume finds the same attempts interrupted, nodes
    ready, backoffs and container timeouts; the replay buffer holds the same events (those
    of what resume decided once its records are durable: c244de0 published them at once)."""
    host, store, on_disk, report = recovered_host(copy_store(tmp_path))
    engine = host.engine
    assert on_disk == EXPECTED["lastLsn"]
    assert store.snapshot_lsn == EXPECTED["snapshotLsn"]
    assert report.records == EXPECTED["records"]
    assert report.resumed == EXPECTED["resumed"]
    assert report.active == EXPECTED["runsActive"]
    assert engine.event_seq == EXPECTED["eventSeq"]
    assert list(engine.runs) == list(EXPECTED["runs"]), "forgotten runs stay forgotten"
    for run_id, expected in EXPECTED["runs"].items():
        assert run_view(engine.runs[run_id]) == expected, run_id
    # resume journals what it decided: the attempts the restart interrupted failed
    assert store.last_lsn == on_disk + len(EXPECTED["resumeRecords"])
    # the node types are the catalog's own, not stand-ins for missing ones
    for run in engine.runs.values():
        for task in run.tasks.values():
            spec = task.g.spec
            if spec is not None:
                assert CATALOG.get(spec.package, spec.version, spec.type) is spec, task
    resume_seq = EXPECTED["resumeRecords"][0]["seq"]  # the events before resume's
    expected_buffer = EXPECTED["replayBuffer"]
    before_resume = [e for e in expected_buffer if int(e["id"]) <= resume_seq]
    assert len(before_resume) < len(expected_buffer)
    with host.bus.subscribe(after=0) as subscription:
        buffer = [envelope_view(e) for e in subscription.drain()]
    assert buffer == before_resume  # resume's records are not durable yet
    assert host.last_event_id == resume_seq
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            await store.wait_durable()
            tg.cancel_scope.cancel()
    with host.bus.subscribe(after=0) as subscription:
        buffer = [envelope_view(e) for e in subscription.drain()]
    assert [(e["id"], e["type"]) for e in buffer] == \
        [(e["id"], e["type"]) for e in expected_buffer]
    for got, expected in zip(buffer, expected_buffer, strict=True):
        assert got == expected, expected["id"]
    assert host.last_event_id == engine.event_seq
    store.close()


def journaled_after(store_dir: Path, lsn: int) -> list[Command]:
    return [decode_record(p) for n, p in read_journal(store_dir / "journal") if n > lsn]


def states(host: Host) -> dict[str, Any]:
    return {run_id: run_view(run) for run_id, run in host.engine.runs.items()}


@pytest.mark.anyio
async def test_the_recovered_host_goes_on_on_the_old_journal(tmp_path: Path) -> None:
    """After the restart, a new run's events and records continue the old ids; the active
    runs finish as c244de0 finished them; the journal, old records and new ones in the same
    segments, recovers again to the same state, also once today's code has compacted it."""
    store_dir = copy_store(tmp_path)
    host, store, on_disk, _ = recovered_host(store_dir)
    seq = EXPECTED["eventSeq"]
    active = [run_id for run_id, run in host.engine.runs.items() if not run.final]
    new_id = "run-13-after-restart"
    with host.bus.subscribe(lambda e: e.scope.run_id == new_id) as subscription:
        new = host.submit(workflow([node("a", params={"after": "restart"})], id="after"),
                          run_id=new_id)
        with anyio.fail_after(5):
            async with host.running():
                for run_id in [*active, new.run_id]:
                    await host.scheduler.wait_run(run_id)
        first = subscription.drain()[0]
    assert (first.id, first.scope.run_id) == (str(seq + 1), new.run_id)
    for run_id, expected in EXPECTED["continued"].items():
        run = host.engine.runs[run_id]
        assert run.status == expected["status"], run_id
        assert {tid: {"status": t.status, "attempt": t.attempt, "result": t.result,
                      "error": None if t.error is None else t.error.code}
                for tid, t in run.tasks.items()} == expected["tasks"], run_id
    assert new.status == "succeeded" and new.tasks["a"].result == {"after": "restart"}

    # on disk after the old records: what resume decided, then the new run's Submit at the
    # event sequence the old history ended with
    after = journaled_after(store_dir, on_disk)
    resumed = [{"k": type(c).__name__, "runId": c.run_id, "dispatchId": c.dispatch_id,
                "code": c.code, "retryable": c.retryable, "seq": c.seq, "ts": iso(c.ts)}
               for c in after[:len(EXPECTED["resumeRecords"])] if isinstance(c, Fail)]
    assert resumed == EXPECTED["resumeRecords"]
    submit = after[len(resumed)]
    assert isinstance(submit, Submit) and (submit.run_id, submit.seq) == (new.run_id, seq)
    live = states(host)

    # the mixed journal (old snapshot, old and new records) recovers to the same state
    store.close()
    again, store, _, report = recovered_host(store_dir)
    assert report.resumed == {"interrupted": 0, "ready": 0, "backoff": 0, "containers": 0}
    assert states(again) == live
    assert again.engine.event_seq == host.engine.event_seq

    # and so does the snapshot today's code writes of it (legacy reports rewritten)
    with anyio.fail_after(5):
        async with again.running():
            assert again.apply(Forget(run_ids=["run-01-reports"]))
            await store.compact()
    store.close()
    rewritten = Counter(raw[0] for where, raw, _ in raw_records(store_dir) if where == "snapshot")
    assert rewritten["node.report"] > 0 and "report" not in rewritten
    compacted, store, _, _ = recovered_host(store_dir)
    del live["run-01-reports"]
    assert states(compacted) == live
    assert compacted.engine.event_seq == again.engine.event_seq
    store.close()
