"""Kill -9 loop against a real `nodehost serve` (run by tests/test_durability.py).

Usage: durability_load.py STATE_DIR KILLS [BATCH_INTERVAL_MS]. Clients submit runs from
several threads while event-stream followers watch every event; after a random number of
acknowledgements the daemon is killed with SIGKILL and started again, and the followers
resume with Last-Event-ID. Each run is `a` (a delay), then `b`, a non-idempotent command that
appends the run's name to a file as it starts, then `c` (a delay). The journal is compacted
into snapshots along the way.

At the end every acknowledged run must exist and be final, runs seen final must be unchanged,
no `b` may have started twice, no event id may have been given to two different events, and
every follower must have seen every acknowledged run end. Prints one JSON line: {kills,
acknowledged, missing, changed, unfinished, doubled, reused_ids, unseen_ends, resets, events}.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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


def document(i: int, effects: Path) -> dict[str, Any]:
    std = {"name": "nodehost.std", "version": "1.0.0"}
    return {"clientId": "load", "workflow": {
        "id": f"load-{i}", "schemaVersion": "2025-01", "metadata": {"name": "load"},
        "nodes": [{"id": "a", "type": "nodehost.std.delay", "package": std,
                   "parameters": {"seconds": 0.01}},
                  {"id": "b", "type": "nodehost.std.command", "package": std,
                   "parameters": {"argv": ["/bin/sh", "-c",
                                           f'echo load-{i} >> "{effects}"']}},
                  {"id": "c", "type": "nodehost.std.delay", "package": std,
                   "parameters": {"seconds": 0.03}}],
        "edges": [{"source": {"node": "a"}, "target": {"node": "b"}},
                  {"source": {"node": "b"}, "target": {"node": "c"}}]}}


class Follower(threading.Thread):
    """Follows /events from the first event on, resuming with Last-Event-ID after every
    disconnect; records what each id carried and which runs it saw end."""

    def __init__(self, client: Any, ids: dict[int, str], reused: list[int],
                 lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.client, self.ids, self.reused, self.lock = client, ids, reused, lock
        self.last_id = 0
        self.ended: dict[str, str] = {}
        self.resets = 0
        self.events = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.client() as c, c.stream(
                        "GET", "/events", headers={"Last-Event-ID": str(self.last_id)},
                        timeout=httpx.Timeout(30, read=None)) as response:
                    if response.status_code != 200:
                        raise httpx.TransportError(f"status {response.status_code}")
                    self._read(response)
            except httpx.HTTPError:
                pass
            if not self.stop.is_set():
                self.stop.wait(0.05)  # the daemon is restarting: try again shortly

    def _read(self, response: httpx.Response) -> None:
        event_id: int | None = None
        for line in response.iter_lines():
            if self.stop.is_set():
                return
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: ") and event_id is not None:
                envelope = json.loads(line[6:])
                self._seen(event_id, envelope)
                event_id = None

    def _seen(self, event_id: int, envelope: dict[str, Any]) -> None:
        self.events += 1
        data = envelope["data"]
        if envelope["type"] == "stream.reset":
            self.resets += 1
            return
        envelope.pop("replayed", None)  # the same event, sent again after a restart
        content = json.dumps(envelope, sort_keys=True)
        with self.lock:
            known = self.ids.setdefault(event_id, content)
            if known != content:
                self.reused.append(event_id)
        self.last_id = max(self.last_id, event_id)
        if envelope["type"] == "run.status" and data["status"] in FINAL:
            self.ended[data["runId"]] = data["status"]


def main() -> None:
    state, kills = Path(sys.argv[1]), int(sys.argv[2])
    batch_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    socket_path = state / "run" / "nodehost.sock"
    config = state / "config.toml"
    effects_dir = state / "effects"  # where the command may write: a [sandbox] file root
    effects_dir.mkdir(exist_ok=True)
    effects = effects_dir / "effects.log"
    config.write_text(f"""
[server]
listen = "unix:{socket_path}"
state_dir = "{state / 'state'}"
runtime_dir = "{state / 'run'}"
drain_seconds = 0
[scheduler]
parallelism = 4  # the command nodes run in workers (privileged): a few, kept warm
[executors]
default = "inprocess"
idle_workers = 4
[journal]
batch_interval_ms = {batch_ms}
snapshot_every_records = 100
[retention]
check_interval_seconds = 0.2
[policy]
privileged = ["nodehost.std.command"]
[sandbox]
command_executables = ["/bin/sh"]
file_roots = ["{effects_dir}"]
""")
    rng = random.Random(42)
    acknowledged: list[str] = []
    seen_final: dict[str, str] = {}
    lock = threading.Lock()
    counter = iter(range(1_000_000))

    def client() -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)),
                            base_url="http://localhost/api/v1", timeout=30)

    ids: dict[int, str] = {}
    reused: list[int] = []
    followers = [Follower(client, ids, reused, lock) for _ in range(2)]
    for _ in range(kills):
        proc = start(config)
        with client() as probe:
            wait_ready(probe, proc)
        for follower in followers:
            if not follower.is_alive():
                follower.start()
        first = len(acknowledged)
        target = first + rng.randint(5, 15)
        reached, stop = threading.Event(), threading.Event()

        def submitter(stop: threading.Event = stop, target: int = target,
                      reached: threading.Event = reached) -> None:
            with client() as c:  # until the daemon is killed, or it is told to stop
                while not stop.is_set():
                    i = next(counter)
                    try:
                        r = c.post("/runs", json=document(i, effects))
                    except httpx.TransportError:
                        return  # the daemon is gone: this request was never acknowledged
                    if r.status_code == 202:
                        with lock:
                            acknowledged.append(r.json()["runId"])
                            if len(acknowledged) >= target:
                                reached.set()
                            if len(acknowledged) >= target + 8:
                                return  # enough in flight for this cycle

        threads = [threading.Thread(target=submitter) for _ in range(4)]
        for t in threads:
            t.start()
        reached.wait(120)
        with client() as c:  # what is final now must stay so (runs go on meanwhile)
            for run_id in acknowledged[first:target]:
                try:
                    status = c.get(f"/runs/{run_id}").json()["status"]
                except (httpx.TransportError, KeyError):
                    break
                if status in FINAL:
                    seen_final[run_id] = status
        time.sleep(rng.uniform(0, 0.5))  # a random point in the load, not a sync
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join()

    proc = start(config)
    missing, changed, unfinished = [], [], []
    statuses: collections.Counter[str] = collections.Counter()
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
                        statuses[status] += 1
                        if run_id in seen_final and seen_final[run_id] != status:
                            changed.append([run_id, seen_final[run_id], status])
                        break
                    if time.monotonic() > deadline:
                        unfinished.append(run_id)
                        break
                    time.sleep(0.02)  # the run is still going: look again
        # the followers catch up on what the last daemon finished
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
                set(acknowledged) - set(f.ended) for f in followers):
            time.sleep(0.05)  # following: look again, under the deadline
    finally:
        for follower in followers:
            follower.stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    started = collections.Counter(effects.read_text().split()) if effects.exists() else {}
    doubled = sorted(name for name, n in started.items() if n > 1)
    unseen = [sorted(set(acknowledged) - set(f.ended)) for f in followers]
    print(json.dumps({"kills": kills, "acknowledged": len(acknowledged), "missing": missing,
                      "changed": changed, "unfinished": unfinished, "doubled": doubled,
                      "reused_ids": sorted(set(reused)), "unseen_ends": unseen,
                      "resets": sum(f.resets for f in followers),
                      "events": sum(f.events for f in followers),
                      "started": sum(started.values()), "statuses": statuses}))


if __name__ == "__main__":
    main()
