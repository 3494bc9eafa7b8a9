"""`python -m nodehost.executors.describe`, run with an environment's interpreter.

Loads the `nodehost.packages` entry points visible there and prints, as one JSON object,
the descriptors of the packages they register (`{"packages": [...], "errors": [...]}`).
This is how the daemon learns what an environment holds without importing any of it.
Exits 1 when a plugin is broken or nothing is registered.
"""

from __future__ import annotations

import sys

import msgspec

from ..descriptors import describe_package
from ..plugins import PluginHost

__all__ = ["main"]


def main() -> int:
    host = PluginHost()
    reports = host.load_entry_points()
    packages = []
    for report in reports:
        if not report.ok or report.skipped:
            continue
        distribution = report.plugin.rsplit(":", 1)[0]
        for label in report.packages:
            name, _, version = label.partition("==")
            for package in host.catalog.package_objects(name, version):
                packages.append(describe_package(package, distribution=distribution))
    errors = [{"plugin": r.plugin, "error": r.error} for r in reports if not r.ok]
    sys.stdout.buffer.write(msgspec.json.encode({"packages": packages, "errors": errors}))
    sys.stdout.buffer.write(b"\n")
    return 0 if packages and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
