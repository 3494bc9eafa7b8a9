"""Nodes that produce too much, or what the journal cannot store (tests/test_outputs.py);
module-level so that subprocess workers can import them."""

from __future__ import annotations

from typing import Any

from nodehost import Context, Package

package = Package("out", "1.0")


@package.node("out.big")
def big(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """A result of `bytes` bytes."""
    return {"blob": "x" * params["bytes"]}


@package.node("out.huge_int")
def huge_int(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """An integer msgpack cannot hold."""
    return {"n": 2**64}


@package.node("out.partial")
def partial(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """A partial result over the limit, then (if it got that far) a result."""
    ctx.partial({"blob": "x" * params["bytes"]})
    return {"after": True}


@package.node("out.chatty")
def chatty(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """`lines` log lines of 100 characters."""
    for i in range(params["lines"]):
        ctx.log(f"{i:05d}" + "." * 94 + "\n")
    return {"done": True}
