"""A plugin whose hook name has a typo (register_package, without the s)."""

from __future__ import annotations

from nodehost import Package, hookimpl

package = Package("acme.typo", "1.0.0")


@hookimpl
def nodehost_register_package(register):  # type: ignore[no-untyped-def]
    register(package)
