"""Nodes the test kit's tests run (importable: the subprocess executor's workers import them)."""

from __future__ import annotations

import anyio
import msgspec

from nodehost import Context, NodeError, Package

package = Package("t.kit", "1.0.0")


class EchoParams(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    times: int = 1


class Echoed(msgspec.Struct):
    text: str


@package.node("t.kit.echo")
async def echo(ctx: Context, params: EchoParams) -> Echoed:
    """Report one of everything, then return the text repeated."""
    await ctx.progress(0.25, "starting", stage="warm-up")
    ctx.log("a log line")
    ctx.log(b"\x00\x01", channel="raw")
    await ctx.partial({"first": params.text, "count": 1})
    ctx.metric("length", len(params.text))
    ctx.artifact("echo.txt", "text/plain", size_bytes=len(params.text))
    await ctx.progress(0.75)
    return Echoed(text=params.text * params.times)


@package.node("t.kit.add")
def add(ctx: Context, params: dict) -> dict:
    """A sync node: progress without await."""
    ctx.progress(0.5, "adding")
    return {"sum": params["a"] + params["b"]}


@package.node("t.kit.refuse", retry=1)
async def refuse(ctx: Context, params: dict) -> dict:
    raise NodeError("E.KIT.REFUSED", "the widget said no", remediation="ask nicely",
                    details={"widget": 7})


@package.node("t.kit.crash")
def crash(ctx: Context, params: dict) -> dict:
    return {"value": 1 / 0}


@package.node("t.kit.flaky", retry=3)
async def flaky(ctx: Context, params: dict) -> dict:
    if ctx.attempt < 3:
        raise NodeError("E.KIT.FLAKY", f"attempt {ctx.attempt} failed")
    return {"attempt": ctx.attempt}


@package.node("t.kit.forever")
async def forever(ctx: Context, params: dict) -> dict:
    await ctx.progress(0.1, "waiting for ever")
    await anyio.sleep_forever()
    return {}
