"""The frames between the host and a worker process: msgpack, each behind a 4-byte length.

Host to worker: `Start` (one attempt). Worker to host: `Hello` once it has imported the
node function, then what the node reports (`reports.NodeReport`, as it is) while the
attempt runs, then one `Done` or `Failed`. All are msgpack arrays with a tag.
A worker runs one attempt at a time; cancelling an attempt kills the worker's process group.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from ..config import Sandbox
from ..reports import NodeReport

__all__ = [
    "MAX_FRAME",
    "Done",
    "Failed",
    "Hello",
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


class Start(msgspec.Struct, tag="start", frozen=True, array_like=True):
    dispatch_id: str
    run_id: str
    node_id: str
    task_id: str
    attempt: int
    parameters: dict[str, Any]
    tenant: str = "default"
    work_dir: str = ""  # the run's work directory ("" when the host has none)
    sandbox: Sandbox | None = None  # [sandbox], for ctx.sandbox (None: the defaults)


class Hello(msgspec.Struct, tag="hello", frozen=True, array_like=True):
    pid: int
    python: str


class Done(msgspec.Struct, tag="done", frozen=True, array_like=True):
    result: dict[str, Any]


class Failed(msgspec.Struct, tag="failed", frozen=True, array_like=True):
    code: str
    message: str
    details: dict[str, Any] | None = None
    retryable: bool = True
    raised: bool = True  # raised by the node (NodeError) rather than found by the host


ToHost = Hello | Done | Failed | NodeReport  # a new kind of report needs nothing here

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
