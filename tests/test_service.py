"""The daemon as a service: listeners, socket security, start-up refusals, signals."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest

from http_support import TOKEN_A, catalog, daemon_config, reap, running_daemon, short_tmpdir
from nodehost.config import Config, ConfigError
from nodehost.configfile import load_config, read_tokens
from nodehost.service import Daemon, StartError, bind_unix

TOKENS = f"""
[auth]
[[auth.tokens]]
tenant = "a"
token = "{TOKEN_A}"
"""


def config_from(text: str) -> Config:
    return msgspec.toml.decode(textwrap.dedent(text).encode(), type=Config)


# --- configuration ------------------------------------------------------------------------------


def test_tcp_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    """Listening on TCP requires bearer tokens: no tokens, no start."""
    config = config_from(f"""
        [server]
        listen = "tcp://127.0.0.1:0"
        state_dir = "{tmp_path}/state"
    """)
    with pytest.raises(ConfigError, match="requires bearer tokens"):
        Daemon(config, catalog()).open()


def test_requiring_tokens_on_the_socket_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    """require_token_on_socket with no tokens configured is a contradiction."""
    config = config_from(f"""
        [server]
        listen = "unix:{tmp_path}/s.sock"
        [auth]
        require_token_on_socket = true
    """)
    with pytest.raises(ConfigError, match=r"no \[\[auth\.tokens\]\]"):
        Daemon(config, catalog()).open()


@pytest.mark.parametrize(("text", "message"), [
    ("[server]\nlisten_on = 'unix:'", "unknown field `listen_on` - at `$.server`"),
    ("[server]\nlisten = 'http://x'", "expected 'unix:', 'unix:PATH' or 'tcp://HOST:PORT'"),
    ("[server]\nlisten = 'tcp://127.0.0.1'", "expected tcp://HOST:PORT"),
    ("[events]\nheartbeat_seconds = 0", "Expected `float` > 0.0 - at `$.events.heartbeat_seconds`"),
    ("[[auth.tokens]]\ntenant = 'a'\ntoken = 'short'", "length >= 16"),
    ("[[auth.tokens]]\ntenant = 'a'", "exactly one of `token` and `token_file`"),
    ("[[auth.tokens]]\ntenant = 'A B'\ntoken = '0123456789abcdefgh'", "$.auth.tokens[0].tenant"),
])
def test_bad_settings_are_refused_with_their_key(tmp_path: Path, text: str, message: str) -> None:
    """Unknown keys and bad values are named in the error."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)


def test_token_files_and_duplicate_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """token_file is read at start (relative to $CREDENTIALS_DIRECTORY); one token for two
    tenants is refused."""
    (tmp_path / "a.token").write_text(TOKEN_A + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = config_from("""
        [[auth.tokens]]
        tenant = "a"
        token_file = "a.token"
    """)
    assert read_tokens(config.auth) == {TOKEN_A: "a"}
    twice = config_from(f"""
        [[auth.tokens]]
        tenant = "a"
        token_file = "a.token"
        [[auth.tokens]]
        tenant = "b"
        token = "{TOKEN_A}"
    """)
    with pytest.raises(ConfigError, match="the same token"):
        read_tokens(twice.auth)
    missing = config_from("""
        [[auth.tokens]]
        tenant = "a"
        token_file = "nope.token"
    """)
    with pytest.raises(ConfigError, match="cannot read token_file"):
        read_tokens(missing.auth)


# --- the Unix socket ------------------------------------------------------------------------------


def test_the_socket_is_0660_in_a_0750_directory_created_if_missing() -> None:
    """bind_unix creates the directory (0750) and the socket (0660)."""
    with short_tmpdir() as d:
        path = f"{d}/run/deeper/api.sock"
        sock = bind_unix(path)
        try:
            assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o750
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        finally:
            sock.close()


def test_a_stale_socket_is_replaced_and_a_live_one_is_not() -> None:
    """A socket file nobody listens on is replaced; a live daemon's is refused."""
    with short_tmpdir() as d:
        path = f"{d}/api.sock"
        os.chmod(d, 0o750)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()  # the file stays, nobody listens
        live = bind_unix(path)
        try:
            with pytest.raises(StartError, match="another daemon is listening"):
                bind_unix(path)
        finally:
            live.close()


def test_unsafe_socket_locations_are_refused() -> None:
    """Not a socket, a world-writable directory, a path too long for sun_path."""
    with short_tmpdir() as d:
        Path(f"{d}/file").write_text("x")
        os.chmod(d, 0o750)
        with pytest.raises(StartError, match="is not a socket"):
            bind_unix(f"{d}/file")
        os.mkdir(f"{d}/open")
        os.chmod(f"{d}/open", 0o777)
        with pytest.raises(StartError, match="writable by others"):
            bind_unix(f"{d}/open/api.sock")
        with pytest.raises(StartError, match="longer than"):
            bind_unix(f"{d}/{'x' * 120}.sock")


# --- TCP --------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_tcp_requires_a_token_and_checks_the_host_header(anyio_backend: str) -> None:
    """On TCP: 401 without a token, 200 with one, 403 for a foreign Host; healthz is open."""
    with short_tmpdir() as d:
        config = daemon_config(d, toml=TOKENS, server={"listen": "tcp://127.0.0.1:0"})
        daemon = Daemon(config, catalog())
        daemon.open()
        assert daemon.address.startswith("tcp://127.0.0.1:")
        base = "http://" + daemon.address.removeprefix("tcp://")
        async with anyio.create_task_group() as tg:
            await tg.start(daemon.run)
            try:
                async with httpx.AsyncClient(base_url=base) as client:
                    assert (await client.get("/api/v1/healthz")).status_code == 200
                    assert (await client.get("/api/v1/runs")).status_code == 401
                    ok = await client.get("/api/v1/runs",
                                          headers={"Authorization": f"Bearer {TOKEN_A}"})
                    assert ok.status_code == 200
                    evil = await client.get("/api/v1/healthz", headers={"Host": "evil.test"})
                    assert evil.status_code == 403
                    assert evil.json()["error"] == "forbidden"
            finally:
                daemon.stop()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_required_socket_tokens(anyio_backend: str) -> None:
    """require_token_on_socket: socket clients without a token get 401 too."""
    with short_tmpdir() as d:
        required = TOKENS.replace("[auth]", "[auth]\nrequire_token_on_socket = true")
        config = daemon_config(d, toml=required)
        async with running_daemon(config) as r, r.client() as anonymous, \
                r.client(TOKEN_A) as a:
            assert (await anonymous.get("/api/v1/runs")).status_code == 401
            assert (await a.get("/api/v1/runs")).status_code == 200


# --- `nodehost serve` as a process --------------------------------------------------------------


def _wait_for_socket(path: str, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            listening = probe.connect_ex(path) == 0
        if listening:
            with httpx.Client(transport=httpx.HTTPTransport(uds=path),
                              base_url="http://localhost") as client:
                assert client.get("/api/v1/healthz").status_code == 200
            return
        time.sleep(0.05)
    raise AssertionError(f"the daemon did not answer on {path}")


def _write_config(directory: str, **server: str) -> str:
    path = f"{directory}/config.toml"
    lines = "\n".join(f'{k} = "{v}"' for k, v in server.items())
    Path(path).write_text(textwrap.dedent(f"""
        [server]
        listen = "unix:{directory}/run/nodehost.sock"
        state_dir = "{directory}/state"
        drain_seconds = 0
        {lines}
        [events]
        heartbeat_seconds = 0.2
    """))
    return path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_a_signal_with_an_open_stream_and_a_running_run(signum: int) -> None:
    """SIGTERM/SIGINT: `nodehost serve` ends open streams, stops and exits 0, promptly."""
    with short_tmpdir() as d:
        config = _write_config(d)
        sock = f"{d}/run/nodehost.sock"
        process = subprocess.Popen([sys.executable, "-m", "nodehost", "serve", "--config",
                                    config], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for_socket(sock, process)
            with httpx.Client(transport=httpx.HTTPTransport(uds=sock),
                              base_url="http://localhost") as client:
                run = client.post("/api/v1/runs", json={"clientId": "c", "workflow": {
                    "id": "w", "schemaVersion": "2025-01", "metadata": {"name": "n"},
                    "nodes": [{"id": "a", "type": "nodehost.std.delay", "parameters": {
                        "seconds": 60}, "package": {"name": "nodehost.std",
                                                    "version": "1.0.0"}}]}})
                assert run.status_code == 202
                with client.stream("GET", "/api/v1/events", timeout=10) as stream:
                    lines = stream.iter_lines()
                    assert next(lines).startswith(":")  # a keepalive: the stream is open
                    started = time.monotonic()
                    process.send_signal(signum)
                    for _ in lines:  # to the end of the stream, which must come
                        pass
            assert process.wait(timeout=10) == 0
            assert time.monotonic() - started < 5
            assert not os.path.exists(sock)
            assert "stopping" in process.stderr.read().decode()  # type: ignore[union-attr]
        finally:
            reap(process)


def test_serve_refuses_tcp_without_tokens_with_exit_2() -> None:
    """A refused start is one error line and exit code 2."""
    with short_tmpdir() as d:
        config = _write_config(d)
        text = Path(config).read_text().replace(f'"unix:{d}/run/nodehost.sock"',
                                                '"tcp://127.0.0.1:0"')
        Path(config).write_text(text)
        result = subprocess.run([sys.executable, "-m", "nodehost", "serve", "--config", config],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert "error: listening on TCP" in result.stderr and "Traceback" not in result.stderr


_ACTIVATE = """
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(sys.argv[1])
sock.listen()
if sock.fileno() == 3:
    os.set_inheritable(3, True)
else:
    os.dup2(sock.fileno(), 3)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="api")
os.execv(sys.executable, [sys.executable, "-m", "nodehost", "serve", "--config", sys.argv[2]])
"""


def test_serve_uses_a_socket_passed_by_systemd() -> None:
    """Socket activation: with LISTEN_FDS/LISTEN_PID the daemon serves on fd 3."""
    with short_tmpdir() as d:
        config = _write_config(d)
        activated = f"{d}/activated.sock"
        process = subprocess.Popen([sys.executable, "-c", _ACTIVATE, activated, config],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for_socket(activated, process)
            assert not os.path.exists(f"{d}/run/nodehost.sock")  # `listen` was not used
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            reap(process)
