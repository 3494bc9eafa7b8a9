"""`nodehost serve` under (a stand-in for) systemd: notify, watchdog, socket activation,
SIGTERM in the middle of a run, SIGHUP reload, journald lines. Real processes throughout."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from http_support import short_tmpdir

STD = {"name": "nodehost.std", "version": "1.0.0"}


def write_config(tmp: str, extra: str = "") -> Path:
    path = Path(tmp) / "config.toml"
    path.write_text(f"""
[server]
listen = "unix:{tmp}/run/nodehost.sock"
state_dir = "{tmp}/state"
runtime_dir = "{tmp}/run"
drain_seconds = 0.2
{extra}
[executors]
default = "inprocess"
[events]
heartbeat_seconds = 0.2
""")
    return path


class Lines:
    """A process's stderr, line by line, readable with a timeout."""

    def __init__(self, stream: object) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []

        def pump() -> None:
            for raw in stream:  # type: ignore[attr-defined]
                self._queue.put(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the end of the stream (the process has exited)."""
        self._thread.join(30)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line with {text!r}; saw {self.seen[-20:]}") from None
            self.seen.append(line)
            if text in line:
                return line


@contextmanager
def serve(config: Path, *, env: dict[str, str] | None = None,
          argv: list[str] | None = None, stderr: int | None = None) -> Iterator[
              tuple[subprocess.Popen[bytes], Lines | None]]:
    cmd = [*(argv or []), sys.executable, "-m", "nodehost", "serve", "--config", str(config)]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=stderr if stderr is not None else subprocess.PIPE)
    lines = Lines(proc.stderr) if proc.stderr is not None else None
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        if lines is not None and proc.stderr is not None:
            lines.join()
            proc.stderr.close()


def stream_until(c: httpx.Client, run_id: str, *texts: str, timeout: float = 30) -> str:
    """Read the run's events from the start until a data line contains all `texts`."""
    deadline = time.monotonic() + timeout
    with c.stream("GET", "/events", params={"runId": run_id},
                  headers={"Last-Event-ID": "0"}) as events:
        for line in events.iter_lines():  # heartbeats every 0.2 s keep this loop turning
            if line.startswith("data: ") and all(text in line for text in texts):
                return line
            assert time.monotonic() < deadline, f"no event with {texts!r}"
    raise AssertionError("the event stream ended")


def client(tmp: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=f"{tmp}/run/nodehost.sock"),
                        base_url="http://localhost/api/v1", timeout=30)


def test_notify_ready_watchdog_and_stopping_from_a_real_daemon() -> None:
    """READY=1 once serving (with a STATUS), WATCHDOG=1 at half the timeout, STOPPING=1 on
    SIGTERM, then exit 0."""
    with short_tmpdir() as tmp:
        config = write_config(tmp)
        notify_path = f"{tmp}/notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(notify_path)
            sock.settimeout(30)
            env = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"}
            with serve(config, env=env) as (proc, _):
                messages = [sock.recv(4096).decode()]
                assert messages[0].startswith("READY=1\nSTATUS=0 runs running, 0 queued")
                with client(tmp) as c:  # READY means it answers
                    assert c.get("/healthz").status_code == 200
                pings = 0
                while pings < 3:
                    message = sock.recv(4096).decode()
                    messages.append(message)
                    pings += "WATCHDOG=1" in message
                proc.send_signal(signal.SIGTERM)
                while not any(m.startswith("STOPPING=1") for m in messages):
                    messages.append(sock.recv(4096).decode())
                assert proc.wait(30) == 0


def test_socket_activation_serves_on_the_passed_socket() -> None:
    """Under systemd-socket-activate the daemon serves on the socket systemd made."""
    with short_tmpdir() as tmp:
        config = write_config(tmp)
        os.makedirs(f"{tmp}/run", mode=0o750)
        argv = ["systemd-socket-activate", "-l", f"{tmp}/run/nodehost.sock", "--fdname=api"]
        with serve(config, argv=argv) as (proc, lines):
            assert lines is not None
            lines.wait_for("Listening on")
            with client(tmp) as c:
                assert c.get("/healthz").status_code == 200
            lines.wait_for("nodehost listening on")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def test_sigterm_mid_run_then_restart_and_the_run_finishes() -> None:
    """A node still running at SIGTERM is queued again and runs after the restart."""
    with short_tmpdir() as tmp:
        config = write_config(tmp, '[policy]\nprivileged = ["nodehost.std.command"]\n'
                                   '[sandbox]\ncommand_executables = ["/bin/sh"]\n')
        # not beside config.toml and state/: a confined worker may make nothing there
        (Path(tmp) / "scratch").mkdir()
        marker = Path(tmp) / "scratch" / "started-once"
        script = (f"if [ -e {marker} ]; then echo second; exit 0; fi; touch {marker}; "
                  "echo first; sleep 600")
        document = {"clientId": "t", "workflow": {
            "id": "w", "schemaVersion": "2025-01", "metadata": {"name": "w"},
            "nodes": [{"id": "cmd", "type": "nodehost.std.command", "package": STD,
                       "parameters": {"argv": ["/bin/sh", "-c", script]}},
                      {"id": "after", "type": "nodehost.std.delay", "package": STD,
                       "parameters": {"seconds": 0}}],
            "edges": [{"source": {"node": "cmd"}, "target": {"node": "after"}}]}}
        with serve(config) as (proc, lines):
            assert lines is not None
            lines.wait_for("nodehost listening on")
            with client(tmp) as c:
                run_id = c.post("/runs", json=document).json()["runId"]
                stream_until(c, run_id, '"text":"first\\n"')
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            lines.wait_for("will run again after the restart")
        with serve(config) as (proc, lines):
            assert lines is not None
            lines.wait_for("nodehost listening on")
            with client(tmp) as c:
                stream_until(c, run_id, '"type":"run.status"', '"status":"succeeded"')
                summary = c.get(f"/runs/{run_id}").json()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    assert summary["status"] == "succeeded"
    cmd = next(n for n in summary["nodes"] if n["nodeId"] == "cmd")
    assert cmd["result"]["stdout"] == "second\n"


def test_sighup_reloads_what_can_change_live(tmp_path: Path) -> None:
    """`nodehost reload` (SIGHUP) applies new limits; a broken config is refused, kept old."""
    with short_tmpdir() as tmp:
        config = write_config(tmp)
        with serve(config) as (proc, lines):
            assert lines is not None
            lines.wait_for("nodehost listening on")
            text = config.read_text()
            config.write_text(text + "[scheduler]\nparallelism = 2\n")
            reload = [sys.executable, "-m", "nodehost", "reload", "--config", str(config)]
            result = subprocess.run(reload, capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stderr
            assert f"pid {proc.pid}" in result.stdout
            lines.wait_for("configuration reloaded")
            config.write_text(text + "[scheduler]\nparalelism = 2\n")
            refused = subprocess.run(reload, capture_output=True, text=True, timeout=30)
            assert refused.returncode == 2 and "paralelism" in refused.stderr
            os.kill(proc.pid, signal.SIGHUP)  # as systemctl reload does
            assert "paralelism" in lines.wait_for("reload refused")
            config.write_text(text)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        result = subprocess.run(reload, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "no running daemon" in result.stderr


def test_journald_lines_have_priorities_and_no_timestamps() -> None:
    """With stderr being the journal stream, every line starts with <N> and has no time."""
    with short_tmpdir() as tmp:
        config = write_config(tmp)
        read_end, write_end = os.pipe()
        st = os.fstat(write_end)
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        with os.fdopen(read_end, "rb") as reader:
            with serve(config, env=env, stderr=write_end) as (proc, _):
                os.close(write_end)
                lines = Lines(reader)
                line = lines.wait_for("nodehost listening on")
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0
                lines.wait_for("nodehost stopped")
    assert line.startswith("<6>nodehost.service: nodehost listening on")
    assert all(seen[:3] in ("<6>", "<4>", "<3>", "<7>") for seen in lines.seen if seen.strip())


@pytest.mark.parametrize("name", ["NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS"])
def test_node_processes_never_see_systemd_variables(name: str) -> None:
    """Worker processes cannot notify or ping on the daemon's behalf."""
    from nodehost.executors.subprocess import _SCRUB

    assert name in _SCRUB
