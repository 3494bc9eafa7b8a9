"""One function per engine: run a graph `repeats` times, return the wall time of each run.

Every function here runs inside a fresh child process (see child.py), so the peak RSS the
child reports belongs to that engine alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from . import graphs, nodes

PARALLELISM = 32  # nodehost's default [scheduler] parallelism; the bare loops use the same


def bench_config(parallelism: int = PARALLELISM) -> Any:
    """The daemon's default configuration, but for nodes run in-process (the bench's nodes
    measure the scheduler, not a worker pipe) and a document limit that lets the
    100,000-node document in (some 19 MB of JSON, over the default 16 MiB)."""
    from nodehost.config import Config, DocumentsConfig, ExecutorsConfig, SchedulerConfig

    return Config(scheduler=SchedulerConfig(parallelism=parallelism),
                  executors=ExecutorsConfig(default="inprocess"),
                  documents=DocumentsConfig(max_document_bytes=1 << 30))


def run_as_daemon(fn: Callable[..., Any], *args: Any) -> Any:
    """`anyio.run(fn, *args)` on the event loop `nodehost serve` runs on (asyncio, polling
    `[scheduler] loop_poll_us` before it sleeps)."""
    import anyio

    from nodehost.executors.polling import run_options

    return anyio.run(fn, *args, backend_options=run_options(bench_config().scheduler.loop_poll_us))


@asynccontextmanager
async def daemon_host(state_dir: Path, catalog: Any, *, parallelism: int = PARALLELISM,
                      observers: tuple[Callable[[Any], None], ...] = ()) -> AsyncIterator[Any]:
    """A running host composed as `nodehost serve` composes its own (`api.daemon_host`: the
    journal with batch fsync under `state_dir`, the runs index, the API's state), without
    the HTTP server."""
    from nodehost.api import daemon_host as compose
    from nodehost.store.store import Store

    config = bench_config(parallelism)
    store = Store(state_dir / "store", config.journal)
    store.open()
    host, _api = compose(config, catalog, store, observers=observers)
    try:
        async with host.running():
            yield host
    finally:
        store.close()


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --- nodehost ------------------------------------------------------------------------------------

def nodehost_store_dir(base: str | None) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="nodehost-bench-", dir=base)


async def nodehost_once(body: bytes, catalog: Any, state_dir: Path, *,
                        parallelism: int = PARALLELISM) -> dict[str, Any]:
    """One run of a document through a host composed as the daemon's: the time to prepare
    it (decode, validate, compile), then (submit -> finished and durable), plus counters."""
    async with daemon_host(state_dir, catalog, parallelism=parallelism) as host:
        t = time.perf_counter()
        prepared = host.prepare(body)
        prepare = time.perf_counter() - t
        started = time.perf_counter()
        run = host.submit(prepared)
        del prepared
        await host.scheduler.wait_run(run.run_id)
        await host.store.wait_durable()
        seconds = time.perf_counter() - started
    if run.status != "succeeded":
        raise RuntimeError(f"nodehost run ended {run.status}: {run.error}")
    return {"seconds": seconds, "prepare": prepare, "events": host.bus.published,
            "records": host.store.records_written, "batches": host.store.batches}


def _repeat(repeats: int, budget: float | None) -> Any:
    """range(repeats), cut short once `budget` seconds have passed (at least one)."""
    started = time.perf_counter()
    for n in range(repeats):
        if n and budget is not None and time.perf_counter() - started > budget:
            return
        yield n


def run_nodehost(shape: graphs.Shape, data: bool, repeats: int, budget: float | None,
                 state_base: str | None, parallelism: int = PARALLELISM,
                 tuned: bool = True) -> dict[str, Any]:
    """`tuned`: with the collector settings `nodehost serve` and `nodehost run` apply once
    started (collector.tune_for_daemon); False measures Python's defaults."""
    import msgspec

    from nodehost import collector

    catalog = nodes.catalog()
    if tuned:
        collector.tune_for_daemon()
    # the document as a client sends it: bytes (the bench keeps no dict of it alive)
    body = msgspec.json.encode(graphs.nodehost_document(shape, data=data))
    times, prepares, last = [], [], {}
    for _ in _repeat(repeats, budget):
        with nodehost_store_dir(state_base) as tmp:
            last = run_as_daemon(partial(nodehost_once, body, catalog, Path(tmp),
                                         parallelism=parallelism))
        times.append(last["seconds"])
        prepares.append(last["prepare"])
        gc.collect()
    return {"times": times, "prepare": min(prepares), "events": last["events"],
            "records": last["records"], "batches": last["batches"]}


# --- bare loops: the floor of an async Python scheduler ----------------------------------------

async def _noop(args: Any) -> Any:
    return None


async def _value(args: Any) -> Any:
    return nodes.VALUE


def _prep(shape: graphs.Shape) -> tuple[list[int], list[list[int]], deque[int]]:
    indeg = [len(ups) for ups in shape.deps]
    down: list[list[int]] = [[] for _ in shape.deps]
    for i, ups in enumerate(shape.deps):
        for u in ups:
            down[u].append(i)
    return indeg, down, deque(i for i, d in enumerate(indeg) if not d)


async def bare_sequential(shape: graphs.Shape, data: bool, parallelism: int) -> None:
    """Pop a ready node, await its no-op, release its dependents: no task per node."""
    indeg, down, ready = _prep(shape)
    deps = shape.deps
    results: list[Any] = [None] * len(deps)
    fn = _value if data else _noop
    while ready:
        i = ready.popleft()
        results[i] = await fn([results[u] for u in deps[i]] if data else ())
        for d in down[i]:
            indeg[d] -= 1
            if not indeg[d]:
                ready.append(d)


async def bare_asyncio(shape: graphs.Shape, data: bool, parallelism: int) -> None:
    """One asyncio task per node, at most `parallelism` at once; a finishing task releases
    its dependents and starts what became ready (as nodehost's scheduler does)."""
    indeg, down, ready = _prep(shape)
    deps = shape.deps
    n = len(deps)
    results: list[Any] = [None] * n
    fn = _value if data else _noop
    state = {"running": 0, "finished": 0}
    done = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def pump() -> None:
        while ready and state["running"] < parallelism:
            i = ready.popleft()
            state["running"] += 1
            task = asyncio.create_task(one(i, [results[u] for u in deps[i]] if data else ()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def one(i: int, args: Any) -> None:
        results[i] = await fn(args)
        state["running"] -= 1
        state["finished"] += 1
        for d in down[i]:
            indeg[d] -= 1
            if not indeg[d]:
                ready.append(d)
        if state["finished"] == n:
            done.set()
        pump()

    pump()
    await done.wait()


async def bare_anyio(shape: graphs.Shape, data: bool, parallelism: int) -> None:
    """The same loop on anyio: one task per node through TaskGroup.start_soon (what
    nodehost's scheduler uses for an attempt)."""
    import anyio

    indeg, down, ready = _prep(shape)
    deps = shape.deps
    results: list[Any] = [None] * len(deps)
    fn = _value if data else _noop
    state = {"running": 0}

    async with anyio.create_task_group() as tg:
        def pump() -> None:
            while ready and state["running"] < parallelism:
                i = ready.popleft()
                state["running"] += 1
                tg.start_soon(one, i, [results[u] for u in deps[i]] if data else ())

        async def one(i: int, args: Any) -> None:
            results[i] = await fn(args)
            state["running"] -= 1
            for d in down[i]:
                indeg[d] -= 1
                if not indeg[d]:
                    ready.append(d)
            pump()

        pump()


BARE: dict[str, Callable[..., Any]] = {
    "bare-seq": bare_sequential,
    "bare-asyncio": bare_asyncio,
    "bare-anyio": bare_anyio,
}


def run_bare(engine: str, shape: graphs.Shape, data: bool, repeats: int,
             budget: float | None, parallelism: int = PARALLELISM) -> dict[str, Any]:
    fn = BARE[engine]
    times = []
    for _ in _repeat(repeats, budget):
        started = time.perf_counter()
        asyncio.run(fn(shape, data, parallelism))
        times.append(time.perf_counter() - started)
    # the event loop's start-up is in there: measure it alone and take it out
    loop_start = min(_time(lambda: asyncio.run(_noop(None))) for _ in range(5))
    return {"times": [t - loop_start for t in times]}


def _time(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# --- Dask ----------------------------------------------------------------------------------------

def run_dask_local(engine: str, shape: graphs.Shape, data: bool, repeats: int,
                   budget: float | None) -> dict[str, Any]:
    import dask
    import dask.threaded

    get = dask.get if engine == "dask-sync" else dask.threaded.get
    dsk, keys = graphs.dask_graph(shape, data=data)
    get(*graphs.dask_graph(graphs.chain(10), data=data))  # warm up (thread pool, imports)
    times = []
    for _ in _repeat(repeats, budget):
        started = time.perf_counter()
        get(dsk, keys)
        times.append(time.perf_counter() - started)
    return {"times": times, "dask": dask.__version__}


# Dask distributed took 100-150 s per run of the 10,000-way join here, and now and then lost
# both workers mid-run and waited for ever: a run is cut off after this long, and the time is
# reported as a lower bound.
DISTRIBUTED_DEADLINE = 120.0


def run_distributed(shape: graphs.Shape, data: bool, repeats: int,
                    budget: float | None) -> dict[str, Any]:
    import dask
    from distributed import Client, LocalCluster, wait

    for name in ("distributed", "bokeh", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    started = time.perf_counter()
    out: dict[str, Any] = {"dask": dask.__version__}
    with LocalCluster(dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as client:
        out["startup"] = time.perf_counter() - started
        workers = client.scheduler_info()["workers"]
        client.get(*graphs.dask_graph(graphs.chain(10), data=data, prefix="warm"))
        times = []
        for n in _repeat(repeats, budget):
            # keys of this run's own: distributed would hand back a result it still holds
            # from the run before instead of computing it (measured: 5.8 ms/node for a
            # chain, then 30-90 us/node for the same keys again)
            dsk, keys = graphs.dask_graph(shape, data=data, prefix=f"r{n}-")
            started = time.perf_counter()
            futures = client.get(dsk, keys, sync=False)
            try:
                wait(futures, timeout=DISTRIBUTED_DEADLINE)
            except TimeoutError:
                client.cancel(futures)
                times.append(DISTRIBUTED_DEADLINE)
                out["cut_off"] = DISTRIBUTED_DEADLINE  # `times` are lower bounds
                break
            client.gather(futures)
            times.append(time.perf_counter() - started)
        out["times"] = times
        out["workers"] = len(workers)
        out["threads"] = sum(w.get("nthreads", 0) for w in workers.values())
        if "cut_off" not in out:  # the workers may be gone: ask them only after good runs
            out["extra_rss_kb"] = sum(client.run(_maxrss_kb).values())  # each one's peak
    return out


def run_engine(engine: str, shape: graphs.Shape, data: bool, repeats: int,
               budget: float | None, state_base: str | None) -> dict[str, Any]:
    if engine == "nodehost":
        out = run_nodehost(shape, data, repeats, budget, state_base)
    elif engine == "nodehost-default-gc":
        out = run_nodehost(shape, data, repeats, budget, state_base, tuned=False)
    elif engine in BARE:
        out = run_bare(engine, shape, data, repeats, budget)
    elif engine in ("dask-sync", "dask-threaded"):
        out = run_dask_local(engine, shape, data, repeats, budget)
    elif engine == "distributed":
        out = run_distributed(shape, data, repeats, budget)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    out["nodes"] = len(shape)
    out["best"] = min(out["times"])
    out["rss_kb"] = _maxrss_kb() + out.pop("extra_rss_kb", 0)
    return out
