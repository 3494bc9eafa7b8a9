"""Journal records: the engine's commands, as they are kept on disk (tier 1: no I/O).

A record is a `commands.Command`, stamped, as a msgpack array `[tag, ts, seq, ...fields]`.
The journal format is a contract with installed daemons: journals written by an older
nodehost must still recover, so the record shapes it wrote are decoded here too, and
turned into today's commands (`_ReportV1`, the report record of nodehost 0.1 up to c244de0:
`kind` named an engine method and `args` were its arguments).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ..commands import Command, Report
from ..reports import Artifact, Chunk, Metric, NodeReport, Partial, Progress

__all__ = ["Record", "decode_record", "encode_record"]

Record = Command


class _ReportV1(msgspec.Struct, array_like=True, tag_field="k", tag="report", gc=False):
    ts: datetime
    seq: int
    run_id: str
    dispatch_id: str
    kind: str
    args: list[Any]

    def upgrade(self) -> Report:
        report: NodeReport
        match self.kind:
            case "progress":
                report = Progress(*self.args)
            case "chunk":
                report = Chunk(*self.args)
            case "partial":
                report = Partial(*self.args)
            case "metric":
                report = Metric(*self.args)
            case "artifact":
                report = Artifact(*self.args)
            case _:
                raise msgspec.ValidationError(f"unknown report kind {self.kind!r}")
        return Report(ts=self.ts, seq=self.seq, run_id=self.run_id,
                      dispatch_id=self.dispatch_id, report=report)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Command | _ReportV1)


def encode_record(record: Command) -> bytes:
    assert record.ts is not None, "only a stamped command (one the engine applied) is a record"
    return _encoder.encode(record)


def decode_record(data: bytes) -> Command:
    record: Command | _ReportV1 = _decoder.decode(data)
    if isinstance(record, _ReportV1):
        return record.upgrade()
    return record
