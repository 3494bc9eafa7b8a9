"""What the executors cost per node: `python -m bench.executors [--quick]`.

One invocation, each engine in a fresh child process, on a chain, a fan-out and layers,
with and without data along edges:

- `bare-anyio`: the anyio ready-queue loop of the throughput table;
- `inprocess`: nodehost, async no-op nodes in-process (as the throughput table);
- `inprocess-sync`: the same with plain (sync) functions;
- `subprocess`: the third-party package `acme.bench` (bench/thirdparty.py) on the
  daemon's default executor: worker processes;
- `subprocess-sync`: its sync node types, one attempt per worker at a time.

nodehost runs as a long-running daemon does: one host composed as `nodehost serve`
composes its own (`api.daemon_host`, journal on), an untimed first run (which starts the
workers: reported as "first run"), then the timed repeats on the same host.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENGINES = ["bare-anyio", "inprocess", "inprocess-sync", "subprocess", "subprocess-sync"]
FULL = ["chain:2000", "fanout:1000", "layered:50x200"]
QUICK = ["chain:500", "fanout:500", "layered:10x200"]
ROOT = Path(__file__).resolve().parent.parent
TARGET = 3.0


def _document(engine: str, shape: Any, data: bool) -> bytes:
    import msgspec

    from . import graphs, thirdparty

    sync = engine.endswith("-sync")
    kind = "value" if data else "noop"
    node_type = f"acme.bench.{'sync_' if sync else ''}{kind}"
    return msgspec.json.encode(graphs.nodehost_document(shape, data=data, node_type=node_type,
                                                        package=thirdparty.PINNED))


async def _nodehost(engine: str, shape: Any, data: bool, repeats: int) -> dict[str, Any]:
    from nodehost.api import daemon_host
    from nodehost.config import Config, DocumentsConfig, ExecutorsConfig, SchedulerConfig
    from nodehost.plugins import Catalog
    from nodehost.store.store import Store

    from . import engines, thirdparty

    executors = ExecutorsConfig() if engine.startswith("subprocess") else \
        ExecutorsConfig(default="inprocess")
    config = Config(scheduler=SchedulerConfig(parallelism=engines.PARALLELISM),
                    executors=executors, documents=DocumentsConfig(max_document_bytes=1 << 30))
    catalog = Catalog()
    catalog.add(thirdparty.PACKAGE)
    body = _document(engine, shape, data)
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nodehost-bench-") as tmp:
        store = Store(Path(tmp) / "store", config.journal)
        store.open()
        host, _api = daemon_host(config, catalog, store)
        try:
            async with host.running():
                for n in range(repeats + 1):
                    started = time.perf_counter()
                    run = host.submit(body)
                    await host.scheduler.wait_run(run.run_id)
                    await store.wait_durable()
                    times.append(time.perf_counter() - started)
                    if run.status != "succeeded":
                        raise RuntimeError(f"run ended {run.status}: {run.error}")
                    del n
        finally:
            store.close()
    return {"first": times[0], "times": times[1:]}


def measure(engine: str, graph: str, data: bool, repeats: int) -> dict[str, Any]:
    """One engine on one graph, in this process."""
    from nodehost import collector

    from . import engines, graphs

    shape = graphs.by_name(graph)
    if engine == "bare-anyio":
        out = engines.run_bare("bare-anyio", shape, data, repeats, None)
    else:
        collector.tune_for_daemon()
        out = engines.run_as_daemon(_nodehost, engine, shape, data, repeats)
    out["us_per_node"] = min(out["times"]) / len(shape) * 1e6
    return out


def _child(engine: str, graph: str, data: bool, repeats: int) -> dict[str, Any]:
    job = json.dumps({"engine": engine, "graph": graph, "data": data, "repeats": repeats})
    proc = subprocess.run([sys.executable, "-m", "bench.executors", "--child", job], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run(graphs: list[str], repeats: int) -> dict[str, Any]:
    """Every engine on every graph; the per-node table and the ratios."""
    out: dict[str, Any] = {}
    for graph in graphs:
        for data in (False, True):
            label = f"{graph}{' +data' if data else ''}"
            row = out[label] = {}
            for engine in ENGINES:
                print(f"  {label:22} {engine}", file=sys.stderr, flush=True)
                row[engine] = _child(engine, graph, data, repeats)
    return out


def ratios(row: dict[str, Any]) -> dict[str, float | None]:
    def us(engine: str) -> float | None:
        found = row.get(engine, {})
        return found.get("us_per_node") if "error" not in found else None

    def ratio(a: str, b: str) -> float | None:
        x, y = us(a), us(b)
        return None if x is None or y is None else x / y

    return {"sync/bare-anyio": ratio("inprocess-sync", "bare-anyio"),
            "subprocess/inprocess": ratio("subprocess", "inprocess"),
            "subprocess-sync/inprocess-sync": ratio("subprocess-sync", "inprocess-sync")}


def table(results: dict[str, Any]) -> str:
    head = ["graph", *[f"{e} us/node" for e in ENGINES], "first run (subprocess)",
            "sync/bare-anyio", "subprocess/inprocess", "subprocess-sync/inprocess-sync"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in results.items():
        cells = [label]
        for engine in ENGINES:
            found = row[engine]
            cells.append(found["error"][:40] if "error" in found else
                         f"{found['us_per_node']:.1f}")
        first = row["subprocess"].get("first")
        cells.append("-" if first is None else f"{first * 1000:.0f} ms")
        for value in ratios(row).values():
            cells.append("-" if value is None else f"{value:.2f}x"
                         + ("" if value <= TARGET else " (over 3x)"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.executors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller graphs, fewer repeats")
    parser.add_argument("--json", metavar="FILE", help="keep the raw results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(measure(job["engine"], job["graph"], job["data"], job["repeats"])))
        return
    results = run(QUICK if args.quick else FULL, 2 if args.quick else 3)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
