"""The worker process: `python -m nodehost.executors.worker MODULE QUALNAME PACKAGE VERSION TYPE
TENANT`.

It confines itself as the host says (`confinement`: before any code of the node's package is
imported), imports one node function, says `Hello`, then runs the attempts of its tenant the
host sends, one at a time, until its stdin closes. The protocol owns file descriptor 1:
`print()` in node code is redirected to stderr, which the host streams as the node's
"stderr" log channel.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import resource
import shutil
import sys
import threading
import traceback
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from ..config import Sandbox
from ..errors import Code, NodeError
from ..node_api import Context, NodeSpec, Package, Reporter
from ..reports import NodeReport
from . import AttemptFailed, confinement, landlock
from .frames import Done, Failed, Hello, Start, decode_to_worker, encode, header
from .inprocess import decode_parameters, encode_results

__all__ = ["main"]


class _FrameWriter:
    """Writes frames to the protocol pipe; node threads may report concurrently."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: msgspec.Struct) -> None:
        """One frame (a NodeReport from a node thread, or the outcome)."""
        data = encode(message)
        with self._lock:
            self._out.write(data)
            self._out.flush()


def load_spec(module: str, qualname: str, package: str, version: str, type: str) -> NodeSpec:
    """Import the node function and rebuild its spec (types come from its annotations)."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    registry = Package(package, version)
    registry.node(type)(obj)
    return registry.nodes[type]


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    if not data or len(data) < n:
        return None
    return data


_loop: asyncio.AbstractEventLoop | None = None


def _run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run an async node on the worker's one event loop: made once, for the life of the
    worker (a new loop per attempt, as anyio.run makes, cost 130 us of a 500 us attempt).
    What the node left running is cancelled before the next attempt, as a new loop would
    have dropped it."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    try:
        return _loop.run_until_complete(coroutine)
    finally:
        leftovers = asyncio.all_tasks(_loop)
        if leftovers:
            for task in leftovers:
                task.cancel()
            _loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))


def _make_work_dir(path: str) -> Path:
    """The run's work directory, made on the node's first use of `ctx.work_dir`."""
    made = Path(path)
    made.mkdir(mode=0o700, parents=True, exist_ok=True)
    return made


def run_attempt(spec: NodeSpec, start: Start, reporter: Reporter) -> Done | Failed:
    ctx = Context(run_id=start.run_id, node_id=start.node_id, task_id=start.task_id,
                  attempt=start.attempt, spec=spec, reporter=reporter, tenant=start.tenant,
                  work_dir=partial(_make_work_dir, start.work_dir) if start.work_dir else None,
                  sandbox=start.sandbox or Sandbox())
    try:
        params = decode_parameters(spec, start.parameters)
        if spec.is_async:
            value = _run_async(spec.fn(ctx, params))
        else:
            value = spec.fn(ctx, params)
        return Done(encode_results(spec, value))
    except NodeError as exc:
        details = dict(exc.details or {})
        if exc.remediation:
            details["remediation"] = exc.remediation
        return Failed(exc.code, exc.message, details or None, retryable=exc.retryable)
    except AttemptFailed as exc:
        return Failed(exc.error.code, exc.error.message, exc.error.details,
                      retryable=exc.retryable, raised=False)
    except MemoryError:
        return Failed(Code.RUNNER_FAILURE, "the node ran out of memory (MemoryError)",
                      {"memoryLimit": True})
    except Exception as exc:
        tb = "".join(traceback.format_exception(exc, limit=-8))[-4000:]
        return Failed(Code.RUNNER_FAILURE, f"{type(exc).__name__}: {exc}", {"traceback": tb})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    module, qualname, package, version, type, tenant = args[:6]
    memory_mb = int(os.environ.pop("NODEHOST_WORKER_MEMORY_MB", "0"))  # not for nodes
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # fd 1 belongs to the protocol from here on; stray prints go to stderr
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    protocol_in = os.fdopen(os.dup(0), "rb")
    writer = _FrameWriter(protocol_out)
    try:
        confined = confinement.apply_from_environ(os.environ)
    except (landlock.LandlockError, msgspec.DecodeError) as exc:
        print(f"cannot confine the worker: {exc}", file=sys.stderr)  # the host shows it
        return 70
    try:
        return _serve(load_spec(module, qualname, package, version, type), tenant, writer,
                      protocol_in)
    finally:  # the host removes it too, unless it is gone (killed) already
        if confined is not None and confined.temp is not None:
            shutil.rmtree(confined.temp, ignore_errors=True)


def _serve(spec: NodeSpec, tenant: str, writer: _FrameWriter, protocol_in: BinaryIO) -> int:
    writer.send(Hello(pid=os.getpid(), python=sys.version.split()[0]))

    def reporter(report: NodeReport) -> None:
        """What the node reports goes to the host as it is (a value the pipe cannot carry
        fails the node, as the host's own check would)."""
        try:
            writer.send(report)
        except (OverflowError, TypeError) as exc:
            raise NodeError(Code.RESULT_UNENCODABLE,
                            f"the {report.__class__.__name__.lower()} report cannot be stored: "
                            f"{exc}") from None

    while True:
        head = _read_exactly(protocol_in, header.size)
        if head is None:
            return 0  # the host closed our stdin: it is done with us (or gone)
        body = _read_exactly(protocol_in, header.unpack(head)[0])
        if body is None:
            return 0
        start = decode_to_worker(body)
        if start.tenant != tenant:  # confined for another tenant: never run it here
            outcome: Done | Failed = Failed(
                Code.INTERNAL, f"a worker of tenant {tenant!r} was sent an attempt of "
                f"tenant {start.tenant!r}", None, retryable=False, raised=False)
        else:
            outcome = run_attempt(spec, start, reporter)
        try:
            writer.send(outcome)
        except (OverflowError, TypeError) as exc:
            writer.send(Failed(Code.RESULT_UNENCODABLE, f"the result cannot be stored: {exc}",
                               None, retryable=False, raised=False))


if __name__ == "__main__":
    sys.exit(main())
