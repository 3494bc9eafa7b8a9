"""The engine's inputs: one tagged union of commands, which are also the journal's records
(tier 1, no I/O).

Everything that changes a run is a command applied by `Engine.apply`: live calls and the
replay of a journal alike. A command made by a caller carries no stamp (`ts` is None); the
engine stamps it as it applies it (its clock, the event sequence before it, the dispatch
number it gives out), and hands the accepted ones, stamped, to its recorder: what is
journaled is exactly what was applied. A stamped command is history: the engine applies
it at its stamp and does not record it again.

On disk they are msgpack arrays `[tag, ts, seq, ...fields]` (see `store.records`), so fields
are only ever appended, with defaults (msgspec's schema evolution); the fields of a command
are keyword-only, which keeps `ts` and `seq` first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from .model import RunOptions
from .reports import NodeReport

__all__ = [
    "CancelRun",
    "Command",
    "Complete",
    "Dispatch",
    "Fail",
    "FireTimer",
    "Forget",
    "Interrupt",
    "Report",
    "Submit",
]


# gc=False: commands hold JSON-like data and never take part in reference cycles (recovery
# holds every command of the history at once).
class _Command(msgspec.Struct, array_like=True, tag_field="k", gc=False):
    ts: datetime | None = None  # the engine's clock when it applied the command
    seq: int = 0  # the event sequence before it: event ids survive compaction


class Submit(_Command, tag="submit", kw_only=True):
    """Start a run of a workflow document (`Engine(compile=...)` turns it into a graph)."""

    run_id: str
    tenant: str
    client_id: str
    # the workflow as it was sent (a msgpack map), kept encoded: it is written as it was
    # received and decoded straight into a Workflow by the replay
    workflow: msgspec.Raw
    definition_hash: str
    options: RunOptions = msgspec.field(default_factory=RunOptions)
    meta: dict[str, Any] | None = None  # what the submitter keeps with the run


class Dispatch(_Command, tag="dispatch", kw_only=True):
    """Start an attempt of a ready node (the scheduler has room for it)."""

    run_id: str
    task_id: str
    dispatch_seq: int = 0  # the number in the dispatch id it was given (stamped)


class Complete(_Command, tag="complete", kw_only=True):
    """The attempt returned these results."""

    run_id: str
    dispatch_id: str
    result: dict[str, Any]


class Fail(_Command, tag="fail", kw_only=True):
    """The attempt failed; retried while attempts remain, unless not `retryable`."""

    run_id: str
    dispatch_id: str
    code: str
    message: str
    details: dict[str, Any] | None = None
    retryable: bool = True


class Interrupt(_Command, tag="interrupt", kw_only=True):
    """The host stopped an attempt at shutdown; the node is queued again."""

    run_id: str
    dispatch_id: str
    reason: str


class FireTimer(_Command, tag="timer", kw_only=True):
    """A timer the engine asked for ran out (a retry's backoff, a timeout)."""

    run_id: str
    task_id: str
    kind: Literal["retry", "timeout"]
    fence: int  # the task's attempt (a container's try) when the timer was set


class CancelRun(_Command, tag="cancel", kw_only=True):
    run_id: str
    reason: str = "cancelled by request"


class Report(_Command, tag="node.report", kw_only=True):
    """What a running attempt reported (progress, a log chunk, ...)."""

    run_id: str
    dispatch_id: str
    report: NodeReport


class Forget(_Command, tag="forget", kw_only=True):
    """Finished runs dropped by retention (compaction leaves their records out)."""

    run_ids: list[str]

    @property
    def run_id(self) -> str:
        """No one run (every other command has a `run_id`)."""
        return ""


Command = (Submit | Dispatch | Complete | Fail | FireTimer | CancelRun | Report | Forget
           | Interrupt)
