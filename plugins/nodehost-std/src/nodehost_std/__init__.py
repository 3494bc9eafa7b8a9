"""nodehost.std: the first-party node package (commands, HTTP, files, JSON, delay, fail).

Installed as the distribution `nodehost-std`; the host finds `package` through the entry point
`std = "nodehost_std:package"` in the group `nodehost.packages`.
"""

from __future__ import annotations

from nodehost import Package

__all__ = ["package"]

package = Package(
    "nodehost.std",
    "1.0.0",
    description=(
        "Standard nodes: run a command, make an HTTP request, read and write files, "
        "transform JSON, wait, and fail on purpose."
    ),
)

# Importing these modules registers their node types on `package`.
from . import command, control, files, http, transform  # noqa: E402, F401
