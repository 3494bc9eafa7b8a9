"""Fake installed distributions for the plugin loading tests.

The plugin modules are the files next to this one (`plugin_fixtures.<name>`); `install`
writes the `<name>-<version>.dist-info/` directory (METADATA + entry_points.txt) that makes
one of them an installed distribution, in a directory the test puts on sys.path.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["install"]


def install(
    site: Path,
    name: str,
    version: str,
    entry_points: dict[str, str],
    *,
    group: str = "nodehost.packages",
) -> Path:
    """Write the dist-info of distribution `name` `version` into `site`, and return it.

    `entry_points` maps entry point names to object references (`module:attribute`).
    """
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Summary: a fake distribution for the nodehost tests\n"
    )
    lines = [f"[{group}]", *(f"{ep} = {ref}" for ep, ref in entry_points.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return info
