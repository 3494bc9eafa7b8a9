"""GET /api/v1/events against a real uvicorn on a Unix socket (asyncio: uvicorn's only loop).

In-process HTTP clients hang on endless streams (httpx#2186), so each test runs a whole
`Daemon` in its event loop, talks to it over the socket, and stops it.
"""

from __future__ import annotations

import socket

import anyio
import pytest

from http_support import (
    TOKEN_A,
    TOKEN_B,
    SseReader,
    daemon_config,
    doc,
    gated,
    last_of_run,
    node,
    release,
    run_done,
    running_daemon,
    short_tmpdir,
    wait_for,
)

pytestmark = pytest.mark.anyio
EVENTS = "/api/v1/events"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_frames_carry_id_type_and_the_envelope_and_the_stream_headers() -> None:
    """`id: <seq>`, `event: <type>`, `data: <envelope>`; no-store, no proxy buffering."""
    with short_tmpdir() as d:
        async with running_daemon(daemon_config(d)) as r, r.client() as c, c.stream(
            "GET", EVENTS, params={"clientSessionId": "s1"}, headers={"X-Request-ID": "sse-1"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers["x-request-id"] == "sse-1"
            reader = SseReader(response)
            ref = (await c.post("/api/v1/runs", json=doc(node("a"), client_id="s1"))).json()
            frames = await reader.until(run_done(ref["runId"]))
            ids = [int(f["id"]) for f in frames]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            for frame in frames:
                envelope = frame["data"]
                assert envelope["id"] == frame["id"] and envelope["type"] == frame["event"]
                assert envelope["version"] == "v1" and envelope["occurredAt"]
                assert envelope["scope"] == {"tenant": "default", "runId": ref["runId"],
                                             "clientSessionId": "s1"}
                assert "replayed" not in envelope
            types = {f["event"] for f in frames}
            assert {"run.status", "run.snapshot", "node.state", "node.result.snapshot"} <= types
            assert r.api.sse_open == 1


async def test_streams_filter_by_client_session_and_by_run() -> None:
    """clientSessionId and runId select the events; an unknown runId is 404."""
    with short_tmpdir() as d:
        async with running_daemon(daemon_config(d)) as r, r.client() as c:
            first_doc, gate = gated(client_id="s1")
            first = (await c.post("/api/v1/runs", json=first_doc)).json()
            async with c.stream("GET", EVENTS, params={"clientSessionId": "s2"}) as by_session, \
                    c.stream("GET", EVENTS, params={"runId": first["runId"]}) as by_run:
                other = (await c.post("/api/v1/runs", json=doc(client_id="s2"))).json()
                release(gate)
                session_frames = await SseReader(by_session).until(run_done(other["runId"]))
                run_frames = await SseReader(by_run).until(run_done(first["runId"]))
            assert {f["data"]["scope"]["clientSessionId"] for f in session_frames} == {"s2"}
            assert {f["data"]["scope"]["runId"] for f in run_frames} == {first["runId"]}
            missing = await c.get(EVENTS, params={"runId": "no-such-run"})
            assert missing.status_code == 404 and missing.json()["error"] == "not_found"
            bad = await c.get(EVENTS, headers={"Last-Event-ID": "seven"})
            assert bad.status_code == 400 and bad.json()["details"][0]["path"] == "Last-Event-ID"


async def test_last_event_id_replays_exactly_what_was_missed_then_goes_live() -> None:
    """With Last-Event-ID (header or lastEventId), the events after it are replayed
    (`replayed: true`) in order, then live events follow."""
    with short_tmpdir() as d:
        async with running_daemon(daemon_config(d)) as r, r.client() as c:
            async with c.stream("GET", EVENTS, params={"clientSessionId": "s1"}) as response:
                ref = (await c.post("/api/v1/runs", json=doc(
                    node("a"), node("b"), edges=[("a", "b")], client_id="s1"))).json()
                everything = await SseReader(response).until(last_of_run(ref["runId"]))
            cut = len(everything) // 3
            for how in ("header", "query"):
                missed = everything[cut + 1:]  # the second time, the first live run's too
                last = everything[cut]["id"]
                params = {"clientSessionId": "s1"}
                headers = {}
                if how == "header":
                    headers["Last-Event-ID"] = last
                else:
                    params["lastEventId"] = last
                async with c.stream("GET", EVENTS, params=params, headers=headers) as response:
                    reader = SseReader(response)
                    replayed = [await reader.event() for _ in missed]
                    assert [f["id"] for f in replayed] == [f["id"] for f in missed]
                    assert all(f["data"]["replayed"] is True for f in replayed)
                    assert [f["data"]["data"] for f in replayed] == \
                        [f["data"]["data"] for f in missed]
                    live = (await c.post("/api/v1/runs", json=doc(client_id="s1"))).json()
                    fresh = await reader.until(last_of_run(live["runId"]))
                    assert int(fresh[0]["id"]) > int(missed[-1]["id"])
                    assert not any(f["data"].get("replayed") for f in fresh)
                    everything += fresh


async def test_a_client_that_reconnects_with_last_event_id_misses_nothing() -> None:
    """Disconnect mid-run, reconnect with the last id seen: together, exactly the events a
    client that stayed connected saw."""
    with short_tmpdir() as d:
        async with running_daemon(daemon_config(d)) as r, r.client() as c:
            document, gate = gated(client_id="s1")
            async with c.stream("GET", EVENTS, params={"clientSessionId": "s1"}) as reference:
                async with c.stream("GET", EVENTS, params={"clientSessionId": "s1"}) as early:
                    ref = (await c.post("/api/v1/runs", json=document)).json()
                    reader = SseReader(early)
                    first = await reader.until(lambda f: f["event"] == "node.state")
                release(gate)  # the run goes on while nobody else listens
                everything = await SseReader(reference).until(last_of_run(ref["runId"]))
            async with c.stream("GET", EVENTS, params={"clientSessionId": "s1"},
                                headers={"Last-Event-ID": first[-1]["id"]}) as again:
                rest = await SseReader(again).until(last_of_run(ref["runId"]))
            assert [f["id"] for f in first + rest] == [f["id"] for f in everything]


async def test_an_id_older_than_the_buffer_starts_with_stream_reset() -> None:
    """Replay cannot reach events that left the buffer: the stream says so with a
    `stream.reset` event (its id is where the replay resumes), then replays the rest."""
    with short_tmpdir() as d:
        config = daemon_config(d, toml="replay_buffer = 10")
        async with running_daemon(config) as r, r.client() as c:
            ref = (await c.post("/api/v1/runs", json=doc(
                node("chat", "t.http.chatty", lines=30), client_id="s1"))).json()
            await r.daemon.host.scheduler.wait_run(ref["runId"])  # type: ignore[union-attr]
            await r.daemon.journal.wait_durable()  # type: ignore[union-attr]
            current = r.daemon.host.engine.event_seq  # type: ignore[union-attr]
            assert r.daemon.host.last_event_id == current  # type: ignore[union-attr]
            async with c.stream("GET", EVENTS, params={"clientSessionId": "s1"},
                                headers={"Last-Event-ID": "1"}) as response:
                reader = SseReader(response)
                reset = await reader.event()
                assert reset["event"] == "stream.reset"
                assert reset["id"] == str(current - 10)
                assert reset["data"]["data"]["lastEventId"] == "1"
                replayed = [await reader.event() for _ in range(10)]
                assert [int(f["id"]) for f in replayed] == list(range(current - 9, current + 1))
            async with c.stream("GET", EVENTS, headers={"Last-Event-ID": "999999"}) as response:
                reset = await SseReader(response).event()
                assert reset["event"] == "stream.reset" and reset["id"] == str(current)
            in_buffer = str(current - 5)
            async with c.stream("GET", EVENTS, headers={"Last-Event-ID": in_buffer}) as response:
                assert (await SseReader(response).event())["id"] == str(current - 4)


async def test_idle_streams_get_keepalive_comments() -> None:
    """A `: keepalive` comment every heartbeat interval (0.2 s here)."""
    with short_tmpdir() as d:
        async with running_daemon(daemon_config(d)) as r, r.client() as c, c.stream(
                "GET", EVENTS, params={"clientSessionId": "nobody"}) as response:
            reader = SseReader(response)
            started = anyio.current_time()
            for _ in range(3):
                assert await reader.next(timeout=2) == {"comment": "keepalive"}
            assert anyio.current_time() - started < 2


def _raw_stream(path: str) -> socket.socket:
    """A client that sends the request and then reads nothing (with a tiny receive buffer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(path)  # a Unix socket connects at once (the listen backlog)
    sock.sendall(f"GET {EVENTS} HTTP/1.1\r\nHost: localhost\r\n"
                 "Connection: close\r\n\r\n".encode())
    sock.setblocking(False)
    return sock


async def _read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    data = bytearray()
    with anyio.fail_after(timeout):
        while True:
            await anyio.wait_readable(sock)
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(data)
            data += chunk


async def test_a_client_that_falls_behind_is_dropped_and_never_slows_the_daemon() -> None:
    """A subscriber that stops reading is dropped by the bus (bounded stream); runs and
    requests go on at full speed; when it reads again it finds `: dropped` and the end."""
    with short_tmpdir() as d:
        config = daemon_config(d, toml="subscriber_buffer = 8\nwrite_timeout_seconds = 30")
        async with running_daemon(config) as r, r.client() as c:
            sock = _raw_stream(r.socket_path)
            try:
                await wait_for(lambda: r.api.sse_open == 1)
                started = anyio.current_time()
                ref = (await c.post("/api/v1/runs", json=doc(
                    node("chat", "t.http.chatty", lines=4000, size=400)))).json()
                bus = r.daemon.host.bus  # type: ignore[union-attr]
                await wait_for(lambda: bus.dropped_subscribers == 1)
                health = await c.get("/api/v1/healthz")
                assert health.status_code == 200
                await r.daemon.host.scheduler.wait_run(ref["runId"])  # type: ignore[union-attr]
                assert anyio.current_time() - started < 10
                data = await _read_all(sock)
            finally:
                sock.close()
            assert b": dropped" in data
            assert data.rstrip().endswith(b"0")  # the last chunk: the response was completed
            await wait_for(lambda: r.api.sse_open == 0)
            metrics = (await c.get("/api/v1/metrics")).text
            assert "nodehost_sse_dropped_subscribers_total 1.0" in metrics


async def test_a_client_that_reads_nothing_is_cut_off_after_the_write_timeout() -> None:
    """When a write has waited longer than write_timeout_seconds the stream is abandoned."""
    with short_tmpdir() as d:
        config = daemon_config(d, toml="subscriber_buffer = 100000\n"
                                      "write_timeout_seconds = 0.3")
        async with running_daemon(config) as r, r.client() as c:
            sock = _raw_stream(r.socket_path)
            try:
                await wait_for(lambda: r.api.sse_open == 1)
                ref = (await c.post("/api/v1/runs", json=doc(
                    node("chat", "t.http.chatty", lines=4000, size=400)))).json()
                await r.daemon.host.scheduler.wait_run(ref["runId"])  # type: ignore[union-attr]
                await wait_for(lambda: r.api.sse_stuck == 1 and r.api.sse_open == 0)
                assert r.daemon.host.bus.statistics()["subscribers"] == 0  # type: ignore
            finally:
                sock.close()


async def test_stopping_ends_open_streams_promptly() -> None:
    """stop(): open event streams end cleanly and the daemon is down within a second or two,
    even with a run still running (drain_seconds = 0)."""
    with short_tmpdir() as d:
        async with running_daemon(daemon_config(d)) as r, r.client() as c:
            document, gate = gated()
            await c.post("/api/v1/runs", json=document)
            async with c.stream("GET", EVENTS) as one, c.stream("GET", EVENTS) as two:
                await wait_for(lambda: r.api.sse_open == 2)
                started = anyio.current_time()
                r.daemon.stop()
                for response in (one, two):
                    reader = SseReader(response)
                    while "end" not in (frame := await reader.next(timeout=3)):
                        assert "comment" in frame or frame.get("event")
            elapsed = anyio.current_time() - started
            assert elapsed < 2
            release(gate)


async def test_a_graceful_stop_lets_running_runs_finish_and_refuses_new_ones() -> None:
    """While draining: POST /runs is 503, streams go on; the run ends, then everything stops."""
    with short_tmpdir() as d:
        config = daemon_config(d, server={"drain_seconds": 10})
        async with running_daemon(config) as r, r.client() as c:
            document, gate = gated(client_id="s1")
            ref = (await c.post("/api/v1/runs", json=document)).json()
            async with c.stream("GET", EVENTS, params={"clientSessionId": "s1"}) as response:
                reader = SseReader(response)
                r.daemon.stop()
                await wait_for(lambda: not r.api.admitting)
                refused = await c.post("/api/v1/runs", json=doc())
                assert refused.status_code == 503
                assert (await c.get("/api/v1/healthz")).status_code == 503
                release(gate)
                frames = await reader.until(run_done(ref["runId"]))
                assert frames[-1]["data"]["data"]["status"] == "succeeded"
                while "end" not in await reader.next(timeout=5):
                    pass


async def test_events_are_tenant_isolated_including_replay() -> None:
    """Token B never sees A's events, live or replayed; B asking for A's run is 404."""
    toml = f"""
[auth]
[[auth.tokens]]
tenant = "a"
token = "{TOKEN_A}"
[[auth.tokens]]
tenant = "b"
token = "{TOKEN_B}"
"""
    with short_tmpdir() as d:
        async with running_daemon(daemon_config(d, toml=toml)) as r, \
                r.client(TOKEN_A) as a, r.client(TOKEN_B) as b, r.client() as anonymous:
            async with b.stream("GET", EVENTS, params={"clientSessionId": "shared"}) as live:
                run_a = (await a.post("/api/v1/runs", json=doc(client_id="shared"))).json()
                run_b = (await b.post("/api/v1/runs", json=doc(client_id="shared"))).json()
                seen = await SseReader(live).until(run_done(run_b["runId"]))
            assert {f["data"]["scope"]["tenant"] for f in seen} == {"b"}
            assert {f["data"]["scope"]["runId"] for f in seen} == {run_b["runId"]}
            await r.daemon.host.scheduler.wait_run(run_a["runId"])  # type: ignore[union-attr]
            async with b.stream("GET", EVENTS, headers={"Last-Event-ID": "0"}) as replay:
                reader = SseReader(replay)
                frames = await reader.until(last_of_run(run_b["runId"]))
                assert {f["data"]["scope"]["tenant"] for f in frames} == {"b"}
                assert await reader.next(timeout=2) == {"comment": "keepalive"}
            async with anonymous.stream("GET", EVENTS, headers={"Last-Event-ID": "0"}) as other:
                assert await SseReader(other).next(timeout=2) == {"comment": "keepalive"}
            cross = await b.get(EVENTS, params={"runId": run_a["runId"]})
            assert cross.status_code == 404
