"""The thirteen ways a submitted workflow reached the host, tried against a real daemon.

The daemon runs on the shipped config.toml (only where it listens and keeps its state are
set, plus two tenants with tokens on the socket). Each case submits a workflow over the API
as tenant `a` and checks that it is refused (400) or fails with a sandbox error, and that
what it aimed at did not happen. Then, with the operator's explicit allow, the same std
nodes work.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from http_support import catalog, short_tmpdir
from nodehost.config import AuthConfig, Config, TokenConfig
from nodehost.configfile import load_config
from nodehost.service import Daemon

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
STD = {"name": "nodehost.std", "version": "1.0.0"}
TOKEN_A, TOKEN_B = "tenant-a-token-0123456789", "tenant-b-token-9876543210"
FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn


def shipped(tmp: str, sandbox: dict[str, Any] | None = None, policy: dict[str, Any] | None = None
            ) -> Config:
    """config.toml as shipped, on a socket and state directory of the test's own."""
    config = load_config(ROOT / "config.toml")
    tokens = Path(tmp) / "credentials"
    tokens.mkdir()
    (tokens / "a.token").write_text(TOKEN_A)
    (tokens / "b.token").write_text(TOKEN_B)
    server = msgspec.structs.replace(
        config.server, listen=f"unix:{tmp}/run/nodehost.sock", state_dir=f"{tmp}/state",
        runtime_dir=f"{tmp}/run", drain_seconds=0)
    auth = AuthConfig(require_token_on_socket=True, tokens=[
        TokenConfig(tenant="a", token_file=str(tokens / "a.token")),
        TokenConfig(tenant="b", token_file=str(tokens / "b.token"))])
    replaced: dict[str, Any] = {"server": server, "auth": auth}
    if sandbox:
        replaced["sandbox"] = msgspec.structs.replace(config.sandbox, **sandbox)
    if policy:
        replaced["policy"] = msgspec.structs.replace(config.policy, **policy)
    return msgspec.structs.replace(config, **replaced)


class Client:
    def __init__(self, socket: str, token: str) -> None:
        self.http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket), base_url="http://localhost/api/v1",
            headers={"Authorization": f"Bearer {token}"}, timeout=30)

    async def run(self, *nodes: dict[str, Any]) -> httpx.Response | dict[str, Any]:
        """The 400 if the workflow is refused, else the finished run's summary."""
        workflow = {"id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "case"},
                    "nodes": list(nodes)}
        response = await self.http.post("/runs", json={"clientId": "c", "workflow": workflow})
        if response.status_code != 202:
            return response
        run_id = response.json()["runId"]
        with anyio.fail_after(30):
            while True:
                summary: dict[str, Any] = (await self.http.get(f"/runs/{run_id}")).json()
                if summary["status"] in FINAL:
                    return summary
                await anyio.sleep(0.02)  # polling the run, under the deadline


@asynccontextmanager
async def daemon(config: Config) -> AsyncIterator[tuple[Daemon, Client, Client]]:
    d = Daemon(config, catalog())
    d.open()
    socket = config.server.address().path or ""
    async with anyio.create_task_group() as tg:
        await tg.start(d.run)
        a, b = Client(socket, TOKEN_A), Client(socket, TOKEN_B)
        try:
            yield d, a, b
        finally:
            await a.http.aclose()
            await b.http.aclose()
            d.stop()


def node(type: str, **parameters: Any) -> dict[str, Any]:
    return {"id": "n", "type": f"nodehost.std.{type}", "package": STD, "parameters": parameters}


def refused_at_admission(outcome: Any) -> str:
    assert isinstance(outcome, httpx.Response), outcome
    assert outcome.status_code == 400, outcome.text
    [detail] = outcome.json()["details"]
    assert detail["path"] == "$.workflow.nodes[0].type"
    return str(detail["message"])


def failed_with(outcome: Any, prefix: str) -> str:
    assert isinstance(outcome, dict), outcome.text
    assert outcome["status"] == "failed", outcome
    [n] = outcome["nodes"]
    error = n["error"]
    assert error["code"].startswith(prefix), error
    return str(error["message"])


@contextmanager
def counting_server(host: str = "127.0.0.1", redirect_to: str | None = None
                    ) -> Iterator[tuple[int, list[str]]]:
    """A loopback HTTP server counting the requests that reach it (or redirecting them)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            if redirect_to:
                self.send_response(302)
                self.send_header("Location", redirect_to)
                self.end_headers()
                return
            body = b'{"secret": "loopback only"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()


async def test_with_the_shipped_config_none_of_the_thirteen_cases_succeeds() -> None:
    with short_tmpdir() as tmp:
        config = shipped(tmp, sandbox={"http_allow": ["127.0.0.2"]})  # for the redirect case
        state = Path(tmp) / "state"
        outside = Path(tmp) / "outside"
        outside.mkdir()
        os.environ["NODEHOST_CASE_SECRET"] = "daemon-env-secret"
        try:
            async with daemon(config) as (_, a, b):
                private = await b.run(node("delay", seconds=0, value="b's private value"))
                assert isinstance(private, dict) and private["status"] == "succeeded"
                [segment] = sorted((state / "store" / "journal").glob("*.journal"))
                journal_before = segment.read_bytes()

                # 1-3: a command, a shell, the daemon's environment
                for argv in (["/usr/bin/id"], ["sh", "-c", f"touch {outside}/shell"],
                             ["/usr/bin/env"]):
                    message = refused_at_admission(await a.run(node("command", argv=argv)))
                    assert "privileged" in message
                assert not (outside / "shell").exists()
                # 4-5: read /etc/shadow; traverse out of the work directory
                failed_with(await a.run(node("file.read", path="/etc/shadow")), "E.STD.FILE")
                failed_with(await a.run(node("file.read", path="../../../../../../etc/passwd")),
                            "E.STD.FILE")
                # 6-7: write anywhere; write into the daemon's own journal
                failed_with(await a.run(node("file.write", path=str(outside / "pwned"),
                                             content="x")), "E.STD.FILE")
                assert not (outside / "pwned").exists()
                failed_with(await a.run(node("file.write", path=str(segment), content="x")),
                            "E.STD.FILE")
                # 8-10: loopback by name, by decimal address, through a redirect
                with counting_server() as (port, hits):
                    for url in (f"http://localhost:{port}/", f"http://2130706433:{port}/"):
                        failed_with(await a.run(node("http.request", url=url)), "E.STD.HTTP")
                    with counting_server("127.0.0.2", f"http://127.0.0.1:{port}/") as (
                            relay, relayed):
                        failed_with(await a.run(node("http.request",
                                                     url=f"http://127.0.0.2:{relay}/")),
                                    "E.STD.HTTP")
                    assert relayed == ["/"]  # the allowed hop was made, the next one refused
                    assert hits == []
                # 11-12: the config's token files; the journal
                for secret in (Path(tmp) / "credentials" / "b.token", segment):
                    failed_with(await a.run(node("file.read", path=str(secret))), "E.STD.FILE")
                # 13: another tenant's data stays out of reach over the API too
                assert (await a.http.get(f"/runs/{private['runId']}")).status_code == 404
                listed = (await a.http.get("/runs")).json()["items"]
                assert private["runId"] not in {r["runId"] for r in listed}
            assert segment.read_bytes()[:len(journal_before)] == journal_before
        finally:
            del os.environ["NODEHOST_CASE_SECRET"]


async def test_with_the_operators_allow_the_same_nodes_work() -> None:
    with short_tmpdir() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "input.txt").write_text("allowed content")
        echo, env = "/bin/echo", "/usr/bin/env"
        config = shipped(tmp, sandbox={"file_roots": [str(data)],
                                       "command_executables": [echo, env],
                                       "command_env": {"LANG": "C.UTF-8"},
                                       "http_allow": ["127.0.0.1"]},
                         policy={"privileged": ["nodehost.std.command"]})
        os.environ["NODEHOST_CASE_SECRET"] = "daemon-env-secret"
        try:
            async with daemon(config) as (_, a, _b):
                ran = await a.run(node("command", argv=[echo, "hello"]))
                assert isinstance(ran, dict) and ran["status"] == "succeeded", ran
                assert ran["nodes"][0]["result"]["stdout"] == "hello\n"
                environment = await a.run(node("command", argv=[env]))
                assert isinstance(environment, dict), environment
                assert environment["nodes"][0]["result"]["stdout"].split() == ["LANG=C.UTF-8"]
                await allowed_files_and_hosts(a, data)
        finally:
            del os.environ["NODEHOST_CASE_SECRET"]


async def allowed_files_and_hosts(a: Client, data: Path) -> None:
    read = await a.run(node("file.read", path=str(data / "input.txt")))
    assert isinstance(read, dict) and read["status"] == "succeeded", read
    assert "allowed content" in str(read["nodes"][0]["result"])
    with counting_server() as (port, hits):
        fetched = await a.run(node("http.request", url=f"http://127.0.0.1:{port}/x"))
        assert isinstance(fetched, dict) and fetched["status"] == "succeeded", fetched
        assert hits == ["/x"]
