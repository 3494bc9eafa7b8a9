"""The worker process: `python -m nodehost.executors.worker`, serving one package version.

It confines itself as the host says (`confinement`: before any code of the package is
imported), reads `Load`, imports the package (its entry points, when it lives in an
environment of its own; the functions the host names, when it shares the daemon's), says
`Hello`, then runs the attempts the host sends until its stdin closes.

One asyncio event loop serves the worker's whole life. Async nodes run on it as tasks, as
many at once as the host sends (it keeps to the package's concurrency); a sync node runs on
the main thread, and the host sends a worker nothing else while one runs. What is ready to
go back is written in one go when the loop comes round (frames batched on the pipe).

The protocol owns file descriptor 1. `print()` in node code goes to the attempt that
printed (its "stderr" log channel); what reaches file descriptor 2 otherwise (a C library,
a program the node ran) is streamed by the host.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import resource
import shutil
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import msgspec

from ..config import Sandbox
from ..errors import Code, NodeError
from ..node_api import Context, NodeSpec
from ..reports import Chunk, NodeReport
from . import AttemptFailed, confinement, landlock
from .coding import decode_parameters, encode_results
from .frames import (
    Cancel,
    Done,
    Failed,
    Hello,
    Load,
    Report,
    Start,
    decode_to_worker,
    encode,
    header,
    split,
)
from .loading import Registry, failed_frame
from .polling import PollingSelector

__all__ = ["main"]

# the slot of the attempt the running code belongs to (tasks a node starts inherit it)
_SLOT: contextvars.ContextVar[int | None] = contextvars.ContextVar("slot", default=None)


class _Out:
    """Frames to the host: gathered while the loop runs, written when it comes round; at
    once from another thread, or while a sync node holds the loop."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = threading.get_ident()
        self.holding = False  # a sync node runs on the loop's thread: no turn will come

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def send(self, message: msgspec.Struct) -> None:
        data = encode(message)  # OverflowError/TypeError reach the caller
        with self._lock:
            self._pending.append(data)
            loop = self._loop
            if (loop is None or self.holding
                    or threading.get_ident() != self._loop_thread):
                self._flush_locked()
            elif not self._scheduled:
                self._scheduled = True
                loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = memoryview(b"".join(self._pending))
        self._pending.clear()
        while data:
            data = data[os.write(self._fd, data):]


class _Printed:
    """sys.stdout and sys.stderr of node code: lines go to the attempt that printed them."""

    def __init__(self, out: _Out, raw: TextIO) -> None:
        self._out = out
        self._raw = raw
        self._lines: dict[int, str] = {}
        self.encoding = raw.encoding
        self.errors = raw.errors

    def write(self, text: str) -> int:
        slot = _SLOT.get()
        if slot is None:
            return self._raw.write(text)
        pending = self._lines.get(slot, "") + text
        head, newline, rest = pending.rpartition("\n")
        if newline:
            self._out.send(Report(slot, Chunk("stderr", head + "\n")))
        self._lines[slot] = rest
        return len(text)

    def end(self, slot: int) -> None:
        rest = self._lines.pop(slot, "")
        if rest:
            self._out.send(Report(slot, Chunk("stderr", rest)))

    def flush(self) -> None:
        self._raw.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._raw.fileno()


def _make_work_dir(path: str) -> Path:
    """The run's work directory, made on the node's first use of `ctx.work_dir`."""
    made = Path(path)
    made.mkdir(mode=0o700, parents=True, exist_ok=True)
    return made


class _Worker:
    def __init__(self, registry: Registry, out: _Out, printed: _Printed,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.registry = registry
        self.out = out
        self.printed = printed
        self.loop = loop
        self.sandbox = registry.load.sandbox or Sandbox()
        self.tenant = registry.load.tenant
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.ended = loop.create_future()
        self.main: asyncio.Task[None] | None = None  # _serve's
        self._buffer = bytearray()

    # --- frames in ------------------------------------------------------------------------------

    def readable(self) -> None:
        try:
            data = os.read(0, 1 << 20)
        except BlockingIOError:
            return
        if not data:  # the host closed our stdin: it is done with us (or gone)
            self.loop.remove_reader(0)
            if not self.ended.done():
                self.ended.set_result(None)
            return
        self._buffer += data
        for body in split(self._buffer):
            message = decode_to_worker(body)
            if isinstance(message, Start):
                self.start(message)
            elif isinstance(message, Cancel):
                task = self.tasks.get(message.slot)
                if task is not None:
                    task.cancel()

    # --- attempts -------------------------------------------------------------------------------

    def context(self, start: Start, spec: NodeSpec, is_cancelled: Callable[[], bool]) -> Context:
        slot = start.slot
        out = self.out

        def reporter(report: NodeReport) -> None:
            """What the node reports goes to the host as it is (a value the pipe cannot
            carry fails the node, as the host's own check would)."""
            try:
                out.send(Report(slot, report))
            except (OverflowError, TypeError) as exc:
                raise NodeError(Code.RESULT_UNENCODABLE,
                                f"the {report.__class__.__name__.lower()} report cannot be "
                                f"stored: {exc}") from None

        return Context(run_id=start.run_id, node_id=start.node_id, task_id=start.task_id,
                       attempt=start.attempt, spec=spec, reporter=reporter,
                       is_cancelled=is_cancelled, tenant=start.tenant,
                       work_dir=partial(_make_work_dir, start.work_dir)
                       if start.work_dir else None, sandbox=self.sandbox)

    def start(self, start: Start) -> None:
        slot = start.slot
        if start.tenant != self.tenant:  # confined for another tenant: never run it here
            self.finish(slot, Failed(
                slot, Code.INTERNAL, f"a worker of tenant {self.tenant!r} was sent an attempt "
                f"of tenant {start.tenant!r}", None, retryable=False, raised=False))
            return
        try:
            spec = self.registry.get(start.node_type)
            params = decode_parameters(spec, start.parameters)
        except AttemptFailed as exc:
            self.finish(slot, failed_frame(slot, exc))
            return
        if spec.is_async:
            self.tasks[slot] = self.loop.create_task(self.run_async(start, spec, params),
                                                     context=contextvars.copy_context())
            return
        token = _SLOT.set(slot)
        self.out.holding = True
        try:
            ctx = self.context(start, spec, lambda: False)
            outcome: Done | Failed = Done(slot, encode_results(spec, spec.fn(ctx, params)))
        except Exception as exc:
            outcome = failed_frame(slot, exc)
        finally:
            _SLOT.reset(token)
            self.out.holding = False
        self.finish(slot, outcome)

    async def run_async(self, start: Start, spec: NodeSpec, params: Any) -> None:
        slot = start.slot
        _SLOT.set(slot)
        task = asyncio.current_task()
        assert task is not None
        ctx = self.context(start, spec, lambda: task.cancelling() > 0)
        try:
            outcome: Done | Failed = Done(slot, encode_results(spec, await spec.fn(ctx, params)))
        except asyncio.CancelledError:
            outcome = Failed(slot, Code.RUNNER_CANCELLED, "the node was cancelled", None,
                             retryable=False, raised=False)
        except Exception as exc:
            outcome = failed_frame(slot, exc)
        del self.tasks[slot]
        self.finish(slot, outcome)

    def finish(self, slot: int, outcome: Done | Failed) -> None:
        self.printed.end(slot)
        try:
            self.out.send(outcome)
        except (OverflowError, TypeError) as exc:
            self.out.send(Failed(slot, Code.RESULT_UNENCODABLE,
                                 f"the result cannot be stored: {exc}", None,
                                 retryable=False, raised=False))
        if not self.tasks:  # nothing else will come of this turn: no need to wait for it
            self.out.flush()
            self.sweep()

    def sweep(self) -> None:
        """No attempt in flight: what the nodes left running is cancelled, as a process of
        their own would have dropped it (nothing leaks into the next attempt)."""
        keep = {self.main, asyncio.current_task(self.loop)}
        for task in asyncio.all_tasks(self.loop):
            if task not in keep:
                task.cancel()


async def _serve(worker: _Worker) -> None:
    loop = worker.loop
    worker.main = asyncio.current_task()
    os.set_blocking(0, False)
    loop.add_reader(0, worker.readable)
    await worker.ended
    for task in list(worker.tasks.values()):
        task.cancel()
    worker.out.flush()


def main(argv: list[str] | None = None) -> int:
    memory_mb = int(os.environ.pop("NODEHOST_WORKER_MEMORY_MB", "0"))  # not for nodes
    poll_us = int(os.environ.pop("NODEHOST_WORKER_POLL_US", "0"))
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # fd 1 belongs to the protocol from here on; stray prints go to stderr
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    out = _Out(protocol_out)
    try:
        confined = confinement.apply_from_environ(os.environ)
    except (landlock.LandlockError, msgspec.DecodeError) as exc:
        print(f"cannot confine the worker: {exc}", file=sys.stderr)  # the host shows it
        return 70
    try:
        load = _read_load()
        if load is None:
            return 0
        try:
            registry = Registry(load)
        except Exception as exc:
            print(f"cannot load {load.package}=={load.version}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 71
        printed = _Printed(out, sys.stderr)
        sys.stdout = sys.stderr = printed
        loop = (asyncio.SelectorEventLoop(PollingSelector(poll_us / 1e6)) if poll_us > 0
                else asyncio.new_event_loop())
        asyncio.set_event_loop(loop)
        out.attach(loop)
        out.send(Hello(pid=os.getpid(), python=sys.version.split()[0],
                       types=registry.types()))
        loop.run_until_complete(_serve(_Worker(registry, out, printed, loop)))
        return 0
    finally:  # the host removes it too, unless it is gone (killed) already
        if confined is not None and confined.temp is not None:
            shutil.rmtree(confined.temp, ignore_errors=True)


def _read_load() -> Load | None:
    """The first frame (blocking: nothing else can happen before it)."""
    buffer = bytearray()
    while True:
        frames = split(buffer)
        if frames:
            message = decode_to_worker(frames[0])
            if not isinstance(message, Load):
                raise SystemExit(f"expected load, got {type(message).__name__}")
            if buffer:  # pragma: no cover - the host waits for Hello before it sends more
                raise SystemExit("frames before hello")
            return message
        data = os.read(0, 1 << 16)
        if not data:
            return None
        buffer += data
        if len(buffer) >= header.size and header.unpack_from(buffer)[0] > 1 << 24:
            raise SystemExit("load frame too large")


if __name__ == "__main__":
    sys.exit(main())
