"""Helpers for the API, service and CLI-client tests: documents, a test package, clients.

`api_client()` runs a host and the ASGI app in-process (any anyio backend); `running_daemon()`
runs a whole `Daemon` (uvicorn on a Unix socket in a short temporary directory: asyncio only)
and stops it at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx
import msgspec
import nodehost_std

from nodehost import Context, Package
from nodehost.api import DaemonApi
from nodehost.auth import Authenticator
from nodehost.config import ApiConfig, Config, EventsConfig, ExecutorsConfig
from nodehost.host import Host, build_host
from nodehost.http import create_app
from nodehost.plugins import Catalog
from nodehost.runs_index import RunsIndex
from nodehost.service import Daemon

STD = {"name": "nodehost.std", "version": "1.0.0"}
TEST = {"name": "t.http", "version": "1.0"}
TOKEN_A = "token-for-tenant-a-0123456789"
TOKEN_B = "token-for-tenant-b-0123456789"

# --- a node package whose nodes the tests hold and release ------------------------------------

package = Package("t.http", "1.0")
_gates: dict[str, anyio.Event] = {}
_released: set[str] = set()


@package.node("t.http.gate")
async def gate(ctx: Context, params: dict) -> dict:
    """Wait until the test calls `release(params["gate"])`."""
    name = params["gate"]
    if name not in _released:
        event = _gates.setdefault(name, anyio.Event())
        await event.wait()
    return {"gate": name}


@package.node("t.http.chatty")
async def chatty(ctx: Context, params: dict) -> dict:
    """Log `lines` lines of `size` characters as fast as possible."""
    line = "x" * params.get("size", 200)
    for i in range(params.get("lines", 100)):
        ctx.log(f"{i} {line}")
        if i % 100 == 99:
            await anyio.sleep(0)
    return {"lines": params.get("lines", 100)}


def release(name: str) -> None:
    _released.add(name)
    event = _gates.get(name)
    if event is not None:
        event.set()


def catalog() -> Catalog:
    cat = Catalog()
    cat.add(nodehost_std.package)
    cat.add(package)
    return cat


# --- documents --------------------------------------------------------------------------------


def node(node_id: str, type: str = "nodehost.std.delay", **parameters: Any) -> dict[str, Any]:
    pkg = TEST if type.startswith("t.http.") else STD
    if type == "nodehost.std.delay" and not parameters:
        parameters = {"seconds": 0.01}
    return {"id": node_id, "type": type, "package": dict(pkg), "parameters": parameters}


def doc(*nodes: dict[str, Any], edges: list[tuple[str, str]] = (), client_id: str = "c1",
        **extra: Any) -> dict[str, Any]:
    workflow = {
        "id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "test"},
        "nodes": list(nodes) or [node("a")],
        "edges": [{"source": {"node": s}, "target": {"node": t}} for s, t in edges],
        **extra,
    }
    return {"workflow": workflow, "clientId": client_id}


def gated(name: str | None = None, client_id: str = "c1") -> tuple[dict[str, Any], str]:
    """A one-node run that waits for `release(name)`."""
    name = name or uuid.uuid4().hex
    return doc(node("g", "t.http.gate", gate=name), client_id=client_id), name


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `predicate()` holds (checked every 10 ms), failing after `timeout`."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


# --- in-process: the ASGI app over a running host --------------------------------------------


class InProcess:
    def __init__(self, host: Host, api: DaemonApi, app: Any,
                 client: httpx.AsyncClient) -> None:
        self.host = host
        self.api = api
        self.app = app
        self.client = client

    async def raw(self, method: str, path: str, chunks: list[bytes],
                  headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
        """Call the ASGI app by hand, the body in `chunks` (no Content-Length)."""
        messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
        messages.append({"type": "http.request", "body": b"", "more_body": False})
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("localhost", 80)}
        await self.app(scope, receive, send)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return sent[0]["status"], body

    async def submit(self, document: dict[str, Any], **headers: str) -> dict[str, Any]:
        response = await self.client.post("/api/v1/runs", json=document, headers=headers)
        assert response.status_code == 202, response.text
        return response.json()

    async def finished(self, run_id: str) -> str:
        run = await self.host.scheduler.wait_run(run_id)
        return run.status


def make_api(*, replay_buffer: int = 1000, settings: ApiConfig | None = None,
             subscriber_buffer: int = 100) -> tuple[Host, DaemonApi]:
    """A host (no journal, nodes in-process) and the API over it."""
    index = RunsIndex()
    config = Config(
        executors=ExecutorsConfig(default="inprocess"),
        api=settings or ApiConfig(),
        events=EventsConfig(replay_buffer=replay_buffer, subscriber_buffer=subscriber_buffer),
    )
    host = build_host(config, catalog())
    return host, DaemonApi(host, index=index)


@asynccontextmanager
async def api_client(*, tokens: dict[str, str] | None = None, require_token: bool = False,
                     settings: ApiConfig | None = None, token: str | None = None,
                     allowed_hosts: list[str] | None = None,
                     raise_app_exceptions: bool = True) -> AsyncIterator[InProcess]:
    host, api = make_api(settings=settings)
    app = create_app(api, authenticator=Authenticator(tokens, require_token=require_token),
                     allowed_hosts=allowed_hosts)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app, raise_app_exceptions=raise_app_exceptions)
    async with host.running(), httpx.AsyncClient(
        transport=transport, base_url="http://localhost", headers=headers
    ) as client:
        yield InProcess(host, api, app, client)


# --- a real daemon: uvicorn on a Unix socket ------------------------------------------------


def reap(process: subprocess.Popen[bytes]) -> None:
    """End a process a test started (if it is still running) and close its pipes."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()



@contextmanager
def short_tmpdir() -> Iterator[str]:
    """A temporary directory with a short path (a socket path must fit in 107 bytes)."""
    path = tempfile.mkdtemp(prefix="nh", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def daemon_config(directory: str, *, toml: str = "", server: dict[str, Any] | None = None
                  ) -> Config:
    """A config for tests: socket under `directory`, nodes in-process, fast heartbeats;
    `server` overrides keys of [server] (the config is frozen, like the daemon's)."""
    text = f"""
[server]
listen = "unix:{directory}/run/nodehost.sock"
state_dir = "{directory}/state"
runtime_dir = "{directory}/run"
drain_seconds = 0
stop_timeout_seconds = 5
[executors]
default = "inprocess"
[events]
heartbeat_seconds = 0.2
{toml}
"""
    config = msgspec.toml.decode(text.encode(), type=Config)
    if server:
        config = msgspec.structs.replace(
            config, server=msgspec.structs.replace(config.server, **server))
    return config


class Running:
    def __init__(self, daemon: Daemon, socket_path: str) -> None:
        self.daemon = daemon
        self.socket_path = socket_path

    @property
    def api(self) -> DaemonApi:
        assert self.daemon.api is not None
        return self.daemon.api

    def client(self, token: str | None = None, **kw: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.socket_path),
                                 base_url="http://localhost", headers=headers, **kw)


@asynccontextmanager
async def running_daemon(config: Config) -> AsyncIterator[Running]:
    """Open and run a Daemon in this event loop (asyncio); stop it and wait at the end."""
    daemon = Daemon(config, catalog())
    daemon.open()
    listen = config.server.address()
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        try:
            yield Running(daemon, listen.path or "")
        finally:
            daemon.stop()
    assert not os.path.exists(listen.path or ""), "the socket file was left behind"


class SseReader:
    """Reads an SSE response frame by frame: (id, event, data dict) or ("comment", text)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame: {"comment": text} or {"id", "event", "data"}; {"end": True} at EOF."""
        frame: dict[str, Any] = {}
        with anyio.fail_after(timeout):
            async for line in self._lines:
                if line.startswith(":"):
                    return {"comment": line[1:].strip()}
                if not line:
                    if frame:
                        if "data" in frame:
                            frame["data"] = msgspec.json.decode(frame["data"])
                        return frame
                    continue
                field, _, value = line.partition(": ")
                frame[field] = value
        return {"end": True}

    async def event(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next event, skipping comments."""
        while True:
            frame = await self.next(timeout)
            if "comment" not in frame:
                return frame

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
                    ) -> list[dict[str, Any]]:
        """Events up to and including the first for which `predicate` holds."""
        out = []
        with anyio.fail_after(timeout):
            while True:
                frame = await self.event(timeout)
                assert "end" not in frame, f"the stream ended; got {out}"
                out.append(frame)
                if predicate(frame):
                    return out


def run_done(run_id: str) -> Callable[[dict[str, Any]], bool]:
    def check(frame: dict[str, Any]) -> bool:
        data = frame["data"]["data"]
        return (frame["event"] == "run.status" and data["runId"] == run_id
                and data["status"] in ("succeeded", "failed", "cancelled"))
    return check


def last_of_run(run_id: str) -> Callable[[dict[str, Any]], bool]:
    """The run's last event: the run.snapshot after its final run.status."""
    def check(frame: dict[str, Any]) -> bool:
        data = frame["data"]["data"]
        return (frame["event"] == "run.snapshot" and data["run"]["runId"] == run_id
                and data["run"]["status"] in ("succeeded", "failed", "cancelled"))
    return check
