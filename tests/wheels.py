"""Real wheel files for tests, written without a build backend or a network.

`textstats_wheel(dir, "1.0.0")` and `"2.0.0"` are one distribution, acme-textstats, with one
import name, acme_textstats, and different behaviour: 1.0.0 counts words, 2.0.0 characters.
On import the module appends its interpreter's path to $ACME_TEXTSTATS_MARKER (when set), so
a test can tell which processes imported it.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def make_wheel(directory: Path, dist: str, version: str, files: dict[str, str],
               entry_points: dict[str, str], requires: tuple[str, ...] = ()) -> Path:
    name = dist.replace("-", "_")
    info = f"{name}-{version}.dist-info"
    contents = dict(files)
    contents[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires))
    contents[f"{info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: nodehost-tests\n"
                                 "Root-Is-Purelib: true\nTag: py3-none-any\n")
    contents[f"{info}/entry_points.txt"] = "[nodehost.packages]\n" + "".join(
        f"{k} = {v}\n" for k, v in entry_points.items())
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in contents.items():
            zf.writestr(path, text)
    return wheel


TEXTSTATS = '''"""acme-textstats {version}: counts {what}."""
import os
import sys

from nodehost import Context, Package

if os.environ.get("ACME_TEXTSTATS_MARKER"):
    with open(os.environ["ACME_TEXTSTATS_MARKER"], "a") as marker:
        marker.write(sys.executable + "\\n")

package = Package("acme.textstats", "{version}")


@package.node("acme.textstats.count", idempotent=True)
async def count(ctx: Context, params: dict) -> dict:
    """Count {what}."""
    text = params["text"]
    return {{"count": {expr}, "version": "{version}"}}


@package.node("acme.textstats.hold", idempotent=True)
async def hold(ctx: Context, params: dict) -> dict:
    """Wait until the file `release` exists (a node that takes as long as a test wants)."""
    import asyncio

    while not os.path.exists(params["release"]):
        await asyncio.sleep(0.005)
    return {{"version": "{version}"}}
'''


def textstats_wheel(directory: Path, version: str) -> Path:
    words = version.startswith("1.")
    source = TEXTSTATS.format(version=version, what="words" if words else "characters",
                              expr="len(text.split())" if words else "len(text)")
    return make_wheel(directory, "acme-textstats", version,
                      {"acme_textstats/__init__.py": source},
                      {"textstats": "acme_textstats:package"}, requires=("nodehost",))
