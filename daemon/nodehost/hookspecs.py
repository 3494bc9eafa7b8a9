"""The hooks a node package may implement (one module, plain functions; tier 2).

Call hooks by keyword. Arguments are only ever added, never removed: pluggy lets an
implementation accept a subset of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .node_api import Package

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "nodehost"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def nodehost_register_packages(register: Callable[[Package], None]) -> None:
    """Call `register(package)` for every node package (name + version) this plugin provides."""
