"""A well-behaved node package: the entry point names the Package."""

from __future__ import annotations

import msgspec

from nodehost import Context, Package

package = Package("acme.good", "1.0.0", description="Greets people.")


class Greeting(msgspec.Struct):
    name: str


class Greeted(msgspec.Struct):
    text: str


@package.node("acme.good.greet", timeout=5, retry=2, idempotent=True)
async def greet(ctx: Context, params: Greeting) -> Greeted:
    """Say hello to someone."""
    return Greeted(text=f"hello {params.name}")
