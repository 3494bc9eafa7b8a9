"""Damaged history: start-up recovers everything acknowledged or refuses, never less silently.

A store is written the way the daemon writes it (group commit, snapshots, small segments),
then damaged as a disk, a person or a bad restore would: segments deleted, the newest one
cut short, bytes flipped in a record, a length, a CRC, snapshots corrupted or deleted.
Each case either recovers every acknowledged record or refuses with `HistoryIncomplete`
naming the file; `--accept-journal-loss` then starts on what is left, keeping the damaged
files, and the next start finds a whole history.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from builders import T0
from nodehost.commands import CancelRun, Submit
from nodehost.store.continuity import HistoryIncomplete
from nodehost.store.journal import FRAME, SEGMENT_HEADER, segments
from nodehost.store.records import encode_record
from nodehost.store.snapshot import list_snapshots
from nodehost.store.store import Store

SEGMENT_BYTES = 400  # about five records a segment


@pytest.fixture(params=["asyncio", "trio"], autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[None]:
    """The store is anyio code: every case is written on both backends."""
    global BACKEND
    BACKEND = request.param
    yield
    BACKEND = "asyncio"


BACKEND = "asyncio"


def record(i: int) -> CancelRun:
    return CancelRun(ts=T0, seq=i, run_id=f"run-{i:03d}", reason=f"record {i} " + "x" * 30)


def build(directory: Path, *, total: int = 60,
          snapshots_at: tuple[int, ...] = (20, 40)) -> list[str]:
    """A store of `total` acknowledged records with snapshots after `snapshots_at`; returns
    the run ids in order (what recovery must give back)."""

    async def main() -> None:
        store = Store(directory, segment_bytes=SEGMENT_BYTES)
        store.open()
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            for i in range(total):
                store.append(record(i))
                if i % 3 == 2:
                    await store.wait_durable()
                if i + 1 in snapshots_at:
                    await store.compact()
            await store.wait_durable()
            tg.cancel_scope.cancel()
        store.close()

    anyio.run(main, backend=BACKEND)
    return [f"run-{i:03d}" for i in range(total)]


def recovered(directory: Path, **kw: bool) -> list[str]:
    store = Store(directory, segment_bytes=SEGMENT_BYTES, **kw)
    try:
        return [r.run_id for r in store.open().records]
    finally:
        store.close()


def journal(directory: Path) -> list[Path]:
    return [s.path for s in segments(directory / "journal")]


def snapshots(directory: Path) -> list[Path]:
    return [p for _, p in list_snapshots(directory / "snapshots")]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def frame_offsets(path: Path) -> list[int]:
    """Where each frame of a segment starts."""
    data = path.read_bytes()
    offsets, offset = [], SEGMENT_HEADER.size
    while offset + FRAME.size <= len(data):
        offsets.append(offset)
        length, _ = FRAME.unpack_from(data, offset)
        offset += FRAME.size + length
    return offsets


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


# --- the damage cases ------------------------------------------------------------------------
# Each returns what it damaged (the file the refusal must name), given the store directory.

Damage = Callable[[Path], Path]


def delete_first_segment(d: Path) -> Path:
    path = journal(d)[0]
    path.unlink()
    return path


def delete_middle_segment(d: Path) -> Path:
    segs = journal(d)
    path = segs[len(segs) // 2]
    path.unlink()
    return segs[len(segs) // 2 + 1]  # the segment after the gap is where it shows


def delete_last_segment(d: Path) -> Path:
    path = journal(d)[-1]
    path.unlink()
    return journal(d)[-1]


def cut_newest_after_header(d: Path) -> Path:
    path = journal(d)[-1]
    truncate(path, SEGMENT_HEADER.size)
    return path


def cut_newest_in_half(d: Path) -> Path:
    path = journal(d)[-1]
    truncate(path, path.stat().st_size // 2)
    return path


def cut_newest_by_one_byte(d: Path) -> Path:
    path = journal(d)[-1]
    truncate(path, path.stat().st_size - 1)
    return path


def flip_a_record(d: Path) -> Path:
    path = journal(d)[-2]
    flip(path, frame_offsets(path)[1] + FRAME.size + 3)
    return path


def flip_the_last_record(d: Path) -> Path:
    path = journal(d)[-1]
    flip(path, frame_offsets(path)[-1] + FRAME.size + 3)
    return path


def flip_a_length(d: Path) -> Path:
    path = journal(d)[-2]
    flip(path, frame_offsets(path)[1] + 1)
    return path


def flip_a_crc(d: Path) -> Path:
    path = journal(d)[-2]
    flip(path, frame_offsets(path)[1] + 5)
    return path


def corrupt_all_snapshots(d: Path) -> Path:
    for path in snapshots(d):
        flip(path, 20)
    return snapshots(d)[0]


def delete_all_snapshots(d: Path) -> Path:
    for path in snapshots(d):
        path.unlink()
    return journal(d)[0]


REFUSED: list[Damage] = [
    delete_middle_segment, delete_last_segment, cut_newest_after_header, cut_newest_in_half,
    cut_newest_by_one_byte, flip_a_record, flip_the_last_record, flip_a_length, flip_a_crc,
    corrupt_all_snapshots, delete_all_snapshots,
]


@pytest.mark.parametrize("damage", REFUSED, ids=lambda f: f.__name__)
def test_damage_that_loses_acknowledged_records_refuses_to_start(
        tmp_path: Path, damage: Damage) -> None:
    build(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    named = damage(tmp_path)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(HistoryIncomplete) as info:
        recovered(tmp_path)
    message = str(info.value)
    assert str(named) in message, message
    assert "lost" in message and "--accept-journal-loss" in message
    # refusing changes nothing: the evidence is as the damage left it
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == after != before


def test_deleting_the_first_segment_without_a_snapshot_refuses(tmp_path: Path) -> None:
    build(tmp_path, total=30, snapshots_at=())
    first = delete_first_segment(tmp_path)
    with pytest.raises(HistoryIncomplete) as info:
        recovered(tmp_path)
    [loss] = info.value.losses
    assert loss.first_lost == 1 and loss.path == journal(tmp_path)[0]
    assert first.name not in [p.name for p in journal(tmp_path)]


def test_the_loss_says_which_records_are_gone(tmp_path: Path) -> None:
    build(tmp_path, total=60)
    segs = journal(tmp_path)
    last_first = int(segs[-1].name.split(".")[0])
    delete_last_segment(tmp_path)
    with pytest.raises(HistoryIncomplete) as info:
        recovered(tmp_path)
    [loss] = info.value.losses
    assert (loss.first_lost, loss.last_lost) == (last_first, 60)
    assert f"records {last_first}..60 ({60 - last_first + 1} acknowledged) are lost" in str(
        info.value)


@pytest.mark.parametrize("damage", [delete_first_segment, "corrupt newest snapshot",
                                    "delete newest snapshot"], ids=str)
def test_damage_the_history_can_do_without_recovers_everything(
        tmp_path: Path, damage: Damage | str, caplog: pytest.LogCaptureFixture) -> None:
    """The first segment holds only what the snapshot covers; an older snapshot and the
    journal kept for it cover a bad newest one (which is moved aside, never overwritten)."""
    acked = build(tmp_path)
    newest = snapshots(tmp_path)[-1]
    content = newest.read_bytes()
    if damage == "corrupt newest snapshot":
        flip(newest, 30)
        content = newest.read_bytes()
    elif damage == "delete newest snapshot":
        newest.unlink()
    else:
        assert callable(damage)
        damage(tmp_path)
    assert recovered(tmp_path) == acked
    if damage == "corrupt newest snapshot":
        kept = tmp_path / "damaged-snapshots" / newest.name
        assert kept.read_bytes() == content
        assert "unreadable" in caplog.text
    else:
        assert not (tmp_path / "damaged-snapshots").exists()
    assert recovered(tmp_path) == acked  # and again: nothing was lost on the way


def test_a_torn_tail_of_unacknowledged_records_is_repaired_silently(tmp_path: Path) -> None:
    """What a power loss leaves after the last acknowledged record: half a frame."""
    acked = build(tmp_path)
    newest = journal(tmp_path)[-1]
    size = newest.stat().st_size
    partial = encode_record(record(99))
    with open(newest, "ab") as f:
        f.write(FRAME.pack(len(partial), 0) + partial[:5])
    assert recovered(tmp_path) == acked
    assert newest.stat().st_size == size


# --- accepting the loss ------------------------------------------------------------------------


def test_accepting_a_loss_starts_on_what_is_left_and_keeps_the_damaged_files(
        tmp_path: Path) -> None:
    acked = build(tmp_path)
    original = {p.name: p.read_bytes() for p in journal(tmp_path)}
    cut_newest_in_half(tmp_path)
    damaged_newest = journal(tmp_path)[-1].read_bytes()
    with pytest.raises(HistoryIncomplete) as info:
        recovered(tmp_path)
    first_lost = info.value.losses[0].first_lost
    left = recovered(tmp_path, accept_loss=True)
    assert left == acked[: len(left)] and len(left) == first_lost - 1
    [aside] = tmp_path.glob("damaged-*T*Z")
    kept = {p.name: p.read_bytes() for p in aside.iterdir()}
    newest_name = max(original)
    assert kept[newest_name] == damaged_newest
    assert {n: b for n, b in kept.items() if n != newest_name} == {
        n: b for n, b in original.items() if n != newest_name}
    # the next start is an ordinary one, and the journal goes on after what is left
    assert recovered(tmp_path) == left

    async def more() -> None:
        store = Store(tmp_path, segment_bytes=SEGMENT_BYTES)
        store.open()
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            store.append(record(500))
            await store.wait_durable()
            tg.cancel_scope.cancel()
        store.close()

    anyio.run(more, backend=BACKEND)
    assert recovered(tmp_path) == [*left, "run-500"]


def test_accepting_lost_snapshots_keeps_runs_that_began_in_the_journal(tmp_path: Path) -> None:
    """All snapshots unreadable: the runs whose Submit survives are kept, whole; the records
    of runs that began in the lost part are dropped; the corrupt snapshots are kept as
    they were."""

    async def main() -> None:
        store = Store(tmp_path, segment_bytes=SEGMENT_BYTES)
        store.open()
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            for i in range(30):
                store.append(submit(f"early-{i}"))
            await store.compact()
            for i in range(5):
                store.append(CancelRun(ts=T0, seq=0, run_id=f"early-{i}", reason="x"))
            await store.compact()  # the journal before this one's predecessor is gone
            for i in range(10):
                store.append(record(i) if i % 2 else submit(f"late-{i}"))
                store.append(CancelRun(ts=T0, seq=0, run_id=f"late-{i}", reason="x"))
            store.append(CancelRun(ts=T0, seq=0, run_id="early-3", reason="x"))
            await store.wait_durable()
            tg.cancel_scope.cancel()
        store.close()

    anyio.run(main, backend=BACKEND)
    corrupt_all_snapshots(tmp_path)
    bad = {p.name: p.read_bytes() for p in snapshots(tmp_path)}
    with pytest.raises(HistoryIncomplete):
        recovered(tmp_path)
    left = recovered(tmp_path, accept_loss=True)
    assert left == [x for i in range(0, 10, 2) for x in (f"late-{i}", f"late-{i}")]
    [aside] = tmp_path.glob("damaged-*T*Z")
    assert {n: (aside / n).read_bytes() for n in bad} == bad
    assert recovered(tmp_path) == left


def submit(run_id: str) -> Submit:
    import msgspec

    return Submit(ts=T0, seq=0, run_id=run_id, tenant="t", client_id="c",
                  workflow=msgspec.Raw(msgspec.msgpack.encode({})), definition_hash="h")
