"""Measurements other than throughput, each run in its own child process (see child.py):
submit-to-first-dispatch latency, event latency with many subscribers, recovery time,
and the idle footprint of a host and of the daemon.
"""

from __future__ import annotations

import gc
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from . import engines, graphs, nodes
from .engines import bench_config, daemon_host


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _status_kb(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# --- submit to first dispatch -------------------------------------------------------------------

def latency(repeats: int, graph: str, state_base: str | None = None) -> dict[str, Any]:
    """Median time from `host.submit(document)` to the first node starting, for a document
    as a dict (decoded, validated, compiled in submit) and already prepared."""
    catalog = nodes.catalog()
    shape = graphs.by_name(graph)
    doc = graphs.nodehost_document(shape, data=False, node_type="bench.stamp")
    out: dict[str, list[float]] = {"dict": [], "prepared": []}

    async def main(state_dir: Path) -> None:
        async with daemon_host(state_dir, catalog) as host:
            for _ in range(repeats):
                for form in ("dict", "prepared"):
                    document = doc if form == "dict" else host.prepare(doc)
                    nodes.STARTS.clear()
                    started = time.perf_counter()
                    run = host.submit(document)
                    await host.scheduler.wait_run(run.run_id)
                    out[form].append(nodes.STARTS[0] - started)
                    await host.store.wait_durable()

    with tempfile.TemporaryDirectory(prefix="nodehost-bench-", dir=state_base) as tmp:
        engines.run_as_daemon(main, Path(tmp))
    return {"nodes": len(shape), "repeats": repeats,
            "dict_median": statistics.median(out["dict"]),
            "prepared_median": statistics.median(out["prepared"]),
            "prepared_min": min(out["prepared"])}


# --- the write-ahead wait of nodes with side effects -------------------------------------------

def write_ahead(nodes_in_chain: int, state_base: str | None = None) -> dict[str, Any]:
    """Time per node of a chain whose nodes are not idempotent (each starts only once its
    Dispatch record is durable: one fdatasync per node in a chain, where nothing else can
    share it), next to the same chain of idempotent nodes, in one host."""
    catalog = nodes.catalog()
    shape = graphs.by_name(f"chain:{nodes_in_chain}")
    out: dict[str, float] = {}

    async def main(state_dir: Path) -> None:
        async with daemon_host(state_dir, catalog) as host:
            for node_type in ("bench.noop", "bench.effect", "bench.noop", "bench.effect"):
                prepared = host.prepare(graphs.nodehost_document(shape, data=False,
                                                                 node_type=node_type))
                started = time.perf_counter()
                run = host.submit(prepared)
                await host.scheduler.wait_run(run.run_id)
                await host.store.wait_durable()
                seconds = (time.perf_counter() - started) / len(shape)
                out[node_type] = min(out.get(node_type, seconds), seconds)

    with tempfile.TemporaryDirectory(prefix="nodehost-bench-", dir=state_base) as tmp:
        engines.run_as_daemon(main, Path(tmp))
    return {"nodes": len(shape), "idempotent": out["bench.noop"],
            "not_idempotent": out["bench.effect"]}


# --- event latency with many subscribers ----------------------------------------------------------

def events(graph: str, subscribers: int, state_base: str | None = None) -> dict[str, Any]:
    """Envelope latency from the engine's emit to each in-process subscriber, which reads the
    way an SSE stream does (await one, drain the rest, encode SSE frames)."""
    from nodehost.events import Envelope, sse_frame

    emitted: dict[str, float] = {}

    def stamp(envelope: Envelope) -> None:
        # an observer sees each envelope right after the bus has handed it to every
        # subscriber, in the same call: no subscriber can have run in between
        emitted[envelope.id] = time.perf_counter()

    catalog = nodes.catalog()
    shape = graphs.by_name(graph)
    doc = graphs.nodehost_document(shape, data=False)
    result: dict[str, Any] = {"graph": shape.name, "nodes": len(shape),
                              "subscribers": subscribers}

    async def run_once(state_dir: Path, n_subs: int) -> tuple[float, list[float], int]:
        latencies: list[float] = []
        async with daemon_host(state_dir, catalog, observers=(stamp,)) as host:
            bus = host.bus
            subs = [bus.subscribe() for _ in range(n_subs)]

            async def consume(sub: Any) -> None:
                while True:
                    try:
                        first = await sub.receive.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError):
                        return
                    now = time.perf_counter()
                    batch = [first, *sub.drain()]
                    latencies.extend(now - emitted[e.id] for e in batch)
                    b"".join(map(sse_frame, batch))

            prepared = host.prepare(doc)
            async with anyio.create_task_group() as tg:
                for sub in subs:
                    tg.start_soon(consume, sub)
                started = time.perf_counter()
                run = host.submit(prepared)
                await host.scheduler.wait_run(run.run_id)
                await host.store.wait_durable()
                seconds = time.perf_counter() - started
                for sub in subs:
                    sub.close()  # the consumers drain what is left, then stop
            return seconds, latencies, bus.dropped_subscribers

    with tempfile.TemporaryDirectory(prefix="nodehost-bench-", dir=state_base) as tmp:
        base, _, _ = engines.run_as_daemon(run_once, Path(tmp) / "a", 0)
        seconds, lat, dropped = engines.run_as_daemon(run_once, Path(tmp) / "b", subscribers)
    lat.sort()
    result.update(
        run_seconds_without=base, run_seconds_with=seconds, delivered=len(lat),
        dropped_subscribers=dropped,
        p50=lat[len(lat) // 2] if lat else None, p99=lat[int(len(lat) * 0.99)] if lat else None,
        max=lat[-1] if lat else None, rss_kb=_maxrss_kb(),
    )
    return result


# --- recovery ----------------------------------------------------------------------------------

def recovery_write(graph: str, runs: int, state_dir: str) -> dict[str, Any]:
    """Write history: `runs` runs of `graph`, all finished and durable."""
    catalog = nodes.catalog()
    shape = graphs.by_name(graph)
    doc = graphs.nodehost_document(shape, data=True)

    async def main() -> int:
        async with daemon_host(Path(state_dir), catalog) as host:
            prepared = host.prepare(doc)
            for _ in range(runs):
                run = host.submit(prepared)
                await host.scheduler.wait_run(run.run_id)
            await host.store.wait_durable()
            return host.store.records_written

    records = engines.run_as_daemon(main)
    return {"runs": runs, "nodes": runs * len(shape), "records": records,
            "journal_bytes": sum(p.stat().st_size for p in Path(state_dir).rglob("*")
                                 if p.is_file())}


def recovery_read(state_dir: str) -> dict[str, Any]:
    """In a fresh process, what the daemon does at start: Store.open(), the history applied
    to a host composed like the daemon's (replay, then resume) and the API's index rebuilt."""
    t0 = time.perf_counter()
    from nodehost.api import daemon_host as compose
    from nodehost.recovery import replay
    from nodehost.store.store import Store

    catalog = nodes.catalog()
    config = bench_config()
    imported = time.perf_counter() - t0

    started = time.perf_counter()
    store = Store(Path(state_dir) / "store", config.journal)
    recovered = store.open()
    opened = time.perf_counter()
    host, api = compose(config, catalog, store)
    # Host.recover, in its two steps: replay (rebuilding only the events the replay buffer
    # can hold; they are published, as in the daemon), then resume
    engine = host.engine
    applied = replay(engine, recovered.records, keep_events=config.events.replay_buffer)
    replayed = time.perf_counter()
    resumed = engine.resume()
    done = time.perf_counter()
    api.restore(engine.runs.values())
    restored = time.perf_counter()
    store.close()
    # what recovery leaves to the collector: the first full collection walks all of it
    gc.collect()
    first_full_gc = time.perf_counter() - restored
    nodes_restored = sum(len(r.tasks) for r in engine.runs.values())
    return {"import": imported, "open": opened - started, "replay": replayed - opened,
            "resume": done - replayed, "index": restored - done, "total": restored - started,
            "records": applied, "first_full_gc": first_full_gc,
            "runs": len(engine.runs), "nodes": nodes_restored,
            "events_republished": host.bus.published, "resumed": resumed,
            "rss_kb": _maxrss_kb()}


# --- idle footprint ------------------------------------------------------------------------------

def idle_host(seconds: float, state_base: str | None = None) -> dict[str, Any]:
    """RSS and CPU of a process with nodehost imported, the installed plugins loaded and an
    idle journaled host (scheduler, store) running for `seconds`."""
    from nodehost.plugins import PluginHost

    plugins = PluginHost()
    reports = plugins.load_entry_points()
    out: dict[str, Any] = {"plugins": [p for r in reports if r.ok for p in r.packages]}

    async def main(state_dir: Path) -> None:
        async with daemon_host(state_dir, plugins.catalog):
            await anyio.sleep(1.0)  # settle
            cpu, wall = _cpu_self(), time.perf_counter()
            await anyio.sleep(seconds)
            out["cpu_seconds"] = _cpu_self() - cpu
            out["wall_seconds"] = time.perf_counter() - wall
            out["rss_kb"] = _status_kb("self", "VmRSS")
            out["peak_rss_kb"] = _status_kb("self", "VmHWM")

    with tempfile.TemporaryDirectory(prefix="nodehost-bench-", dir=state_base) as tmp:
        engines.run_as_daemon(main, Path(tmp))
    return out


def _tree_pids(pid: int) -> list[int]:
    """pid and its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_DAEMON_CONFIG = """\
[server]
listen = "unix:{tmp}/run/nodehost.sock"
runtime_dir = "{tmp}/run"
state_dir = "{tmp}/state"
log_level = "warning"
"""


def daemon(seconds: float, graph: str, subscribers: int,
           state_base: str | None = None) -> dict[str, Any]:
    """`nodehost serve` as a separate process: its idle RSS and CPU over `seconds`, then
    event latency through uvicorn to `subscribers` httpx streaming clients on its Unix
    socket, while it runs `graph` made of nodehost.std.delay(0) nodes."""
    import httpx

    tmp = tempfile.mkdtemp(prefix="nh-", dir=state_base)
    config = Path(tmp) / "config.toml"
    config.write_text(_DAEMON_CONFIG.format(tmp=tmp))
    sock = f"{tmp}/run/nodehost.sock"
    out: dict[str, Any] = {}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nodehost", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        transport = httpx.HTTPTransport(uds=sock)
        with httpx.Client(transport=transport, base_url="http://nodehost") as client:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("nodehost serve exited: "
                                       + proc.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
                try:
                    if client.get("/api/v1/healthz").status_code == 200:
                        break
                except (httpx.TransportError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("nodehost serve did not answer within 30 s")
                time.sleep(0.02)
            out["ready_seconds"] = time.perf_counter() - started
            time.sleep(1.0)  # settle
            pids = _tree_pids(proc.pid)
            cpu0, wall0 = sum(_cpu_of(p) for p in pids), time.perf_counter()
            time.sleep(seconds)
            pids = _tree_pids(proc.pid)
            out["idle_cpu_seconds"] = sum(_cpu_of(p) for p in pids) - cpu0
            out["idle_wall_seconds"] = time.perf_counter() - wall0
            out["processes"] = len(pids)
            out["idle_rss_kb"] = sum(_status_kb(p, "VmRSS") for p in pids)
            out["idle_daemon_rss_kb"] = _status_kb(proc.pid, "VmRSS")
        out.update(anyio.run(_sse_clients, sock, graph, subscribers))
        out["peak_rss_kb"] = _status_kb(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


async def _sse_clients(sock: str, graph: str, subscribers: int) -> dict[str, Any]:
    import httpx
    import msgspec

    shape = graphs.by_name(graph)
    doc = graphs.nodehost_document(shape, data=False, node_type="nodehost.std.delay")
    for node in doc["nodes"]:
        node["package"] = {"name": "nodehost.std", "version": "1.0.0"}
        node["parameters"] = {"seconds": 0}
    latencies: list[float] = []
    counts = [0] * subscribers
    decode = msgspec.json.Decoder().decode

    async def listen(i: int, client: httpx.AsyncClient, ready: anyio.Event) -> None:
        buf = b""
        async with client.stream("GET", "/api/v1/events") as response:
            ready.set()
            async for chunk in response.aiter_raw():
                now = time.time()
                buf += chunk
                *frames, buf = buf.split(b"\n\n")
                for frame in frames:
                    for line in frame.split(b"\n"):
                        if line.startswith(b"data: "):
                            env = decode(line[6:])
                            at = datetime.fromisoformat(env["occurredAt"]).timestamp()
                            latencies.append(now - at)
                            counts[i] += 1
                            if (env["type"] == "run.status"
                                    and env["data"]["status"] == "succeeded"):
                                return

    limits = httpx.Limits(max_connections=subscribers + 4)
    transport = httpx.AsyncHTTPTransport(uds=sock, limits=limits)
    async with httpx.AsyncClient(transport=transport, base_url="http://nodehost",
                                 timeout=httpx.Timeout(60)) as client:
        async with anyio.create_task_group() as tg:
            for i in range(subscribers):
                ready = anyio.Event()
                tg.start_soon(listen, i, client, ready)
                await ready.wait()
            started = time.perf_counter()
            response = await client.post("/api/v1/runs",
                                         json={"workflow": doc, "clientId": "bench"})
            response.raise_for_status()
        seconds = time.perf_counter() - started
    latencies.sort()
    return {"sse_graph": shape.name, "sse_nodes": len(shape), "sse_subscribers": subscribers,
            "sse_seconds": seconds, "sse_delivered": len(latencies),
            "sse_per_client_min": min(counts), "sse_p50": latencies[len(latencies) // 2],
            "sse_p99": latencies[int(len(latencies) * 0.99)], "sse_max": latencies[-1]}
