"""A client of the daemon's API, for the CLI (tier 6): httpx over the Unix socket or TCP.

Where: `--url` (`unix:PATH`, `http://HOST:PORT`, `tcp://HOST:PORT`), else $NODEHOST_URL,
else `client.url` in the config, else the daemon's own `server.listen` from the same config.
Token: $NODEHOST_TOKEN, else the file `client.token_file` names. Errors come back as
`ApiFailure` (the daemon answered with an error) or `Unreachable` (it did not answer).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import msgspec

from .config import Config, ConfigError, parse_listen
from .errors import rebuild
from .events import Envelope, NodeState, NodeStateEvent, RunStatusEvent, Scope

__all__ = [
    "ApiFailure",
    "Client",
    "ClientError",
    "SseEvent",
    "Target",
    "Unreachable",
    "count_nodes",
    "resolve_target",
    "resolve_token",
    "watch_run",
]

PREFIX = "/api/v1"
FINAL = frozenset({"succeeded", "failed", "cancelled"})


class ClientError(Exception):
    """Base of what the client raises."""


class ApiFailure(ClientError):
    """The daemon answered with an error body."""

    def __init__(self, status: int, error: str, message: str, request_id: str | None,
                 details: list[dict[str, Any]] | None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.request_id = request_id
        self.details = details or []

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.status, self.error, self.message, self.request_id,
                                       self.details), {}))


class Unreachable(ClientError):
    """No answer from the daemon at `target`."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"cannot reach the daemon at {target}: {reason} "
                         "(is `nodehost serve` running? see --url)")
        self.target = target
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (type(self), (self.target, self.reason), {}))


@dataclass(frozen=True, slots=True)
class Target:
    """Where the daemon is: a base URL, and the Unix socket to reach it through (if any)."""

    base_url: str
    uds: str | None
    label: str


def resolve_target(config: Config, url: str | None = None) -> Target:
    url = url or os.environ.get("NODEHOST_URL") or config.client.url
    if not url:
        listen = config.server.address()
        if listen.kind == "unix":
            assert listen.path is not None
            return Target("http://localhost", listen.path, f"unix:{listen.path}")
        url = str(listen)
    if url.startswith("unix:"):
        path = parse_listen(url, config.server.runtime_path()).path
        assert path is not None
        return Target("http://localhost", path, f"unix:{path}")
    if url.startswith("tcp://"):
        url = "http://" + url[len("tcp://"):]
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r}: expected unix:PATH, http://HOST:PORT or "
                          "tcp://HOST:PORT")
    return Target(url.rstrip("/"), None, url)


def resolve_token(config: Config) -> str | None:
    token = os.environ.get("NODEHOST_TOKEN")
    if token:
        return token.strip()
    path = config.client.token_file
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read client.token_file {path!r}: {exc.strerror}") \
                from None
    return None


@dataclass(frozen=True, slots=True)
class SseEvent:
    id: str | None
    event: str
    data: str


async def _parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[SseEvent]:
    event_id: str | None = None
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data or event:
                yield SseEvent(event_id, event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event_id = value
        elif field == "event":
            event = value
        elif field == "data":
            data.append(value)


class Client:
    """`async with Client(target, token) as client:` then one method per endpoint."""

    def __init__(self, target: Target, token: str | None = None, *, timeout: float = 30.0
                 ) -> None:
        self.target = target
        headers = {"User-Agent": "nodehost-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        transport = httpx.AsyncHTTPTransport(uds=target.uds) if target.uds else None
        self._http = httpx.AsyncClient(base_url=target.base_url, transport=transport,
                                       headers=headers, timeout=timeout)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, PREFIX + path, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
                httpx.ReadError) as exc:
            raise Unreachable(self.target.label, str(exc) or type(exc).__name__) from None
        if response.status_code >= 400:
            raise _failure(response)
        return response

    async def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """The answer's JSON object (every endpoint that answers JSON answers an object)."""
        body: dict[str, Any] = (await self._call(method, path, **kw)).json()
        return body

    async def submit(self, document: bytes, *, idempotency_key: str | None = None
                     ) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return await self._json("POST", "/runs", content=document, headers=headers)

    async def list_runs(self, *, limit: int = 50, cursor: str | None = None,
                        status: str | None = None, client_id: str | None = None
                        ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("cursor", cursor), ("status", status), ("clientId", client_id)):
            if value is not None:
                params[key] = value
        return await self._json("GET", "/runs", params=params)

    async def get_run(self, run_id: str) -> tuple[dict[str, Any], int]:
        """The run, and the event id it is current as of."""
        response = await self._call("GET", f"/runs/{_quote(run_id)}")
        return response.json(), int(response.headers.get("x-last-event-id", "0"))

    async def definition(self, run_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/runs/{_quote(run_id)}/definition")

    async def cancel(self, run_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/runs/{_quote(run_id)}/cancel")

    async def events(self, *, run_id: str | None = None, last_event_id: int | None = None
                     ) -> AsyncIterator[SseEvent]:
        """The event stream until it ends; Unreachable if it cannot be opened or breaks."""
        params = {"runId": run_id} if run_id else {}
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        try:
            async with self._http.stream("GET", PREFIX + "/events", params=params,
                                         headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _failure(response)
                async for event in _parse_sse(response.aiter_lines()):
                    yield event
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
                httpx.ReadError) as exc:
            raise Unreachable(self.target.label, str(exc) or type(exc).__name__) from None


def _quote(segment: str) -> str:
    return quote(segment, safe="")


def _failure(response: httpx.Response) -> ApiFailure:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return ApiFailure(response.status_code, "http_error",
                          f"HTTP {response.status_code}: {response.text[:200]}", None, None)
    return ApiFailure(response.status_code, str(body.get("error", "error")),
                      str(body.get("message", "")), body.get("requestId"), body.get("details"))


_decode_envelope = msgspec.json.Decoder(Envelope).decode


def count_nodes(workflow: dict[str, Any]) -> int:
    """Nodes at every depth of a workflow document (a subgraph counts once per container)."""
    subgraphs = {s.get("id"): s.get("definition") or {} for s in workflow.get("subgraphs") or []
                 if isinstance(s, dict)}

    def count(wf: dict[str, Any], depth: int) -> int:
        total = 0
        for node in wf.get("nodes") or []:
            total += 1
            config = node.get("containerConfig") or {}
            sub = subgraphs.get(config.get("subgraphId"))
            if sub is not None and depth < 16:
                total += count(sub, depth + 1)
        return total

    return count(workflow, 0)


async def watch_run(
    client: Client,
    run_id: str,
    feed: Callable[[Envelope], None],
    *,
    reconnect_timeout: float = 30.0,
) -> dict[str, Any]:
    """Feed a run's envelopes to `feed` until it ends; return its final summary.

    The stream is opened at the event id the run summary is current as of, so nothing is
    missed; if it drops, it is reopened with Last-Event-ID for up to `reconnect_timeout`
    seconds of failed attempts. A `stream.reset` (events no longer buffered) resynchronises
    from the run summary.
    """
    summary, position = await client.get_run(run_id)
    _seed(summary, feed)
    last = position
    failing_since: float | None = None
    delay = 0.1
    while summary.get("status") not in FINAL:
        try:
            async for event in client.events(run_id=run_id, last_event_id=last):
                failing_since, delay = None, 0.1
                if event.id and event.id.isdigit():
                    last = int(event.id)
                if event.event == "stream.reset":
                    summary, _ = await client.get_run(run_id)
                    _seed(summary, feed)
                    if summary.get("status") in FINAL:
                        break
                    continue
                try:
                    envelope = _decode_envelope(event.data)
                except msgspec.ValidationError:
                    continue  # an event type of a newer daemon: nothing this client shows
                feed(envelope)
                data = envelope.data
                if isinstance(data, RunStatusEvent) and data.status in FINAL:
                    summary, _ = await client.get_run(run_id)
                    break
        except Unreachable:
            now = anyio.current_time()
            failing_since = failing_since if failing_since is not None else now
            if now - failing_since >= reconnect_timeout:
                raise
        if summary.get("status") in FINAL:
            break
        # The stream ended before the run's final status (the daemon restarting, or this
        # client fell behind): back off, then reconnect with Last-Event-ID. What came after
        # `last` is replayed, even if the run has ended meanwhile, or a stream.reset says it
        # is no longer buffered.
        await anyio.sleep(delay)
        delay = min(delay * 2, 2.0)
    return summary


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _seed(summary: dict[str, Any], feed: Callable[[Envelope], None]) -> None:
    """Show the state a run summary holds, as node.state envelopes."""
    run_id = str(summary.get("runId"))
    scope = Scope(tenant="-", run_id=run_id)
    for node in summary.get("nodes") or []:
        state = {"stage": node.get("status"), "lastUpdatedAt": _EPOCH,
                 **(node.get("state") or {})}
        data = NodeStateEvent(
            run_id=run_id, node_id=node["nodeId"], task_id=node["taskId"],
            status=node["status"], attempt=(node.get("metadata") or {}).get("attempt", 0),
            state=msgspec.convert(state, NodeState, strict=False),
        )
        feed(Envelope(version="v1", id="0", type="node.state", occurred_at=_EPOCH, scope=scope,
                      data=data))
