"""The daemon's own descendants: their API connections are refused, their orphans reaped.

Landlock keeps a worker from the daemon's files but cannot keep it from connect()ing to a
pathname Unix socket, and the socket's permissions let every process of the daemon's user
in. So the daemon looks at who is on the other end (SO_PEERCRED) and walks /proc up from it:
a process that descends from the daemon (a worker, or anything a node started) is refused.

A double fork would escape the walk (the orphan is reparented to init), so while serving the
daemon is a child subreaper (PR_SET_CHILD_SUBREAPER): orphans of its descendants become its
children instead. Those nobody waits for (asyncio waits for the workers it started by pid,
subprocess.Popen for its own) are reaped by `OrphanReaper`.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Callable, Collection
from typing import Protocol

__all__ = ["OrphanReaper", "descends_from", "peer", "set_subreaper"]

_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_MAX_DEPTH = 4096  # no real process tree is deeper (pid_max bounds it; a loop would not end)


class _Socket(Protocol):  # socket.socket, or asyncio's TransportSocket around one
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def peer(sock: _Socket) -> tuple[int, int]:
    """(pid, uid) of the process that connected a Unix socket (pid 0: in another pid
    namespace, outside ours, so none of our descendants)."""
    pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                   _UCRED.size))
    return pid, uid


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) from /proc/<pid>/stat; None if it cannot be read."""
    try:  # os.open: a third cheaper than open(), and this runs for every connection
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        fields = data.rpartition(b")")[2].split()  # the name may hold ") "
        return fields[0].decode(), int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _parent(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def descends_from(pid: int, uid: int, ancestor: int) -> bool:
    """Whether process `pid` (of user `uid`) descends from process `ancestor`.

    Fails closed: a process of our own user that is gone before it could be looked at, or a
    tree that keeps changing under the walk, counts as a descendant. A process /proc hides
    (hidepid, systemd's ProtectProc=invisible) is another user's, which no confined worker
    can become (no_new_privs: no setuid programs)."""
    for _ in range(8):  # a parent exiting mid-walk reparents the chain: walk it again
        verdict = _walk(pid, uid, ancestor)
        if verdict is not None:
            return verdict
    return True


def _walk(pid: int, uid: int, ancestor: int) -> bool | None:
    """The verdict, or None when the chain changed while it was walked."""
    child, parent = pid, _parent(pid)
    if parent is None:
        return uid == os.geteuid()
    for _ in range(_MAX_DEPTH):
        if parent == ancestor:
            return True
        if parent <= 1:
            return False
        grandparent = _parent(parent)
        if grandparent is None:
            # reaped meanwhile (its children were reparented before: walk again), or hidden
            # from us, hence another user's process: none of ours
            return None if _parent(child) != parent else False
        child, parent = parent, grandparent
    return True


def set_subreaper(on: bool) -> bool:
    """Make this process a child subreaper (or stop it being one); whether it was one."""
    libc = ctypes.CDLL(None, use_errno=True)
    was = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"PR_SET_CHILD_SUBREAPER: {os.strerror(errno)}")
    return bool(was.value)


def _children() -> list[int]:
    """This process's children (of every thread: an orphan goes to any of them)."""
    me = os.getpid()
    try:
        pids: list[int] = []
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
        return pids
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: look at every process
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == me]


class OrphanReaper:
    """Reaps the zombies among our children that nobody else will: orphans.

    waitpid(-1) would also take the exit status of a worker that asyncio waits for (it then
    reports 255 and logs "Unknown child process"), or of a subprocess.Popen's child. So a
    zombie is reaped only if it is none of `keep` (the workers) and was a zombie at the
    previous `reap()` too: a child that someone waits for is reaped by them at once.
    """

    def __init__(self, keep: Callable[[], Collection[int]] = frozenset) -> None:
        self._keep = keep
        self._zombies: set[tuple[int, int]] = set()  # (pid, start time): pids are reused

    def reap(self) -> list[int]:
        """One pass; the pids reaped."""
        keep = self._keep()
        zombies = set()
        for pid in _children():
            stat = _stat(pid)
            if stat is not None and stat[0] == "Z" and pid not in keep:
                zombies.add((pid, stat[2]))
        reaped = []
        for pid, _start in zombies & self._zombies:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
            except ChildProcessError:  # someone else did
                pass
        self._zombies = zombies - self._zombies
        return reaped
