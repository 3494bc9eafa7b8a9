"""A module with a Package, named by an entry point that forgot `:package`."""

from __future__ import annotations

from nodehost import Context, Package

package = Package("acme.forgot", "1.0.0")


@package.node("acme.forgot.run")
def run(ctx: Context, params: dict) -> dict:
    return {}
