"""A plugin whose hook raises while registering."""

from __future__ import annotations

from nodehost import hookimpl


@hookimpl
def nodehost_register_packages(register):  # type: ignore[no-untyped-def]
    raise RuntimeError("no licence key: set ACME_LICENCE")
