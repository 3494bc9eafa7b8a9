"""systemd integration with the standard library only (tier 5).

- `notify("READY=1")`: the sd_notify protocol, a datagram to $NOTIFY_SOCKET (path or
  abstract `@name`); a no-op without it, so the daemon runs the same outside systemd.
- `watchdog_interval()`: how often to send WATCHDOG=1 (half of $WATCHDOG_USEC), if at all.
- `listen_sockets()`: sockets passed by socket activation ($LISTEN_FDS), by name.
- `configure_logging()`: under journald, one line per record with a `<N>` priority prefix and
  no timestamp; elsewhere a normal timestamped format. Structured fields (`run`, `node`)
  passed in `extra=` appear in every line as `run=... node=...`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping, MutableMapping

__all__ = [
    "JournalFormatter",
    "PlainFormatter",
    "configure_logging",
    "listen_sockets",
    "notify",
    "under_journald",
    "watchdog_interval",
]

SD_LISTEN_FDS_START = 3
_FIELDS = ("run", "node")


def notify(state: str, *, env: Mapping[str, str] = os.environ) -> bool:
    """Send one sd_notify message; False when not under systemd (or an unsupported address)."""
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    elif address[0] != "/":
        return False  # vsock: and other transports are not supported
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False  # systemd went away (re-exec): nothing useful to do
    return True


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None when not asked for."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and int(pid) != os.getpid():
        return None  # meant for another process
    return int(usec) / 1e6 / 2


def listen_sockets(env: MutableMapping[str, str] = os.environ) -> dict[str, socket.socket]:
    """Sockets passed by systemd socket activation, by their FileDescriptorName.

    The LISTEN_* variables are removed, so node processes never see them.
    """
    try:
        if int(env.get("LISTEN_PID", "0")) != os.getpid():
            return {}
        count = int(env.get("LISTEN_FDS", "0"))
        names = env.get("LISTEN_FDNAMES", "").split(":")
    finally:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    found = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        name = names[i] if i < len(names) and names[i] else f"fd{fd}"
        found[name] = sock
    return found


def under_journald(env: Mapping[str, str] = os.environ, stream: int = 2) -> bool:
    """True when `stream` is the journal stream systemd set up (JOURNAL_STREAM=dev:ino)."""
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _fields(record: logging.LogRecord) -> str:
    parts = [f"{name}={getattr(record, name)}" for name in _FIELDS
             if getattr(record, name, None) is not None]
    return (" " + " ".join(parts)) if parts else ""


_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """`<prio>logger: message run=... node=...`, every line of a traceback prefixed too."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        first, _, rest = text.partition("\n")
        lines = [first + _fields(record), *(rest.splitlines() if rest else [])]
        return "\n".join(f"<{priority}>{line}" for line in lines)


class PlainFormatter(logging.Formatter):
    """A timestamped line with the structured fields at the end of its first line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        first, sep, rest = text.partition("\n")
        return first + _fields(record) + sep + rest


def configure_logging(level: str | int = "INFO", *, env: Mapping[str, str] = os.environ) -> None:
    """Log to stderr in the format that suits where stderr goes."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if under_journald(env) else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
