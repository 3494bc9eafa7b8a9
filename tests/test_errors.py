"""Every exception nodehost defines survives pickling with what a handler reads from it.

Exceptions cross process boundaries: a process-pool or cluster executor sends a node's
NodeError back, a worker pipe carries AttemptFailed, a supervisor logs a StartError. The
table below must name each exception class the package defines; a new class without an
example fails `test_every_exception_class_is_covered`.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import nodehost
from nodehost.api import ApiError, IssueOut
from nodehost.auth import AuthFailed
from nodehost.bindings import BindingPathError, MissingValue
from nodehost.client import ApiFailure, ClientError, Unreachable
from nodehost.config import ConfigError
from nodehost.environments import InstallFailed
from nodehost.errors import Issue, NodeError, NodehostError, PluginLoadError, WorkflowInvalid
from nodehost.executors import AttemptFailed
from nodehost.executors.landlock import LandlockError
from nodehost.idempotency import IdempotencyConflict
from nodehost.model import ErrorInfo
from nodehost.runs_index import CursorError
from nodehost.service import DamagedState, StartError
from nodehost.store.continuity import HistoryIncomplete, Loss
from nodehost.store.journal import DiskFull, JournalCorrupt
from nodehost.store.snapshot import SnapshotCorrupt
from nodehost.store.store import StoreFailed

# each exception, with the attributes a handler of it reads
EXAMPLES: list[tuple[BaseException, tuple[str, ...]]] = [
    (NodeError("E.ACME.QUOTA", "quota exceeded", "raise the quota",
               details={"limit": 3}, retryable=False),
     ("code", "message", "remediation", "details", "retryable")),
    (WorkflowInvalid([Issue("$.nodes[0].id", "duplicate id")]), ("issues",)),
    (PluginLoadError("acme-vision", "entry point failed"), ("plugin", "message")),
    (NodehostError("plain"), ()),
    (ConfigError("bad key"), ()),
    (StartError("socket in use"), ()),
    (StoreFailed("EIO"), ()),
    (DiskFull("no space"), ()),
    (JournalCorrupt(Path("store/00000001.seg"), 16, "bad frame"),
     ("path", "offset", "reason")),
    (SnapshotCorrupt(Path("store/snap-1"), "bad checksum"), ("path", "reason")),
    (HistoryIncomplete(Path("store"), [Loss(Path("store/journal/1.journal"), "gone", 1, 9)]),
     ("directory", "losses")),
    (DamagedState("the history is incomplete"), ()),
    (LandlockError(38, "Landlock is not supported"), ("errno", "strerror")),
    (AttemptFailed(ErrorInfo(code="E.TIMEOUT", message="slow"), retryable=False),
     ("error", "retryable")),
    (ApiError(400, "invalid_workflow", "bad", [IssueOut("$", "x")], {"Retry-After": "5"}),
     ("status", "error", "message", "details", "headers")),
    (ApiFailure(404, "not_found", "run r not found", "req-1", [{"path": "$"}]),
     ("status", "error", "message", "request_id", "details")),
    (Unreachable("unix:/run/nodehost.sock", "refused"), ("target", "reason")),
    (ClientError("generic"), ()),
    (InstallFailed("acme-x==1.0", "no such version"), ("spec", "message")),
    (AuthFailed("no token"), ()),
    (IdempotencyConflict("other body"), ()),
    (CursorError("stale cursor"), ()),
    (BindingPathError("bad path"), ()),
    (MissingValue("no value"), ()),
]


def defined_exception_classes() -> set[type[BaseException]]:
    """Exception classes defined in any nodehost module."""
    found: set[type[BaseException]] = set()
    for info in pkgutil.walk_packages(nodehost.__path__, "nodehost."):
        if info.name == "nodehost.__main__":
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.add(obj)
    return found


def test_every_exception_class_is_covered() -> None:
    """The table names every exception class the package defines (click's own aside)."""
    covered = {type(exc) for exc, _ in EXAMPLES}
    missing = {c for c in defined_exception_classes() if c not in covered
               and c.__module__ != "nodehost.cli"}  # click.ClickException: never pickled
    assert not missing, f"add an example to EXAMPLES for {sorted(map(str, missing))}"


@pytest.mark.parametrize(("exc", "fields"), EXAMPLES, ids=lambda v: type(v).__name__
                         if isinstance(v, BaseException) else "")
def test_an_exception_survives_pickling(exc: BaseException, fields: tuple[str, ...]) -> None:
    """Same class, same message, same attributes, after a round trip at every protocol."""
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back: Any = pickle.loads(pickle.dumps(exc, protocol=protocol))
        assert type(back) is type(exc)
        assert str(back) == str(exc)
        for field in fields:
            assert getattr(back, field) == getattr(exc, field), field


def test_a_subclass_of_node_error_pickles_as_itself() -> None:
    """A package author's NodeError subclass comes back as that subclass."""
    back = pickle.loads(pickle.dumps(QuotaError("E.ACME.QUOTA", "over", details={"n": 1})))
    assert type(back) is QuotaError and back.details == {"n": 1}


class QuotaError(NodeError):
    pass
