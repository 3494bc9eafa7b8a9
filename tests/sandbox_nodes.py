"""A third-party node package that tries, with its own code, to reach the daemon: the probes
of tests/test_sandbox_workers.py (importable by name, as workers import node functions)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from typing import Any

from nodehost import Context, Package

package = Package("t.sandboxed", "1.0")
PACKAGE = {"name": "t.sandboxed", "version": "1.0"}


def _outcome(action: Any) -> str:
    """"ok", or the error (its class name and errno) the action raised."""
    try:
        action()
    except OSError as exc:
        return f"{type(exc).__name__} {exc.errno}"
    return "ok"


def _read(path: str) -> None:
    with open(path, "rb") as f:
        f.read(1)


def _write(path: str) -> None:
    with open(path, "w") as f:
        f.write("written by a node")


def call_api(socket_path: str) -> dict[str, Any]:
    """GET /api/v1/healthz on the daemon's socket: the status and body, or why it failed."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(20)
            sock.connect(socket_path)
            sock.sendall(b"GET /api/v1/healthz HTTP/1.1\r\nHost: localhost\r\n"
                         b"Connection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError as exc:
        return {"error": f"{type(exc).__name__} {exc.errno}"}
    head, _, body = data.partition(b"\r\n\r\n")
    return {"status": int(head.split()[1]), "body": json.loads(body)}


@package.node("t.sandboxed.probe")
def probe(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Try each of `read`, `write` and `list` (name -> path), the API on `socket`, and what a
    node must be able to do: its work directory, its own module, a temporary file."""
    out: dict[str, Any] = {}
    for name, path in params.get("read", {}).items():
        out[name] = _outcome(lambda path=path: _read(path))
    for name, path in params.get("write", {}).items():
        out[name] = _outcome(lambda path=path: _write(path))
    for name, path in params.get("list", {}).items():
        out[name] = _outcome(lambda path=path: os.listdir(path))
    if "socket" in params:
        out["api"] = call_api(params["socket"])
    assert ctx.work_dir is not None
    out["work_dir"] = _outcome(lambda: _write(str(ctx.work_dir / "result.txt")))
    out["own_module"] = _outcome(lambda: _read(__file__))
    out["temp_file"] = _outcome(lambda: tempfile.TemporaryFile().close())
    out["dev_null"] = _outcome(lambda: open(os.devnull, "r+b").close())
    out["environment"] = sorted(k for k in os.environ
                                if k.startswith("NODEHOST_") or k == "CREDENTIALS_DIRECTORY")
    out["pid"] = os.getpid()
    return out


@package.node("t.sandboxed.escape")
def escape(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Double fork: the grandchild, in a session of its own and orphaned (its parent exits
    first), calls the API. Its pid, parent pid and answer come back through a pipe."""
    go_read, go_write = os.pipe()
    result_read, result_write = os.pipe()
    middle = os.fork()
    if middle == 0:  # the child: starts the grandchild and exits, orphaning it
        if os.fork() == 0:
            os.setsid()
            os.close(go_write)
            os.close(result_read)
            os.read(go_read, 1)  # until its parent is gone
            answer = {"pid": os.getpid(), "ppid": os.getppid(), **call_api(params["socket"])}
            os.write(result_write, json.dumps(answer).encode())
            os._exit(0)
        os._exit(0)
    os.close(go_read)
    os.close(result_write)
    os.waitpid(middle, 0)
    os.write(go_write, b"g")
    os.close(go_write)
    data = b""
    while chunk := os.read(result_read, 65536):
        data += chunk
    os.close(result_read)
    return json.loads(data)
