"""Run every benchmark and print the tables: `python -m bench [--quick]` from the repo root.

Each measurement runs in a fresh child process (`python -m bench.child`), one engine at a
time, so peak RSS is per engine and nothing warms up another engine's caches. Ratios are
computed within this run, from the best of the repeats of each side (the machines are
noisy: compare runs of the same invocation, not numbers across days).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PEERS = ["bare-seq", "bare-asyncio", "bare-anyio", "dask-sync", "dask-threaded", "distributed"]
ENGINES = ["nodehost", *PEERS]
FULL = {
    "graphs": ["chain:2000", "fanout:10000", "layered:50x200"],
    "scaling": ["layered:5x200", "layered:50x200", "layered:500x200"],
    "scaling_engines": ["nodehost", "nodehost-default-gc", "bare-asyncio", "bare-anyio"],
    "repeats": 3,
    "budget": 30.0,
    "latency_repeats": 50,
    "write_ahead_chain": 500,
    "events_graph": "layered:10x200",
    "recovery": [("layered:500x200", 1), ("layered:5x200", 100)],
    "sse_graph": "layered:5x20",
    "idle_seconds": 5.0,
}
QUICK = {
    "graphs": ["chain:500", "fanout:2000", "layered:10x200"],
    "scaling": ["layered:5x200", "layered:50x200"],
    "scaling_engines": ["nodehost", "nodehost-default-gc", "bare-asyncio", "bare-anyio"],
    "repeats": 2,
    "budget": 10.0,
    "latency_repeats": 20,
    "write_ahead_chain": 100,
    "events_graph": "layered:5x200",
    "recovery": [("layered:50x200", 1)],
    "sse_graph": "layered:5x20",
    "idle_seconds": 2.0,
}
SECTIONS = ["throughput", "scaling", "latency", "events", "recovery", "idle", "daemon",
            "executors"]

# the targets
TARGET_BARE_RATIO = 3.0
TARGET_VS_DISTRIBUTED = 5.0
TARGET_SCALING = 1.3
TARGET_IDLE_RSS_MB = 80.0
TARGET_RECOVERY_S = 2.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child(job: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run one job in a fresh process; its result, or {"error": ...}."""
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.child", json.dumps(job)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        log(f"    failed: {tail}")
        return {"error": tail}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["_wall"] = time.perf_counter() - started
    return result


def graph_label(spec: str, data: bool) -> str:
    from .graphs import by_name

    return by_name(spec).name + (" +data" if data else "")


# --- formatting --------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list[Any]], right: int = 99) -> str:
    """A plain-text table; columns from index `right` on are right-aligned."""
    cells = [[str(c) for c in headers]] + [[("" if c is None else str(c)) for c in r]
                                            for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < right else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def f_rate(x: float) -> str:
    return f"{x:,.0f}"


def f_us(x: float) -> str:
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def f_ratio(x: float) -> str:
    return f"{x:.2f}x"


def f_ms(x: float | None) -> str:
    return "" if x is None else f"{x * 1000:,.2f} ms" if x < 1 else f"{x:,.2f} s"


# --- sections ----------------------------------------------------------------------------------

def throughput(cfg: dict[str, Any], engines: list[str], state_base: str,
               out: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for spec in cfg["graphs"]:
        for data in (False, True):
            label = graph_label(spec, data)
            per: dict[str, Any] = {}
            for engine in engines:
                log(f"  {label}: {engine}")
                per[engine] = child({"kind": "engine", "engine": engine, "graph": spec,
                                     "data": data, "repeats": cfg["repeats"],
                                     "budget": cfg["budget"], "state_base": state_base})
            results[label] = per
            nh = per.get("nodehost", {})
            for engine in engines:
                r = per[engine]
                if "error" in r:
                    rows.append([label, engine, "error", "", "", "", "", ""])
                    continue
                us = r["best"] / r["nodes"] * 1e6
                ratio = (f_ratio(nh["best"] / r["best"])
                         if "best" in nh and engine != "nodehost" else "")
                prep = f"{r['prepare'] * 1000:,.0f}" if "prepare" in r else ""
                # a run cut off at its deadline: the peer is at least this slow
                more, less = (">", "<") if "cut_off" in r else ("", "")
                rows.append([label, engine, less + f_rate(r["nodes"] / r["best"]),
                             more + f_us(us), f"{r['rss_kb'] / 1024:,.0f}",
                             less + ratio if ratio else "", len(r["times"]), prep])
    out["throughput"] = results
    return table(["graph", "engine", "nodes/s", "us/node", "peak RSS MB", "time nh/peer",
                  "n", "prepare ms"], rows, right=2)


def scaling(cfg: dict[str, Any], state_base: str, out: dict[str, Any]) -> str:
    rows = []
    results: dict[str, dict[str, Any]] = {}
    specs = cfg["scaling"]
    for engine in cfg["scaling_engines"]:
        per = {}
        for spec in specs:
            log(f"  scaling {spec}: {engine}")
            per[spec] = child({"kind": "engine", "engine": engine, "graph": spec,
                               "data": False, "repeats": cfg["repeats"],
                               "budget": cfg["budget"] * 3, "state_base": state_base})
        results[engine] = per
        us = [per[s]["best"] / per[s]["nodes"] * 1e6 if "best" in per[s] else None
              for s in specs]
        ratio = f_ratio(us[-1] / us[0]) if us[0] and us[-1] else ""
        rows.append([engine, *[f_us(u) if u else "error" for u in us], ratio])
    out["scaling"] = results
    from .graphs import by_name

    heads = [f"{len(by_name(s)):,} nodes us/node" for s in specs]
    return ("graph: " + ", ".join(by_name(s).name for s in specs) + " (no data)\n"
            + table(["engine", *heads, f"{heads[-1].split()[0]}/{heads[0].split()[0]}"],
                    rows, right=1))


def targets(out: dict[str, Any]) -> str:
    rows = []
    tp = out.get("throughput", {})
    if tp:
        for peer in ("bare-asyncio", "bare-anyio", "bare-seq"):
            ratios = [per["nodehost"]["best"] / per[peer]["best"] for per in tp.values()
                      if "best" in per.get("nodehost", {}) and "best" in per.get(peer, {})]
            if ratios:
                rows.append([f"per-node overhead within {TARGET_BARE_RATIO:g}x of {peer}",
                             f"{min(ratios):.1f}x .. {max(ratios):.1f}x",
                             "met" if max(ratios) <= TARGET_BARE_RATIO else "NOT met"])
        pairs = [(per["distributed"], per["nodehost"]) for per in tp.values()
                 if "best" in per.get("nodehost", {}) and "best" in per.get("distributed", {})]
        if pairs:
            speedups = [d["best"] / n["best"] for d, n in pairs]
            cut = any("cut_off" in d for d, _ in pairs)  # lower bounds among them
            rows.append([f"at least {TARGET_VS_DISTRIBUTED:g}x the throughput of Dask "
                         "distributed", f"{min(speedups):.1f}x .. {max(speedups):.1f}x"
                         + (" (some runs cut off: more)" if cut else ""),
                         "met" if min(speedups) >= TARGET_VS_DISTRIBUTED else "NOT met"])
    sc = out.get("scaling", {}).get("nodehost")
    if sc:
        specs = list(sc)
        first, last = sc[specs[0]], sc[specs[-1]]
        if "best" in first and "best" in last:
            ratio = (last["best"] / last["nodes"]) / (first["best"] / first["nodes"])
            rows.append([f"time per node at {last['nodes']:,} within {TARGET_SCALING:g}x of "
                         f"{first['nodes']:,}", f"{ratio:.2f}x",
                         "met" if ratio <= TARGET_SCALING else "NOT met"])
    idle = out.get("idle", {})
    if "rss_kb" in idle:
        mb = idle["rss_kb"] / 1024
        rows.append([f"idle RSS under {TARGET_IDLE_RSS_MB:g} MB (host)", f"{mb:.1f} MB",
                     "met" if mb < TARGET_IDLE_RSS_MB else "NOT met"])
    daemon = out.get("daemon", {})
    if "idle_rss_kb" in daemon:
        mb = daemon["idle_rss_kb"] / 1024
        rows.append([f"idle RSS under {TARGET_IDLE_RSS_MB:g} MB (nodehost serve)",
                     f"{mb:.1f} MB", "met" if mb < TARGET_IDLE_RSS_MB else "NOT met"])
    for rec in out.get("recovery", []):
        r = rec.get("read", {})
        if "total" in r:
            rows.append([f"recovery of {r['nodes']:,} nodes ({r['runs']} runs) under "
                         f"{TARGET_RECOVERY_S:g} s", f"{r['total']:.2f} s",
                         "met" if r["total"] < TARGET_RECOVERY_S else "NOT met"])
    return table(["target", "measured", "status"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller graphs, fewer repeats, shorter waits (about a minute)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: all of "
                             f"{','.join(SECTIONS)})")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma-separated engines for the throughput table (default: all)")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (best is kept)")
    parser.add_argument("--dir", help="where journals and state are written (default: the "
                                      "system temp directory); use the disk you deploy on")
    parser.add_argument("--json", help="also write every raw result to this file")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats:
        cfg["repeats"] = args.repeats
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for name in sections:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}")
    for name in engines:
        if name not in ENGINES:
            parser.error(f"unknown engine {name!r}")
    if "nodehost" not in engines:
        engines.insert(0, "nodehost")

    base = tempfile.mkdtemp(prefix="nodehost-bench-", dir=args.dir)
    out: dict[str, Any] = {"config": {k: v for k, v in cfg.items()}, "engines": engines}
    report: list[str] = []
    started = time.perf_counter()
    try:
        fs = subprocess.run(["df", "-T", base], capture_output=True, text=True).stdout
        fstype = fs.splitlines()[-1].split()[1] if fs.strip() else "?"
        versions = child({"kind": "versions"})
        header = (f"nodehost benchmarks ({'quick' if args.quick else 'full'}): Python "
                  f"{platform.python_version()}, {os.cpu_count()} CPUs, journal on {fstype}; "
                  + ", ".join(f"{k} {v}" for k, v in versions.items() if not k.startswith("_")))
        report.append(header)
        out["header"] = header
        if "throughput" in sections:
            log("throughput")
            report.append(
                f"\n## Throughput (best of up to {cfg['repeats']} repeats within "
                f"{cfg['budget']:g} s; nodehost: journal on with batch fsync, events "
                f"published, in-process executor, parallelism 32; `prepare` = decode + "
                f"validate + compile of the document, before the timed part; `time nh/peer` "
                f"= nodehost's time over the peer's: below 1, nodehost is faster; `n` = "
                f"repeats done)\n")
            report.append(throughput(cfg, engines, base, out))
        if "scaling" in sections:
            log("scaling")
            report.append("\n## Scaling (time per node as the graph grows)\n")
            report.append(scaling(cfg, base, out))
        rows: list[list[Any]] = []
        if "latency" in sections:
            log("latency")
            lat1 = child({"kind": "latency", "repeats": cfg["latency_repeats"],
                          "graph": "chain:1", "state_base": base})
            latn = child({"kind": "latency", "repeats": 5, "graph": cfg["graphs"][2],
                          "state_base": base})
            wal = child({"kind": "write_ahead", "nodes_in_chain": cfg["write_ahead_chain"],
                         "state_base": base})
            out["latency"] = [lat1, latn]
            out["write_ahead"] = wal
            for lat in (lat1, latn):
                if "error" in lat:
                    rows.append(["submit -> first node start", "error", lat["error"]])
                    continue
                rows.append([f"submit -> first node start, {lat['nodes']:,}-node document",
                             f_ms(lat["dict_median"]),
                             f"median of {lat['repeats']}; document already prepared: "
                             f"{f_ms(lat['prepared_median'])}"])
            if "error" in wal:
                rows.append(["nodes with side effects (write-ahead)", "error", wal["error"]])
            else:
                rows.append([f"chain of {wal['nodes']:,} nodes that are not idempotent",
                             f"{wal['not_idempotent'] * 1e3:.2f} ms/node",
                             "each starts once its Dispatch record is durable (one fdatasync "
                             "per node in a chain); idempotent nodes: "
                             f"{wal['idempotent'] * 1e6:.1f} us/node"])
        if "events" in sections:
            log("events")
            ev = child({"kind": "events", "graph": cfg["events_graph"], "subscribers": 100,
                        "state_base": base})
            out["events"] = ev
            if "error" in ev:
                rows.append(["event latency, 100 in-process subscribers", "error", ev["error"]])
            else:
                rows.append([f"event latency, {ev['subscribers']} in-process subscribers "
                             f"(p50 / p99 / max)",
                             f"{f_ms(ev['p50'])} / {f_ms(ev['p99'])} / {f_ms(ev['max'])}",
                             f"{ev['delivered']:,} deliveries, {ev['graph']}; run "
                             f"{f_ms(ev['run_seconds_with'])} vs "
                             f"{f_ms(ev['run_seconds_without'])} without subscribers; "
                             f"{ev['dropped_subscribers']} dropped"])
        if "recovery" in sections:
            log("recovery")
            out["recovery"] = []
            for spec, runs in cfg["recovery"]:
                state = os.path.join(base, f"recovery-{spec.replace(':', '-')}-{runs}")
                wrote = child({"kind": "recovery_write", "graph": spec, "runs": runs,
                               "state_dir": state})
                read = child({"kind": "recovery_read", "state_dir": state}) \
                    if "error" not in wrote else wrote
                shutil.rmtree(state, ignore_errors=True)
                out["recovery"].append({"write": wrote, "read": read})
                if "error" in read:
                    rows.append(["recovery", "error", read["error"]])
                    continue
                rows.append([f"recovery, {read['nodes']:,} finished nodes in {read['runs']} "
                             f"run(s)", f_ms(read["total"]),
                             f"open {f_ms(read['open'])} + replay {f_ms(read['replay'])} + "
                             f"resume {f_ms(read['resume'])} (then a first full GC of "
                             f"{f_ms(read['first_full_gc'])}); {read['records']:,} records, "
                             f"{wrote['journal_bytes'] / 1e6:,.1f} MB; peak RSS "
                             f"{read['rss_kb'] / 1024:,.0f} MB"])
        if "idle" in sections:
            log("idle")
            idle = child({"kind": "idle_host", "seconds": cfg["idle_seconds"],
                          "state_base": base})
            out["idle"] = idle
            if "error" in idle:
                rows.append(["idle host", "error", idle["error"]])
            else:
                rows.append(["idle RSS, host (nodehost + plugins + scheduler + store)",
                             f"{idle['rss_kb'] / 1024:.1f} MB",
                             f"plugins: {', '.join(idle['plugins']) or 'none'}"])
                rows.append([f"idle CPU, host, over {idle['wall_seconds']:.0f} s",
                             f"{idle['cpu_seconds'] * 1000:.1f} ms",
                             f"{idle['cpu_seconds'] / idle['wall_seconds'] * 100:.2f}% of a "
                             f"core"])
        if "daemon" in sections:
            log("daemon")
            dm = child({"kind": "daemon", "seconds": cfg["idle_seconds"],
                        "graph": cfg["sse_graph"], "subscribers": 100, "state_base": base})
            out["daemon"] = dm
            if "error" in dm:
                rows.append(["nodehost serve", "error", dm["error"]])
            else:
                rows.append(["idle RSS, `nodehost serve` (uvicorn, journal, all processes)",
                             f"{dm['idle_rss_kb'] / 1024:.1f} MB",
                             f"{dm['processes']} process(es); ready in "
                             f"{f_ms(dm['ready_seconds'])}"])
                rows.append([f"idle CPU, `nodehost serve`, over {dm['idle_wall_seconds']:.0f} s",
                             f"{dm['idle_cpu_seconds'] * 1000:.0f} ms",
                             "clock-tick resolution (10 ms)"])
                rows.append([f"event latency over SSE (uvicorn, Unix socket), "
                             f"{dm['sse_subscribers']} httpx clients (p50 / p99 / max)",
                             f"{f_ms(dm['sse_p50'])} / {f_ms(dm['sse_p99'])} / "
                             f"{f_ms(dm['sse_max'])}",
                             f"{dm['sse_delivered']:,} deliveries, {dm['sse_nodes']} "
                             f"std.delay(0) nodes; the clients share the 2 cores"])
        if "executors" in sections:  # bench/executors.py: a third-party package in workers
            from . import executors

            log("executors")
            ex = out["executors"] = executors.run(
                executors.QUICK if args.quick else executors.FULL, cfg["repeats"])
            report.append("\n## Executors: per node, a warm host (target 3x)\n")
            report.append(executors.table(ex))
        if rows:
            report.append("\n## Latency, recovery, footprint\n")
            report.append(table(["measure", "value", "notes"], rows))
        report.append("\n## Targets\n")
        report.append(targets(out))
        report.append(f"\n(total {time.perf_counter() - started:,.0f} s)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\n".join(report))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
