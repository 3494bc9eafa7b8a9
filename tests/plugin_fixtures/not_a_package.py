"""A plugin that registers something other than a Package."""

from __future__ import annotations

from nodehost import hookimpl


@hookimpl
def nodehost_register_packages(register):  # type: ignore[no-untyped-def]
    register({"name": "acme.dict", "version": "1.0"})
