"""The frames between the host and a worker process: msgpack, each behind a 4-byte length.

Host to worker: `Start` (one attempt). Worker to host: `Hello` once it has imported the
node function, then `Report`s while the attempt runs, then one `Done` or `Failed`.
A worker runs one attempt at a time; cancelling an attempt kills the worker's process group.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

__all__ = [
    "MAX_FRAME",
    "Done",
    "Failed",
    "Hello",
    "Report",
    "Start",
    "ToHost",
    "decode_to_host",
    "decode_to_worker",
    "encode",
    "header",
]

MAX_FRAME = 256 * 1024 * 1024
_HEADER = struct.Struct(">I")
header = _HEADER


class Start(msgspec.Struct, tag="start", frozen=True):
    dispatch_id: str
    run_id: str
    node_id: str
    task_id: str
    attempt: int
    parameters: dict[str, Any]


class Hello(msgspec.Struct, tag="hello", frozen=True):
    pid: int
    python: str


class Report(msgspec.Struct, tag="report", frozen=True):
    """One Reporter call: `kind` is its method name, `args` its positional arguments."""

    kind: str
    args: list[Any]


class Done(msgspec.Struct, tag="done", frozen=True):
    result: dict[str, Any]


class Failed(msgspec.Struct, tag="failed", frozen=True):
    code: str
    message: str
    details: dict[str, Any] | None = None
    retryable: bool = True
    raised: bool = True  # raised by the node (NodeError) rather than found by the host


ToHost = Hello | Report | Done | Failed

_encoder = msgspec.msgpack.Encoder()
_to_host = msgspec.msgpack.Decoder(ToHost)
_to_worker = msgspec.msgpack.Decoder(Start)


def encode(message: msgspec.Struct) -> bytes:
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


def decode_to_host(body: bytes) -> ToHost:
    return _to_host.decode(body)


def decode_to_worker(body: bytes) -> Start:
    return _to_worker.decode(body)
