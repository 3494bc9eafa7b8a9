"""Node functions for the subprocess executor tests (importable: workers import them)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import msgspec

from nodehost import Context, NodeError, Package

package = Package("t.isolated", "1.0")


class Echo(msgspec.Struct):
    text: str
    times: int = 1


@package.node("t.isolated.echo")
async def echo(ctx: Context, params: Echo) -> dict:
    """Report progress, log, publish a partial, return the text repeated."""
    await ctx.progress(0.5, "half")
    ctx.log("to the log")
    print("printed by the node")
    await ctx.partial({"first": params.text})
    ctx.metric("length", len(params.text))
    return {"text": params.text * params.times, "pid": os.getpid()}


@package.node("t.isolated.sync")
def sync_node(ctx: Context, params: dict) -> dict:
    """A sync node: runs on the worker's main thread."""
    ctx.log(b"\x00\x01", channel="raw")
    return {"pid": os.getpid()}


@package.node("t.isolated.crash")
def crash(ctx: Context, params: dict) -> dict:
    """Kill the worker process with a signal (a segfault stand-in)."""
    sys.stderr.write("about to crash\n")
    sys.stderr.flush()
    os.kill(os.getpid(), getattr(signal, params.get("signal", "SIGSEGV")))
    return {}


@package.node("t.isolated.exit")
def exit_node(ctx: Context, params: dict) -> dict:
    """Leave the worker process with an exit code."""
    os._exit(params.get("code", 3))


@package.node("t.isolated.hang")
def hang(ctx: Context, params: dict) -> dict:
    """Start a grandchild, say its pid, then hang."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    ctx.log(f"grandchild {child.pid}\n")
    ctx.progress(0.1, "hanging")
    time.sleep(600)
    return {}


@package.node("t.isolated.hog")
def hog(ctx: Context, params: dict) -> dict:
    """Allocate far more memory than the worker is allowed."""
    blocks = [bytearray(64 * 1024 * 1024) for _ in range(params.get("blocks", 64))]
    return {"blocks": len(blocks)}


@package.node("t.isolated.fail")
def fail(ctx: Context, params: dict) -> dict:
    """Fail with a NodeError."""
    raise NodeError("E.T.NOPE", "nope", remediation="say yes")


_left_behind: list[asyncio.Task[None]] = []


@package.node("t.isolated.leaves_a_task")
async def leaves_a_task(ctx: Context, params: dict) -> dict:
    """Starts a task it never waits for; says whether the one of the previous attempt in
    this worker is still running (the worker's event loop outlives attempts)."""
    previous = _left_behind[-1] if _left_behind else None
    _left_behind.append(asyncio.get_running_loop().create_task(asyncio.sleep(3600)))
    return {"pid": os.getpid(), "previous_running": previous is not None and not previous.done()}


@package.node("t.isolated.reserve")
def reserve(ctx: Context, params: dict) -> dict:
    """Map `mib` MiB of address space without touching it (costs no memory unless limited)."""
    import mmap

    area = mmap.mmap(-1, params["mib"] << 20)
    area.close()
    return {"reserved": params["mib"]}


_WAITING: list[asyncio.Event] = []


@package.node("t.isolated.wait")
async def wait(ctx: Context, params: dict) -> dict:
    """Wait until t.isolated.release runs in this same worker process."""
    event = asyncio.Event()
    _WAITING.append(event)
    await event.wait()
    return {"pid": os.getpid()}


@package.node("t.isolated.release")
async def release(ctx: Context, params: dict) -> dict:
    """Release a t.isolated.wait of this process (waiting for one to arrive)."""
    while not _WAITING:
        await asyncio.sleep(0.01)
    _WAITING.pop().set()
    return {"pid": os.getpid()}
