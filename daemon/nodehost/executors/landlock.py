"""Landlock through ctypes: `abi()`, `carve()` and `restrict()` (Linux 5.13+, no privileges).

Landlock is an allowlist of file hierarchies, irrevocable once a process restricted itself,
inherited by everything it starts. It has no "deny" rule, so "everything but these paths" is
built by carving: a rule for every other child of each directory on the way down to a
protected path, none for the directories on that way nor for the protected path itself.

A rule binds an inode (what was there when it was added): files created later directly in
a carved directory (in /tmp, when a protected path lies in it) get no access, and a file
replaced by rename loses its rule. Path walking is never checked, so a granted hierarchy
inside a protected one (a tenant's work directory in the state directory) is reachable.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable

__all__ = ["LandlockError", "abi", "carve", "handled", "restrict"]

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on every arch
_PR_SET_NO_NEW_PRIVS = 38
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# access rights to files and directories (include/uapi/linux/landlock.h), and the ABI each
# first appeared in: a right the running kernel does not know must not be asked for
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM: reading, writing, making and removing
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3 and 5
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # all a file rule may hold
READ = EXECUTE | READ_FILE | READ_DIR
# ABI 6 scopes: no signals to, nor abstract Unix sockets of, processes outside the domain
# (a node cannot kill the daemon or another tenant's worker, even by kill(-1, SIGKILL))
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class LandlockError(OSError):
    """Landlock is unavailable, or a rule or the restriction was refused."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # kernels before ABI 6 accept the zeros after fs


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the kernel's header
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc: ctypes.CDLL | None = None


def _call(name: str, *args: object) -> int:
    global _libc
    if _libc is None:  # loaded on first use: nothing happens at import
        _libc = ctypes.CDLL(None, use_errno=True)
    result: int = getattr(_libc, name)(*args)
    if result < 0:
        errno = ctypes.get_errno()
        raise LandlockError(errno, os.strerror(errno))
    return result


def _syscall(number: int, *args: object) -> int:
    return _call("syscall", ctypes.c_long(number), *args)


def abi() -> int:
    """The Landlock ABI version of the running kernel; 0 when it has none (or not enabled)."""
    try:
        return _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (LandlockError, AttributeError):  # ENOSYS, EOPNOTSUPP; no syscall() outside libc
        return 0


def handled(version: int) -> int:
    """Every file right the kernel of ABI `version` knows (and so can deny)."""
    rights = _ABI1
    if version >= 2:
        rights |= REFER
    if version >= 3:
        rights |= TRUNCATE
    if version >= 5:
        rights |= IOCTL_DEV
    return rights


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def carve(root: str, protected: Iterable[str]) -> list[str]:
    """Paths whose hierarchies cover `root` except the `protected` ones: [root] when none
    lies in it, [] when root is itself protected. All paths must be absolute and resolved.

    Symbolic links are passed over: what one points to is checked where it lives.
    """
    inside = [p for p in protected if _within(p, root)]
    if not inside:
        return [root]
    if root in inside:
        return []
    out: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError:  # unreadable: nothing under it can be granted one by one
        return out
    for entry in entries:
        if not entry.is_symlink():
            out.extend(carve(entry.path, inside))
    return out


def restrict(*, read: Iterable[str], write: Iterable[str], protect: Iterable[str]) -> int:
    """Confine the calling process (and all it starts) for good: it may read and execute
    under `read`, and also write, make and remove under `write`, but reach none of the
    `protect` paths that lie inside them (a `write` path inside a protected one stays
    granted). Missing paths are skipped. Returns the ABI used; LandlockError if refused."""
    version = abi()
    if version < 1:
        raise LandlockError(0, "the kernel has no Landlock (Linux 5.13+, lsm=landlock)")
    rights = handled(version)
    guarded = [os.path.realpath(p) for p in protect if os.path.lexists(p)]
    rules: dict[str, int] = {}  # one rule a path: the carvings of "/" and /tmp overlap
    for roots, access in ((read, READ), (write, rights)):
        for root in roots:
            if os.path.exists(root):
                for path in carve(os.path.realpath(root), guarded):
                    rules[path] = rules.get(path, 0) | (access & rights)
    attr = _RulesetAttr(rights, 0, (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
                        if version >= 6 else 0)
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr),
                       ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    try:
        for path, access in rules.items():
            _add_rule(ruleset, path, access)
        # without it an unprivileged process may not restrict itself (and a setuid program
        # it ran could otherwise gain what the domain denies)
        _call("prctl", ctypes.c_int(_PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), ctypes.c_ulong(0),
              ctypes.c_ulong(0), ctypes.c_ulong(0))
        _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return version


def _add_rule(ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:  # gone since it was listed
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FILE_RIGHTS  # a file rule may hold file rights only (else EINVAL)
        rule = _PathBeneathAttr(access, fd)
        _syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset),
                 ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0))
    finally:
        os.close(fd)
