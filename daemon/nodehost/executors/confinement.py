"""What a confined subprocess worker may reach: decided by the host, applied by the worker.

The host decides per tenant, because a worker serves one tenant for its whole life (Landlock
cannot be undone): read and execute everywhere but the protected paths (the daemon's state,
runtime directory, config, tokens, credentials, and the work root with the other tenants'
directories); write only in the tenant's work directories, the temp directory, the
`[sandbox] file_roots` and a few devices. The worker applies it before it imports any node
package code, so no code of a package ever runs unconfined.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableMapping

import msgspec

from . import landlock

__all__ = ["ENV", "Confinement", "apply_from_environ", "for_tenant"]

ENV = "NODEHOST_WORKER_CONFINEMENT"  # how the host hands it over (JSON)

# what programs expect to open for writing (subprocess.DEVNULL opens /dev/null read-write),
# and /dev/shm, where POSIX semaphores live (multiprocessing's locks): shared like /tmp
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/shm")


class Confinement(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    read: list[str]  # read and execute, with `protect` carved out
    write: list[str]  # also write, make and remove, with `protect` carved out
    protect: list[str]
    temp: str | None = None  # the worker's own TMPDIR, which it removes when it is done


def for_tenant(tenant: str, *, work: Iterable[str], protect: Iterable[str],
               temp: str | None = None) -> Confinement:
    """The confinement of a worker of `tenant` that may write in `work` (its tenant's work
    directory, its temp directories, the file roots), and never reach `protect`."""
    return Confinement(tenant=tenant, read=["/"],
                       write=[*work, *(d for d in DEVICES if os.path.exists(d))],
                       protect=sorted({os.path.abspath(p) for p in protect}), temp=temp)


def apply_from_environ(environ: MutableMapping[str, str]) -> Confinement | None:
    """In the worker: apply what the host handed over (and take it out of the environment
    that node code and its programs see). None when the host asked for nothing."""
    data = environ.pop(ENV, None)
    if data is None:
        return None
    rules = msgspec.json.decode(data, type=Confinement)
    landlock.restrict(read=rules.read, write=rules.write, protect=rules.protect)
    return rules
