"""systemd integration: sd_notify, watchdog, socket activation, journald lines, unit files."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nodehost.systemd import (
    JournalFormatter,
    PlainFormatter,
    listen_sockets,
    notify,
    under_journald,
    watchdog_interval,
)

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_sends_to_a_path_socket(tmp_path: Path) -> None:
    """READY=1 arrives as one datagram on the socket named by NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    with receiver(path) as sock:
        assert notify("READY=1\nSTATUS=ok", env={"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"


def test_notify_handles_abstract_sockets() -> None:
    """An address starting with @ is the abstract namespace."""
    name = f"nodehost-test-{os.getpid()}"
    with receiver("\0" + name) as sock:
        assert notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_is_a_no_op_outside_systemd() -> None:
    """Without NOTIFY_SOCKET (or with an unsupported one) nothing is sent."""
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_watchdog_interval_is_half_the_timeout_for_this_process() -> None:
    """Ping at half of WATCHDOG_USEC, only when WATCHDOG_PID is ours or unset."""
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) \
        == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None


def test_listen_sockets_for_another_pid_are_ignored_and_scrubbed() -> None:
    """LISTEN_FDS meant for another process is not taken, and never passed on."""
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "api"}
    assert listen_sockets(env) == {}
    assert env == {}


def test_socket_activation_passes_named_sockets(tmp_path: Path) -> None:
    """Under systemd-socket-activate the socket arrives by its name and accepts clients."""
    path = tmp_path / "api.sock"
    script = textwrap.dedent("""
        import os
        from nodehost.systemd import listen_sockets
        socks = listen_sockets()
        print(sorted(socks), "LISTEN_FDS" in os.environ, flush=True)
        conn, _ = socks["api"].accept()
        conn.sendall(b"hello")
        conn.close()
    """)
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(path), "--fdname=api", sys.executable, "-c",
         script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # it says so once it listens
        assert line.startswith("Listening on"), line
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            assert client.recv(5) == b"hello"
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert out.strip() == "['api'] False", err


def _record(msg: str, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("nodehost.scheduler", level, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_journal_lines_have_a_priority_prefix_and_no_timestamp() -> None:
    """Under journald: `<4>name: message run=.. node=..`, each traceback line prefixed."""
    formatter = JournalFormatter()
    assert formatter.format(_record("retrying", run="r1", node="n1")) == \
        "<4>nodehost.scheduler: retrying run=r1 node=n1"
    try:
        raise ValueError("bad")
    except ValueError:
        record = _record("failed", logging.ERROR)
        record.exc_info = sys.exc_info()
    lines = formatter.format(record).splitlines()
    assert lines[0] == "<3>nodehost.scheduler: failed"
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: bad"


def test_plain_lines_carry_time_level_and_fields() -> None:
    """Outside journald a line has a timestamp, the level and the structured fields."""
    line = PlainFormatter().format(_record("dispatched", logging.INFO, run="r9"))
    assert " INFO    nodehost.scheduler: dispatched run=r9" in line
    assert line[:4].isdigit()


def test_journald_is_detected_by_the_stream_identity(tmp_path: Path) -> None:
    """JOURNAL_STREAM must match stderr's device and inode, not merely be set."""
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        assert under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not under_journald({"JOURNAL_STREAM": "1:2"}, f.fileno())
        assert not under_journald({}, f.fileno())


# --- the unit files ----------------------------------------------------------------------------


def _staged_units(tmp_path: Path) -> Path:
    """The units with ExecStart= pointing at this environment's nodehost executable."""
    nodehost = Path(sys.executable).with_name("nodehost")
    assert nodehost.exists()
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/nodehost/venv/bin/nodehost", str(nodehost))
        (tmp_path / unit.name).write_text(text)
    return tmp_path


def test_units_verify_without_a_single_warning(tmp_path: Path) -> None:
    """systemd-analyze verify accepts both units; it warns on stderr yet exits 0, so check it."""
    staged = _staged_units(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(staged / "nodehost.service"),
         str(staged / "nodehost.socket")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stderr == ""


def test_service_hardening_stays_under_the_threshold(tmp_path: Path) -> None:
    """systemd-analyze security rates the service's exposure 2.0 or better."""
    staged = _staged_units(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20",
         str(staged / "nodehost.service")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Overall exposure level for nodehost.service: 1." in result.stdout


def test_the_formatter_is_used_under_journald(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure_logging picks the journal format when stderr is the journal stream."""
    from nodehost import systemd

    stream = io.StringIO()
    monkeypatch.setattr(systemd.sys, "stderr", stream)
    monkeypatch.setattr(systemd, "under_journald", lambda env: True)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        systemd.configure_logging("INFO")
        logging.getLogger("nodehost.test").warning("disk nearly full", extra={"run": "r"})
    finally:
        root.handlers[:], root.level = saved
    assert stream.getvalue() == "<4>nodehost.test: disk nearly full run=r\n"
