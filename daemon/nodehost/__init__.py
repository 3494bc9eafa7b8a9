"""nodehost: a single-machine workflow daemon whose nodes come from pluggy plugins.

This module is the public API for node package authors; everything else is internal.

    from nodehost import Package, Context, NodeError

    package = Package("acme.vision", "1.2.0")

    @package.node("acme.vision.detect", timeout=30)
    async def detect(ctx: Context, params: DetectParams) -> DetectResult: ...

Authors test their packages with the pytest plugin `nodehost.testing` (fixture
`nodehost_host`); docs/writing-node-packages.md walks through writing one.
"""

from .errors import NodeError
from .hookspecs import hookimpl
from .node_api import Context, Package

__all__ = ["Context", "NodeError", "Package", "hookimpl"]

__version__ = "0.1.0"
