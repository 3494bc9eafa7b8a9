"""The child process of one measurement: `python -m bench.child '<job as JSON>'`.

Prints the result as one JSON line on stdout (the last line). Each job runs in its own
process so that peak RSS, imports and caches belong to it alone.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def run(job: dict[str, Any]) -> dict[str, Any]:
    kind = job["kind"]
    if kind == "versions":
        return _versions()
    if kind == "engine":
        from . import engines, graphs

        return engines.run_engine(job["engine"], graphs.by_name(job["graph"]), job["data"],
                                  job["repeats"], job.get("budget"), job.get("state_base"))
    from . import measures

    return getattr(measures, kind)(**{k: v for k, v in job.items() if k != "kind"})


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("nodehost", "anyio", "msgspec", "dask", "distributed"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main() -> None:
    job = json.loads(sys.argv[1])
    result = run(job)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
