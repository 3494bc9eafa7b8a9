"""A node package registered through the hook, as a package needing start-up code would."""

from __future__ import annotations

from nodehost import Context, Package, hookimpl

package = Package("acme.hooked", "0.3.0")


@package.node("acme.hooked.ping")
def ping(ctx: Context, params: dict) -> dict:
    """Answer pong."""
    return {"pong": True}


@hookimpl
def nodehost_register_packages(register):  # type: ignore[no-untyped-def]
    register(package)
