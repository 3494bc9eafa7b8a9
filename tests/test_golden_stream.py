"""The wire is byte-for-byte what the old code put on it, for the same runs.

`tests/fixtures/golden/` holds what the code before the restructuring (commit c244de0) sent
for six scenarios: the live SSE stream, the same events replayed (`lastEventId=0`), and the
REST bodies of `GET /runs/{id}`, `GET /runs/{id}/definition` and `GET /runs`. The scenarios,
the harness that records them and the old adapter are in `fixtures/golden/generate.py`,
which made the fixtures (see its docstring to make them again). Here the same scenarios run
through the new code: its test `Driver` (commands applied to the engine), a `Host` around
that engine, the `DaemonApi` and the Starlette app, and every byte must match.

A difference is reported at the first frame or REST body that differs, old against new.
Each scenario runs on asyncio and on trio (see conftest); the fixtures were made on asyncio:
the bytes must not depend on the event loop either.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from builders import CATALOG, Driver
from nodehost.api import DaemonApi
from nodehost.bus import EventBus
from nodehost.config import Config, EventsConfig
from nodehost.events import Envelope, sse_frame
from nodehost.host import Host
from nodehost.http import create_app
from nodehost.reports import Artifact, Chunk, Metric, NodeReport, Partial, Progress
from nodehost.runs_index import RunsIndex
from nodehost.scheduler import Scheduler

FIXTURES = Path(__file__).parent / "fixtures" / "golden"

pytestmark = pytest.mark.anyio


def _load_golden() -> ModuleType:
    """The shared scenarios and harness (a script next to the fixtures, not a package)."""
    name = "golden_generate"
    spec = importlib.util.spec_from_file_location(name, FIXTURES / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


golden = _load_golden()

_REPORTS: dict[str, type[NodeReport]] = {
    "progress": Progress, "chunk": Chunk, "partial": Partial, "metric": Metric,
    "artifact": Artifact,
}


# golden is loaded from a file, so mypy cannot see its classes
class NewWire(golden.DriverWire):  # type: ignore[name-defined,misc]
    """The adapter over the new code: its Driver's engine inside a real `Host` (not run: the
    Driver dispatches and completes by hand), the `DaemonApi` over it and the app."""

    def __init__(self) -> None:
        super().__init__()
        self.driver = d = Driver()
        # no keepalive comments: the stream carries events only, whatever the machine's speed
        config = Config(events=EventsConfig(heartbeat_seconds=3600))
        self.bus = EventBus(config.events)
        self.index = RunsIndex()
        host = Host(config=config, catalog=CATALOG, documents=d.documents, engine=d.engine,
                    bus=self.bus, scheduler=Scheduler(d.engine, config.scheduler),
                    executors={}, store=None, closers=[])
        self.app = create_app(DaemonApi(host, index=self.index))

    def submit(self, step: Any) -> None:  # a golden.Submit
        """As `DaemonApi.start_run` does: the document as sent, then the run indexed."""
        run = self.driver.submit(step.doc, fail_fast=step.fail_fast, client_id=step.client_id,
                                 run_id=step.run_id)
        self.index.add(run, run.document)

    def report(self, dispatch_id: str, kind: str, fields: dict[str, Any]) -> bool:
        return self.driver.report(dispatch_id, _REPORTS[kind](**fields))

    def cancel(self, run_id: str) -> bool:
        return self.driver.cancel_run(run_id)

    def sse_frame(self, envelope: Envelope) -> bytes:
        return sse_frame(envelope)


Item = tuple[str, bytes]  # a label (which frame, which request) and its bytes


def _first_difference(what: str, old: list[Item], new: list[Item]) -> str | None:
    """Where two lists of frames or bodies part, old against new (None if they do not): the
    first item that differs, with the bytes around the first byte that differs."""
    for (label, a), (_, b) in zip(old, new, strict=False):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                      min(len(a), len(b)))
            lo, hi = max(0, at - 100), at + 100
            return (f"{what}: first difference in {label}, at byte {at}\n"
                    f"  old: ...{a[lo:hi]!r}...\n  new: ...{b[lo:hi]!r}...\n"
                    f"  whole old: {a!r}\n  whole new: {b!r}")
    if len(old) != len(new):
        return (f"{what}: {len(old)} items in the fixture, {len(new)} now; the first extra: "
                f"{(old[len(new):] or new[len(old):])[0]!r}")
    return None


def _frames(stream: bytes) -> list[Item]:
    """Each frame of a stream, labelled with its place and its `id:` line."""
    items = []
    for i, frame in enumerate(golden.split_frames(stream)):
        id_line = frame.split(b"\n", 1)[0].decode(errors="replace")
        items.append((f"frame {i} ({id_line})", frame))
    return items


def _stream_difference(what: str, old: bytes, new: bytes) -> str | None:
    """The first frame where two SSE bodies part (None if they are the same bytes)."""
    if old == new:
        return None
    return (_first_difference(what, _frames(old), _frames(new))
            or f"{what}: the bytes differ outside the frames")


def _bodies(entries: list[dict[str, Any]]) -> list[Item]:
    """Each REST answer as `status headers` and the body as it was sent."""
    return [(f"answer {i} ({e['request']})",
             f"{e['status']} {e['headers']}\n{e['body']}".encode()) for i, e in enumerate(entries)]


@pytest.mark.parametrize("name", [s.name for s in golden.SCENARIOS])
async def test_the_wire_is_byte_for_byte_the_old_one(name: str) -> None:
    """Live SSE frames, replayed frames and REST bodies equal the old code's, byte for byte;
    the live stream is exactly `sse_frame()` of each envelope."""
    scenario = next(s for s in golden.SCENARIOS if s.name == name)
    old_sse, old_replay, old_rest = golden.load(FIXTURES, name)
    new = await golden.record(NewWire(), scenario)
    problems = [
        _stream_difference(f"{name}.sse", old_sse, new.sse),
        _stream_difference(f"{name}.replay.sse", old_replay, new.replay),
        _first_difference(f"{name}.rest.json", _bodies(old_rest), _bodies(new.rest)),
        _stream_difference(f"{name}: sse_frame() against the stream", new.sse, new.frames),
    ]
    found = [p for p in problems if p is not None]
    assert not found, "\n\n".join(found)
    assert golden.dump_rest(new.rest) == (FIXTURES / f"{name}.rest.json").read_bytes()
