"""Two copies of one package version, as two distributions would each ship it."""

from __future__ import annotations

from nodehost import Context, Package


def _make() -> Package:
    package = Package("acme.dup", "1.0.0")

    @package.node("acme.dup.run")
    async def run(ctx: Context, params: dict) -> dict:
        return {}

    return package


first = _make()
second = _make()
