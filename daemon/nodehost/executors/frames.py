"""The frames between the host and a worker process: msgpack, each behind a 4-byte length.

A worker serves one package version for one tenant. Host to worker: `Load` once (what to
serve, and how to import it), then `Start` (one attempt, in a slot the host chose) and
`Cancel` (of a slot). Worker to host: `Hello` once the package is importable, then, per
slot, what the node reports (`Report`) and one `Done` or `Failed`. Several attempts may be
in flight in one worker (async nodes share its event loop); frames of different slots
interleave, and either side writes what it has ready in one go (frames are batched on the
pipe). All are msgpack arrays with a tag.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from ..config import Sandbox
from ..reports import NodeReport

__all__ = [
    "MAX_FRAME",
    "Cancel",
    "Done",
    "Failed",
    "Hello",
    "Load",
    "Report",
    "Start",
    "ToHost",
    "ToWorker",
    "decode_to_host",
    "decode_to_worker",
    "encode",
    "header",
    "split",
]

MAX_FRAME = 256 * 1024 * 1024
header = struct.Struct(">I")


class Load(msgspec.Struct, tag="load", frozen=True, array_like=True):
    package: str
    version: str
    tenant: str
    # node type -> "module:qualname" of its function (packages of the daemon's own
    # environment); None: the package's entry points in the worker's environment
    functions: dict[str, str] | None = None
    sandbox: Sandbox | None = None  # [sandbox], for ctx.sandbox (None: the defaults)


class Start(msgspec.Struct, tag="start", frozen=True, array_like=True):
    slot: int
    node_type: str
    dispatch_id: str
    run_id: str
    node_id: str
    task_id: str
    attempt: int
    parameters: dict[str, Any]
    tenant: str = "default"
    work_dir: str = ""  # the run's work directory ("" when the host has none)


class Cancel(msgspec.Struct, tag="cancel", frozen=True, array_like=True):
    slot: int


class Hello(msgspec.Struct, tag="hello", frozen=True, array_like=True):
    pid: int
    python: str
    types: list[str] = []  # the node types this worker can run


class Report(msgspec.Struct, tag="report", frozen=True, array_like=True):
    slot: int
    report: NodeReport


class Done(msgspec.Struct, tag="done", frozen=True, array_like=True):
    slot: int
    result: dict[str, Any]


class Failed(msgspec.Struct, tag="failed", frozen=True, array_like=True):
    slot: int
    code: str
    message: str
    details: dict[str, Any] | None = None
    retryable: bool = True
    raised: bool = True  # raised by the node (NodeError) rather than found by the host


ToHost = Hello | Report | Done | Failed
ToWorker = Load | Start | Cancel

_encoder = msgspec.msgpack.Encoder()
_to_host = msgspec.msgpack.Decoder(ToHost)
_to_worker = msgspec.msgpack.Decoder(ToWorker)


def encode(message: msgspec.Struct) -> bytes:
    body = _encoder.encode(message)
    return header.pack(len(body)) + body


def decode_to_host(body: bytes) -> ToHost:
    return _to_host.decode(body)


def decode_to_worker(body: bytes) -> ToWorker:
    return _to_worker.decode(body)


def split(buffer: bytearray) -> list[bytes]:
    """The bodies of the complete frames at the start of `buffer`, which is left holding
    the rest; ValueError for a frame over MAX_FRAME (the peer is broken)."""
    bodies: list[bytes] = []
    at, size = 0, len(buffer)
    while size - at >= 4:
        (length,) = header.unpack_from(buffer, at)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes")
        end = at + 4 + length
        if end > size:
            break
        bodies.append(bytes(buffer[at + 4:end]))
        at = end
    if at:
        del buffer[:at]
    return bodies
