"""Journal records: the engine's inputs, in the order it received them (tier 1: no I/O).

The engine is deterministic given its inputs and their timestamps, so journaling the calls
made on it is enough to rebuild every run exactly, event ids included. Records are msgspec
arrays with a tag; fields are only ever appended, with defaults (msgspec's schema evolution).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "CancelRun",
    "Complete",
    "Dispatch",
    "Fail",
    "FireTimer",
    "Forget",
    "Interrupt",
    "Record",
    "Report",
    "Submit",
    "decode_record",
    "encode_record",
]


# gc=False: records hold JSON-like data and never take part in reference cycles, so the
# garbage collector need not track them (recovery holds every record of the history).
class _Base(msgspec.Struct, array_like=True, tag_field="k", frozen=True, gc=False):
    ts: datetime  # the engine's clock during the call
    seq: int  # the event sequence before the call: ids stay the same after compaction


class Submit(_Base, tag="submit"):
    run_id: str
    tenant: str
    client_id: str
    # the workflow as it was sent (a msgpack map), kept encoded: it is written as it was
    # received and decoded straight into a Workflow by the replay
    workflow: msgspec.Raw
    definition_hash: str
    options: dict[str, Any] = {}
    meta: dict[str, Any] | None = None


class Dispatch(_Base, tag="dispatch"):
    run_id: str
    task_id: str
    dispatch_seq: int  # the number in the dispatch id it was given


class Complete(_Base, tag="complete"):
    run_id: str
    dispatch_id: str
    result: dict[str, Any]


class Fail(_Base, tag="fail"):
    run_id: str
    dispatch_id: str
    code: str
    message: str
    details: dict[str, Any] | None = None
    retryable: bool = True


class Interrupt(_Base, tag="interrupt"):
    """The host stopped an attempt at shutdown; the node is queued again."""

    run_id: str
    dispatch_id: str
    reason: str


class FireTimer(_Base, tag="timer"):
    run_id: str
    task_id: str
    kind: str
    fence: int


class CancelRun(_Base, tag="cancel"):
    run_id: str
    reason: str


class Report(_Base, tag="report"):
    """A report from a running attempt: `kind` is the engine method (`progress`, ...)."""

    run_id: str
    dispatch_id: str
    kind: str
    args: list[Any]


class Forget(_Base, tag="forget"):
    """Finished runs dropped by retention (compaction leaves their records out)."""

    run_ids: list[str]

    @property
    def run_id(self) -> str:
        return ""


Record = (Submit | Dispatch | Complete | Fail | FireTimer | CancelRun | Report | Forget
          | Interrupt)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def encode_record(record: Record) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes) -> Record:
    return _decoder.decode(data)
