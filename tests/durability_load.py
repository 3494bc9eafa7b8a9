"""Kill -9 loop against a real `nodehost serve` (run by tests/test_durability.py).

Usage: durability_load.py STATE_DIR KILLS. Clients submit runs from several threads; after a
random number of acknowledgements the daemon is killed with SIGKILL and started again. At the
end every acknowledged run must exist, runs seen finished must be unchanged, and every run
must finish. Prints one JSON line: {kills, acknowledged, missing, changed, unfinished}.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

FINAL = {"succeeded", "failed", "cancelled"}


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "nodehost", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)  # waiting for the daemon's socket, with a deadline
    raise SystemExit("daemon did not become ready")


def document(i: int) -> dict:
    delay = {"name": "nodehost.std", "version": "1.0.0"}
    return {"clientId": "load", "workflow": {
        "id": f"load-{i}", "schemaVersion": "2025-01", "metadata": {"name": "load"},
        "nodes": [{"id": "a", "type": "nodehost.std.delay", "package": delay,
                   "parameters": {"seconds": 0.01}},
                  {"id": "b", "type": "nodehost.std.delay", "package": delay,
                   "parameters": {"seconds": 0.05}}],
        "edges": [{"source": {"node": "a"}, "target": {"node": "b"}}]}}


def main() -> None:
    state, kills = Path(sys.argv[1]), int(sys.argv[2])
    socket_path = state / "run" / "nodehost.sock"
    config = state / "config.toml"
    config.write_text(f"""
[server]
listen = "unix:{socket_path}"
state_dir = "{state / 'state'}"
drain_seconds = 0
[executors]
default = "inprocess"
""")
    rng = random.Random(42)
    acknowledged: list[str] = []
    seen_final: dict[str, str] = {}
    lock = threading.Lock()
    counter = iter(range(1_000_000))

    def client() -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)),
                            base_url="http://localhost/api/v1", timeout=30)

    for _ in range(kills):
        proc = start(config)
        with client() as probe:
            wait_ready(probe, proc)
        target = len(acknowledged) + rng.randint(5, 15)
        stop = threading.Event()

        def submitter(stop: threading.Event = stop, target: int = target) -> None:
            with client() as c:
                while not stop.is_set():
                    i = next(counter)
                    try:
                        r = c.post("/runs", json=document(i))
                    except httpx.TransportError:
                        return  # the daemon is gone: this request was never acknowledged
                    if r.status_code == 202:
                        with lock:
                            acknowledged.append(r.json()["runId"])
                            if len(acknowledged) >= target:
                                stop.set()

        threads = [threading.Thread(target=submitter) for _ in range(4)]
        for t in threads:
            t.start()
        stop.wait(120)
        with client() as c:  # what is final now must stay so
            for run_id in list(acknowledged):
                try:
                    status = c.get(f"/runs/{run_id}").json()["status"]
                except (httpx.TransportError, KeyError):
                    break
                if status in FINAL:
                    seen_final[run_id] = status
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join()

    proc = start(config)
    missing, changed, unfinished = [], [], []
    try:
        with client() as c:
            wait_ready(c, proc)
            deadline = time.monotonic() + 60
            for run_id in acknowledged:
                while True:
                    r = c.get(f"/runs/{run_id}")
                    if r.status_code == 404:
                        missing.append(run_id)
                        break
                    status = r.json()["status"]
                    if status in FINAL:
                        if run_id in seen_final and seen_final[run_id] != status:
                            changed.append([run_id, seen_final[run_id], status])
                        break
                    if time.monotonic() > deadline:
                        unfinished.append(run_id)
                        break
                    time.sleep(0.02)  # the run is still going: look again
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print(json.dumps({"kills": kills, "acknowledged": len(acknowledged), "missing": missing,
                      "changed": changed, "unfinished": unfinished}))


if __name__ == "__main__":
    main()
