"""`nodehost submit / watch / runs` against a real daemon (`nodehost serve` in a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from http_support import (
    TOKEN_A,
    daemon_config,
    doc,
    node,
    reap,
    running_daemon,
    short_tmpdir,
)
from nodehost.cli import main
from nodehost.client import Client, Target, watch_run
from nodehost.events import Envelope

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


class Served:
    def __init__(self, directory: str, config: str, sock: str) -> None:
        self.directory = directory
        self.config = config
        self.sock = sock

    def invoke(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, [*args, "--config", self.config],
                                    catch_exceptions=False, env=env)
        return result.exit_code, result.stdout, result.stderr

    def write(self, name: str, document: object) -> str:
        path = f"{self.directory}/{name}"
        Path(path).write_text(json.dumps(document))
        return path


def _serve(directory: str, extra: str = "") -> Iterator[Served]:
    config = f"{directory}/config.toml"
    sock = f"{directory}/run/nodehost.sock"
    Path(config).write_text(textwrap.dedent(f"""
        [server]
        listen = "unix:{sock}"
        state_dir = "{directory}/state"
        drain_seconds = 0
        [events]
        heartbeat_seconds = 0.2
    """) + textwrap.dedent(extra))
    process = subprocess.Popen([sys.executable, "-m", "nodehost", "serve", "--config", config],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                if probe.connect_ex(sock) == 0:
                    break
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)
        yield Served(directory, config, sock)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=10) == 0
        finally:
            reap(process)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with short_tmpdir() as d:
        yield from _serve(d)


def test_submit_prints_the_run_id_and_runs_show_and_list_find_it(served: Served) -> None:
    """submit -> run id on stdout; `runs show` and `runs list` (human and json) have it."""
    code, out, err = served.invoke("submit", served.write("ok.json", doc(client_id="cli-t")))
    assert code == 0, err
    run_id = out.strip()
    assert len(run_id) == 36
    code, out, _ = served.invoke("runs", "show", run_id, "-o", "json")
    assert code == 0 and json.loads(out)["runId"] == run_id
    code, out, _ = served.invoke("runs", "list", "--client-id", "cli-t", "-o", "json")
    assert code == 0 and run_id in [r["runId"] for r in json.loads(out)["items"]]
    code, out, _ = served.invoke("runs", "list", "--all")
    assert code == 0 and run_id in out


def test_submit_watch_follows_the_run_and_exits_with_its_outcome(served: Served) -> None:
    """--watch shows per-node progress and logs; exit 0 succeeded, 1 failed."""
    code, out, err = served.invoke("submit", "--watch", str(EXAMPLES / "data-along-edges.json"))
    assert code == 0, err
    assert "succeeded" in out and out.splitlines()[0].count("-") == 4  # the run id first
    code, out, err = served.invoke("submit", "-w", str(EXAMPLES / "failing-branch.json"))
    assert code == 1, err
    assert "flaky failed: camera did not answer" in out
    assert "independent succeeded" in out  # the other branch goes on
    assert "E.DEMO.CAMERA" in out


def test_submit_watch_json_prints_the_final_summary(served: Served) -> None:
    """-o json with --watch: the final run summary as JSON on stdout."""
    code, out, _ = served.invoke("submit", "-w", "-o", "json",
                                 served.write("two.json", doc(node("a"), node("b"))))
    assert code == 0
    summary = json.loads(out)
    assert summary["status"] == "succeeded" and len(summary["nodes"]) == 2


def test_watch_exits_130_when_the_run_is_cancelled(served: Served) -> None:
    """A watcher of a run that gets cancelled exits 130; runs cancel prints the status."""
    long_run = served.write("long.json", doc(node("slow", "nodehost.std.delay", seconds=60)))
    code, out, _ = served.invoke("submit", long_run)
    run_id = out.strip()
    watcher = subprocess.Popen([sys.executable, "-m", "nodehost", "watch", run_id, "--config",
                                served.config], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = watcher.stdout.readline().decode()  # type: ignore[union-attr]
        assert "slow running" in line  # the watcher is following
        code, out, _ = served.invoke("runs", "cancel", run_id)
        assert code == 0 and out.strip() == f"run {run_id} cancelled"
        assert watcher.wait(timeout=10) == 130
        assert "cancelled" in watcher.stdout.read().decode()  # type: ignore[union-attr]
    finally:
        reap(watcher)
    code, _, _ = served.invoke("watch", run_id)
    assert code == 130  # already over: the summary at once


def test_api_errors_are_one_line_and_exit_2(served: Served) -> None:
    """Unknown run, cancelling a finished run, an invalid document: `error: ...`, exit 2."""
    code, _, err = served.invoke("runs", "show", "no-such-run")
    assert code == 2 and err.strip() == "error: run no-such-run not found"
    code, out, _ = served.invoke("submit", "-w", served.write("quick.json", doc()))
    run_id = out.splitlines()[0]
    code, _, err = served.invoke("runs", "cancel", run_id)
    assert code == 2 and "has already ended: succeeded" in err
    bad = doc(node("a"), node("a"))
    code, _, err = served.invoke("submit", served.write("bad.json", bad))
    assert code == 2
    assert err.startswith("error: the workflow is invalid")
    assert "$.workflow.nodes[1].id: duplicate node id 'a'" in err
    code, _, err = served.invoke("submit", served.write("garbage.json", "{"))
    assert code == 2


def test_an_unreachable_daemon_exits_3_naming_what_was_tried(tmp_path: Path) -> None:
    """No daemon: exit 3, and the socket or URL that was tried is named."""
    nowhere = f"unix:{tmp_path}/none.sock"
    result = CliRunner().invoke(main, ["runs", "list", "--url", nowhere])
    assert result.exit_code == 3
    assert f"cannot reach the daemon at {nowhere}" in result.stderr
    result = CliRunner().invoke(main, ["runs", "list", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 3 and "http://127.0.0.1:9" in result.stderr


def test_tokens_from_the_environment_or_the_client_token_file() -> None:
    """NODEHOST_TOKEN (or client.token_file) is sent; without it a required token is 401."""
    extra = f"""
        [auth]
        require_token_on_socket = true
        [[auth.tokens]]
        tenant = "a"
        token = "{TOKEN_A}"
    """
    with short_tmpdir() as d:
        for served in _serve(d, extra):
            code, _, err = served.invoke("runs", "list")
            assert code == 2 and "bearer token is required" in err
            code, _, err = served.invoke("runs", "list", env={"NODEHOST_TOKEN": TOKEN_A})
            assert code == 0, err
            Path(f"{d}/token").write_text(TOKEN_A)
            with open(served.config, "a") as f:
                f.write(f'\n[client]\ntoken_file = "{d}/token"\n')
            code, _, err = served.invoke("runs", "list", env={"NODEHOST_TOKEN": ""})
            assert code == 0, err


# --- watch_run: reconnecting ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("replay_buffer", [100_000, 20])
async def test_watch_reconnects_with_last_event_id_when_the_stream_drops(
        anyio_backend: str, replay_buffer: int) -> None:
    """A watcher that falls behind is dropped; it reconnects with Last-Event-ID and, with the
    events still buffered, feeds every event of the run exactly once; when they are gone, it
    resynchronises from the run summary (stream.reset). Either way it ends with the run."""
    with short_tmpdir() as d:
        config = daemon_config(d, toml=f"subscriber_buffer = 4\nreplay_buffer = {replay_buffer}")
        async with running_daemon(config) as r:
            bus = r.daemon.host.bus  # type: ignore[union-attr]
            target = Target("http://localhost", r.socket_path, f"unix:{r.socket_path}")
            fed: list[Envelope] = []
            async with Client(target) as client:
                ref = await client.submit(json.dumps(doc(
                    node("slow", "nodehost.std.delay", seconds=0.3),
                    node("chat", "t.http.chatty", lines=3000, size=50),
                    edges=[("slow", "chat")])).encode())
                summary = await watch_run(client, ref["runId"], fed.append,
                                          reconnect_timeout=5)
            assert summary["status"] == "succeeded"
            assert bus.dropped_subscribers >= 1  # the watcher was dropped at least once
            seen = [int(e.id) for e in fed if e.id != "0"]
            assert seen == sorted(set(seen))  # in order, never twice
            if replay_buffer > 10_000:
                with bus.subscribe(lambda e: e.scope.run_id == ref["runId"], after=0) as sub:
                    expected = [int(e.id) for e in sub.drain()]
                # from where the first summary left off to the final status: nothing missed
                first, last = expected.index(seen[0]), expected.index(seen[-1])
                assert seen == expected[first:last + 1]
                assert fed[-1].type == "run.status" and fed[-1].data.status == "succeeded"
            assert os.path.exists(r.socket_path)


def test_client_urls_resolve(tmp_path: Path) -> None:
    """--url takes unix:PATH, http:// and tcp://; the default is the server's listen."""
    from nodehost.client import resolve_target
    from nodehost.config import Config, ConfigError

    config = Config()
    assert resolve_target(config, "unix:/x/y.sock").uds == "/x/y.sock"
    assert resolve_target(config, "tcp://127.0.0.1:8765").base_url == "http://127.0.0.1:8765"
    assert resolve_target(config, "http://h:1/").base_url == "http://h:1"
    assert resolve_target(config).uds == config.server.address().path
    with pytest.raises(ConfigError):
        resolve_target(config, "ftp://x")
