"""Subprocess workers cannot touch the daemon: Landlock, a scrubbed environment, and the API
refusing the daemon's own processes.

A real daemon (uvicorn on a Unix socket in a short temporary directory: asyncio only) runs
the node package of `sandbox_nodes` in subprocess workers; its nodes try, with their own
code, to read the journal, the tokens and the config, to write into the state directory, to
list another tenant's work directory and to call the API. The carve-out Landlock is built
with is checked on its own, in processes that restrict themselves.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import sandbox_nodes
from hosts import local_host
from http_support import short_tmpdir
from nodehost.config import Config, Sandbox
from nodehost.configfile import load_config
from nodehost.executors import landlock
from nodehost.executors.subprocess import SubprocessExecutor
from nodehost.host import build_host
from nodehost.plugins import Catalog
from nodehost.service import Daemon, StartError
from nodehost.store.journal import segments

pytestmark = pytest.mark.anyio
needs_landlock = pytest.mark.skipif(not landlock.abi(), reason="the kernel has no Landlock")

TOKEN_A = "token-of-tenant-a-0123456789"
TOKEN_B = "token-of-tenant-b-0123456789"
DENIED = "PermissionError 13"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def catalog() -> Catalog:
    cat = Catalog()
    cat.add(sandbox_nodes.package)
    return cat


class Layout:
    """A daemon's files in a short temporary directory: config, state, runtime, tokens (one
    in $CREDENTIALS_DIRECTORY, one beside a file that is not secret)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.state = self.root / "state"
        self.run = self.root / "run"
        self.socket = self.run / "nodehost.sock"
        self.credentials = self.root / "credentials"
        self.secrets = self.root / "secrets"
        self.config = self.root / "config.toml"
        self.credentials.mkdir()
        (self.credentials / "token-a").write_text(TOKEN_A)
        self.secrets.mkdir()
        (self.secrets / "token-b").write_text(TOKEN_B)
        (self.secrets / "readme.txt").write_text("not a secret")
        self.scratch = self.root / "scratch"  # in the temp directory, beside the daemon's
        self.scratch.mkdir()

    def write_config(self, landlock: str = "auto") -> Path:
        self.config.write_text(textwrap.dedent(f"""
            [server]
            listen = "unix:{self.socket}"
            state_dir = "{self.state}"
            runtime_dir = "{self.run}"
            drain_seconds = 0
            [executors]
            subprocess = ["t.sandboxed"]
            [sandbox]
            landlock = "{landlock}"
            [[auth.tokens]]
            tenant = "a"
            token_file = "token-a"
            [[auth.tokens]]
            tenant = "b"
            token_file = "{self.secrets / 'token-b'}"
        """))
        return self.config


@pytest.fixture
def layout(monkeypatch: pytest.MonkeyPatch) -> Iterator[Layout]:
    with short_tmpdir() as root:
        files = Layout(root)
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(files.credentials))
        monkeypatch.setenv("NODEHOST_TOKEN", TOKEN_A)  # the daemon's environment, not a node's
        yield files


class Served:
    def __init__(self, daemon: Daemon, layout: Layout) -> None:
        self.daemon = daemon
        self.layout = layout

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(self.layout.socket)),
                                 base_url="http://localhost/api/v1", headers=headers)

    async def run(self, token: str, kind: str, **parameters: Any) -> dict[str, Any]:
        """One node of `t.sandboxed.<kind>` as the tenant of `token`: its summary."""
        document = {"workflow": {
            "id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "probe"},
            "nodes": [{"id": "n", "type": f"t.sandboxed.{kind}",
                       "package": sandbox_nodes.PACKAGE, "parameters": parameters}],
        }, "clientId": "c"}
        async with self.client(token) as client:
            response = await client.post("/runs", json=document)
            assert response.status_code == 202, response.text
            run_id = response.json()["runId"]
            assert self.daemon.host is not None
            await self.daemon.host.scheduler.wait_run(run_id)
            [summary] = (await client.get(f"/runs/{run_id}")).json()["nodes"]
        assert summary["status"] == "succeeded", summary.get("error")
        return summary["result"]


@asynccontextmanager
async def serving(layout: Layout, landlock: str = "auto") -> AsyncIterator[Served]:
    """The daemon `nodehost serve --config <layout.config>` runs, in this event loop."""
    path = layout.write_config(landlock)
    daemon = Daemon(load_config(path), catalog(), config_path=path)
    daemon.open()
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        try:
            yield Served(daemon, layout)
        finally:
            daemon.stop()


# --- a real daemon -------------------------------------------------------------------------------


def _outside_temp() -> Path:
    """A directory this test may write in that is not under the temp directory (which a
    worker may write to): the checkout, unless it is itself under temp, else home."""
    temp = Path(tempfile.gettempdir()).resolve()
    for candidate in (Path(sandbox_nodes.__file__).parent, Path.home()):
        resolved = candidate.resolve()
        if not resolved.is_relative_to(temp) and os.access(resolved, os.W_OK):
            return resolved
    raise AssertionError("no writable directory outside the temp directory to test with")


@needs_landlock
async def test_a_node_reaches_nothing_of_the_daemon_but_its_work_directory(
        layout: Layout) -> None:
    """Journal, tokens, config, pid file, the state directory and the other tenant's work
    directory are out of reach of a node's own code; the API refuses it with 403. Its work
    directory, its own module, temporary files and /dev/null work as ever."""
    outside = _outside_temp() / f".planted-by-a-node-{os.getpid()}"
    async with serving(layout) as served:
        other = await served.run(TOKEN_B, "probe")  # tenant b: its work directory and a file
        assert served.daemon.host is not None
        b_dir = served.daemon.host.work_dirs.tenant_dir("b")
        [b_run] = list(b_dir.iterdir())
        journal = segments(layout.state / "store" / "journal")[0].path
        result = await served.run(
            TOKEN_A, "probe", socket=str(layout.socket),
            read={"journal": str(journal), "credential_token": str(layout.credentials / "token-a"),
                  "token_file": str(layout.secrets / "token-b"), "config": str(layout.config),
                  "pid_file": str(layout.run / "nodehost.pid"),
                  "other_tenant_file": str(b_run / "result.txt"),
                  "beside_a_token": str(layout.secrets / "readme.txt")},
            write={"state_dir": str(layout.state / "planted"),
                   "journal_dir": str(layout.state / "store" / "journal" / "planted"),
                   "temp_dir": str(layout.scratch / "written.txt"),
                   "outside": str(outside)},
            list={"other_tenant": str(b_dir), "state": str(layout.state),
                  "credentials": str(layout.credentials)})
        async with served.client() as client:
            health = (await client.get("/healthz")).json()
    assert health["sandbox"] == "landlock"
    for name in ("journal", "credential_token", "token_file", "config", "pid_file",
                 "other_tenant_file", "state_dir", "journal_dir", "outside", "other_tenant",
                 "state", "credentials"):
        assert result[name] == DENIED, name
    assert not (layout.state / "planted").exists()
    planted = outside.exists()
    outside.unlink(missing_ok=True)
    assert not planted
    assert result["api"]["status"] == 403, result["api"]
    assert result["api"]["body"]["error"] == "forbidden"
    assert "own processes" in result["api"]["body"]["message"]
    for name in ("work_dir", "own_module", "temp_file", "dev_null", "beside_a_token",
                 "temp_dir"):
        assert result[name] == "ok", name
    assert [p.name for p in layout.state.glob("work/a/*/*")] == ["result.txt"]
    assert result["environment"] == other["environment"] == []
    assert result["pid"] != other["pid"]  # a worker serves one tenant


@needs_landlock
async def test_an_orphaned_grandchild_is_refused_and_reaped(layout: Layout) -> None:
    """A double fork does not escape: the orphan becomes the daemon's child (subreaper), its
    API call is refused, and once it exits it is reaped rather than left a zombie."""
    async with serving(layout) as served:
        result = await served.run(TOKEN_A, "escape", socket=str(layout.socket))
        assert result["ppid"] == os.getpid()  # this process runs the daemon
        assert result["status"] == 403 and result["body"]["error"] == "forbidden"
        orphan = result["pid"]
        with anyio.fail_after(20):  # until it has exited (without reaping it)
            try:
                await anyio.to_thread.run_sync(os.waitid, os.P_PID, orphan,
                                               os.WEXITED | os.WNOWAIT)
            except ChildProcessError:  # the daemon's own pass came first
                pass
        served.daemon.orphans.reap()
        served.daemon.orphans.reap()
        assert not os.path.exists(f"/proc/{orphan}")


def test_descendants_are_told_from_other_processes() -> None:
    """A child (and an orphan that became ours) descends from us; our parent, init and a
    process that is gone (fail closed: it cannot be told apart) are judged as they are."""
    from nodehost.descendants import descends_from

    me, uid = os.getpid(), os.getuid()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        assert descends_from(child.pid, uid, me)
        assert not descends_from(me, uid, child.pid)
        assert not descends_from(os.getppid(), uid, me)
        assert not descends_from(1, 0, me)
    finally:
        child.communicate(b"")
    assert descends_from(child.pid, uid, me)  # reaped: gone, so refused


@needs_landlock
async def test_landlock_off_leaves_workers_unconfined(layout: Layout) -> None:
    """With [sandbox] landlock = "off" nothing is restricted, and healthz says so."""
    async with serving(layout, landlock="off") as served:
        result = await served.run(TOKEN_A, "probe",
                                  read={"config": str(layout.config)},
                                  write={"state_dir": str(layout.state / "planted")})
        async with served.client() as client:
            health = (await client.get("/healthz")).json()
    assert (result["config"], result["state_dir"]) == ("ok", "ok")
    assert health["sandbox"] == "off"


async def test_require_refuses_to_start_without_landlock(
        layout: Layout, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """On a kernel without Landlock, "require" refuses to start; "auto" starts with a
    warning, and healthz says workers are not confined."""
    monkeypatch.setattr(landlock, "abi", lambda: 0)
    path = layout.write_config("require")
    with pytest.raises(StartError, match="no Landlock"):
        Daemon(load_config(path), catalog(), config_path=path).open()
    with caplog.at_level(logging.WARNING, logger="nodehost.service"):
        async with serving(layout, landlock="auto") as served:
            async with served.client() as client:
                health = (await client.get("/healthz")).json()
    assert health["sandbox"] == "unavailable"
    assert any("no Landlock" in r.getMessage() for r in caplog.records)


# --- hosts without a daemon ----------------------------------------------------------------------


@needs_landlock
async def test_protected_paths_given_to_build_host_are_unreachable(tmp_path: Path) -> None:
    """`build_host(..., protect=[...])` keeps workers from those paths, whatever else they
    may read; the same host with landlock "off" does not."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    for mode, expected in (("auto", DENIED), ("off", "ok")):
        config = Config(sandbox=Sandbox(landlock=mode))  # type: ignore[arg-type]
        host = build_host(config, catalog(), protect=[secret])
        async with host.running():
            run = await host.run({"id": "wf", "schemaVersion": "2025-01", "metadata": {
                "name": "t"}, "nodes": [{"id": "n", "type": "t.sandboxed.probe",
                                         "package": sandbox_nodes.PACKAGE,
                                         "parameters": {"read": {"secret": str(secret)}}}]})
        assert run.tasks["n"].result["secret"] == expected, mode


@needs_landlock
async def test_workers_are_per_tenant() -> None:
    """Two tenants never share a worker (its confinement is its tenant's), one tenant's
    runs share a warm one."""
    host = local_host(catalog(), executor="subprocess")
    executor = host.executors["subprocess"]
    assert isinstance(executor, SubprocessExecutor)
    document = {"id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "t"},
                "nodes": [{"id": "n", "type": "t.sandboxed.probe",
                           "package": sandbox_nodes.PACKAGE}]}
    async with host.running():
        pids = [(await host.run(document, tenant=tenant)).tasks["n"].result["pid"]
                for tenant in ("a", "b", "a")]
    assert pids[0] == pids[2] != pids[1]
    assert executor.started == 2


@needs_landlock
def test_a_worker_whose_host_is_gone_removes_its_temp_directory(tmp_path: Path) -> None:
    """A worker's own TMPDIR goes with it even when the daemon died (was killed) first:
    the worker removes it once its stdin closes."""
    from msgspec import json

    from nodehost.executors.confinement import ENV, for_tenant

    parent = tmp_path / "workers"  # as the executor's: the worker may remove entries in it
    temp = parent / "a-1"
    temp.mkdir(parents=True)
    (temp / "left-by-a-node.txt").write_text("x")
    confinement = for_tenant("a", work=[str(parent)], protect=[], temp=str(temp))
    done = subprocess.run(
        [sys.executable, "-m", "nodehost.executors.worker", "sandbox_nodes", "probe",
         "t.sandboxed", "1.0", "t.sandboxed.probe", "a"],
        input=b"", capture_output=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
             ENV: json.encode(confinement).decode()})
    assert done.returncode == 0, done.stderr
    assert not temp.exists()


# --- the carve-out -------------------------------------------------------------------------------


def tree(root: Path) -> None:
    for d in ("state/work/a", "state/work/b", "state/store", "other"):
        (root / d).mkdir(parents=True)
    for f in ("state/store/journal", "state/work/b/secret", "other/file", "top.txt",
              "secrets.toml"):
        (root / f).write_text(f)
    (root / "link").symlink_to(root / "state")


def test_carve_grants_every_sibling_on_the_way_to_a_protected_path(tmp_path: Path) -> None:
    """Everything but the protected directory, its ancestors and symbolic links gets a
    rule; a protected file's siblings get theirs one by one."""
    tree(tmp_path)
    root = str(tmp_path)
    carved = landlock.carve(root, [f"{root}/state/store", f"{root}/secrets.toml"])
    assert sorted(carved) == sorted(f"{root}/{p}" for p in (
        "state/work", "other", "top.txt"))
    assert landlock.carve(root, []) == [root]
    assert landlock.carve(root, [root]) == []
    assert landlock.carve(f"{root}/other", [f"{root}/state"]) == [f"{root}/other"]
    # a name that merely starts like the root's is not inside it
    assert landlock.carve(f"{root}/other", [f"{root}/other-not-inside"]) == [f"{root}/other"]


def test_only_rights_the_abi_knows_are_handled() -> None:
    assert landlock.handled(1) == (1 << 13) - 1
    assert landlock.handled(2) == landlock.handled(1) | landlock.REFER
    assert landlock.handled(4) == landlock.handled(2) | landlock.TRUNCATE
    assert landlock.handled(7) == landlock.handled(4) | landlock.IOCTL_DEV


RESTRICTED = """
import json, os, sys
from nodehost.executors import landlock
protect, write = json.loads(sys.argv[1]), json.loads(sys.argv[2])
landlock.restrict(read=["/"], write=write, protect=protect)
out = {}
for path in json.loads(sys.argv[3]):
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path).read()
        out[path] = "ok"
    except OSError as exc:
        out[path] = type(exc).__name__
try:
    open(os.path.join(write[0], "new"), "w").write("x") if write else None
    out["write"] = "ok"
except OSError as exc:
    out["write"] = type(exc).__name__
print(json.dumps(out))
"""


@needs_landlock
def test_a_restricted_process_reads_all_but_what_is_protected(tmp_path: Path) -> None:
    """In a process restricted by `restrict`: protected paths (and what is under them) are
    unreadable, their siblings and the rest are readable, a symbolic link into a protected
    directory leads nowhere, and a write root inside a protected directory is granted."""
    import json

    tree(tmp_path)
    root = str(tmp_path)
    probes = [f"{root}/state", f"{root}/state/store/journal", f"{root}/state/work/b",
              f"{root}/state/work/b/secret", f"{root}/link/store/journal", f"{root}/secrets.toml",
              f"{root}/other/file", f"{root}/top.txt", f"{root}/state/work/a", "/etc/hostname"]
    done = subprocess.run(
        [sys.executable, "-c", RESTRICTED,
         json.dumps([f"{root}/state", f"{root}/secrets.toml"]),
         json.dumps([f"{root}/state/work/a"]), json.dumps(probes)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    out = json.loads(done.stdout)
    for denied in probes[:6]:
        assert out[denied] == "PermissionError", denied
    for granted in probes[6:]:
        if os.path.exists(granted):
            assert out[granted] == "ok", granted
    assert out["write"] == "ok"
    assert (tmp_path / "state/work/a/new").read_text() == "x"
