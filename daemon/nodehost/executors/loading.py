"""Where a worker finds the code of the node types it runs, and how a failure goes back
(tier 3: imports, no other I/O).

Shared by the worker process (`worker`) and the Dask task (`dask_task`): both import a
package version's node functions the same way, from the functions the host names (a package
of the daemon's own environment) or from the package's entry points (one installed where
the worker runs), and both turn what a node raised into the same `Failed` frame.
"""

from __future__ import annotations

import importlib
import traceback
from typing import Any

from ..errors import Code, NodeError
from ..model import ErrorInfo
from ..node_api import NodeSpec, Package
from . import AttemptFailed
from .frames import Failed, Load

__all__ = ["Registry", "failed_frame", "import_node", "unavailable"]


class Registry:
    """The node types this worker can run, imported when first asked for."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self._specs: dict[str, NodeSpec] = {}
        self._broken: dict[str, str] = {}
        if load.functions is None:
            self._from_entry_points()

    def types(self) -> list[str]:
        if self.load.functions is not None:
            return sorted(self.load.functions)
        return sorted(self._specs)

    def _from_entry_points(self) -> None:
        from ..plugins import PluginHost  # pluggy: only here, where entry points are loaded

        host = PluginHost()
        reports = host.load_entry_points()
        load = self.load
        for node_type in host.catalog.types(load.package, load.version):
            spec = host.catalog.code((load.package, load.version, node_type))
            if spec is not None:
                self._specs[node_type] = spec
        if not self._specs:
            broken = "; ".join(f"{r.plugin}: {r.error}" for r in reports if not r.ok)
            raise LookupError(f"no installed plugin here provides {load.package}=="
                              f"{load.version}" + (f" ({broken})" if broken else ""))

    def get(self, node_type: str) -> NodeSpec:
        """The node type's spec; AttemptFailed (not retryable) if it cannot be imported."""
        spec = self._specs.get(node_type)
        if spec is not None:
            return spec
        problem = self._broken.get(node_type)
        if problem is None:
            target = (self.load.functions or {}).get(node_type)
            if target is None:
                problem = (f"package {self.load.package}=={self.load.version} has no node "
                           f"type {node_type!r} here")
            else:
                try:
                    spec = self._specs[node_type] = import_node(self.load, node_type, target)
                    return spec
                except Exception as exc:
                    problem = (f"the worker cannot import {target} (node type {node_type!r}):"
                               f" {type(exc).__name__}: {exc}")
            self._broken[node_type] = problem
        raise AttemptFailed(unavailable(problem), retryable=False)


def unavailable(message: str) -> ErrorInfo:
    return ErrorInfo(code=Code.UNAVAILABLE, message=message)


def import_node(load: Load, node_type: str, target: str) -> NodeSpec:
    """Import a node function and rebuild its spec (types come from its annotations)."""
    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    registry = Package(load.package, load.version)
    registry.node(node_type)(obj)
    return registry.nodes[node_type]



def failed_frame(slot: int, exc: BaseException) -> Failed:
    if isinstance(exc, NodeError):
        details = dict(exc.details or {})
        if exc.remediation:
            details["remediation"] = exc.remediation
        return Failed(slot, exc.code, exc.message, details or None, retryable=exc.retryable)
    if isinstance(exc, AttemptFailed):
        return Failed(slot, exc.error.code, exc.error.message, exc.error.details,
                      retryable=exc.retryable, raised=False)
    if isinstance(exc, MemoryError):
        return Failed(slot, Code.RUNNER_FAILURE, "the node ran out of memory (MemoryError)",
                      {"memoryLimit": True})
    tb = "".join(traceback.format_exception(exc, limit=-8))[-4000:]
    return Failed(slot, Code.RUNNER_FAILURE, f"{type(exc).__name__}: {exc}",
                  {"traceback": tb})
