"""The HTTP API: a Starlette app over a `DaemonApi` (tier 5; the only module importing starlette).

`create_app(api, authenticator=...)` returns an ASGI app; it runs on any anyio backend, so the
tests drive it in-process on asyncio and trio, and `service` serves it with uvicorn. Every
answer carries `X-Request-ID` (the caller's, if sane, else a new one); every error is JSON
`{error, message, requestId, details?}`, never a traceback. See `openapi` for the contract.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import ApiError, DaemonApi, ErrorBody, EventStream, IssueOut
from .auth import Authenticator, AuthFailed, Principal
from .events import sse_frame
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .openapi import PREFIX, openapi_document

__all__ = ["create_app", "refusing"]

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_EVENT_ID = re.compile(r"^[0-9]{1,18}$")
_KEEPALIVE = b": keepalive\n\n"
_DROPPED = b": dropped: this client fell behind; reconnect with Last-Event-ID\n\n"
_STATUS_ERRORS = {
    400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 503: "unavailable",
}



def _request_id(scope: Scope) -> str:
    return str(scope.get("state", {}).get("request_id", "-"))


def _error_body(status: int, error: str, message: str, request_id: str,
                details: list[IssueOut] | None = None) -> bytes:
    return _encode(ErrorBody(error=error, message=message, request_id=request_id,
                             details=details))


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(value), status, headers=headers, media_type="application/json")


# --- the event stream ---------------------------------------------------------------------------


class _EventStreamResponse(Response):
    """An endless SSE response over one bus subscription.

    It ends when the daemon shuts down, when the client disconnects, when the bus dropped
    the subscription (the client fell behind), or when one write has waited longer than
    the write timeout (the client stopped reading). It never blocks anything but itself.
    """

    media_type = "text/event-stream"

    def __init__(self, api: DaemonApi, stream: EventStream, request_id: str) -> None:
        self.api = api
        self.stream = stream
        self.status_code = 200
        self.background = None
        self.init_headers({
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            "X-Request-ID": request_id,
        })

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = self.api
        api.sse_open += 1
        self._disconnected = False
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.raw_headers})
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._until_disconnect, receive, tg.cancel_scope)
                tg.start_soon(self._until_closing, tg.cancel_scope)
                clean = False  # stays False if the stream is cancelled (closing, disconnect)
                clean = await self._pump(send)  # False: stuck or gone, do not complete
                tg.cancel_scope.cancel()
            if (clean or api.closing) and not self._disconnected:
                with anyio.move_on_after(1, shield=True):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away while the headers were written
        finally:
            api.sse_open -= 1
            api.close_events(self.stream)

    async def _until_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._disconnected = True
        scope.cancel()

    async def _until_closing(self, scope: anyio.CancelScope) -> None:
        await self.api.wait_closing()
        scope.cancel()

    async def _pump(self, send: Send) -> bool:
        """Stream until told to stop; False if the response cannot be completed cleanly."""
        settings = self.api.events
        subscription = self.stream.subscription
        reset = self.stream.reset
        chunk = sse_frame(reset) if reset is not None else b""
        while True:
            last = False
            if not chunk:
                chunk = _KEEPALIVE
                with anyio.move_on_after(settings.heartbeat_seconds):
                    try:
                        first = await subscription.receive.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError):
                        chunk, last = (_DROPPED if subscription.dropped else b""), True
                    else:
                        chunk = b"".join(map(sse_frame, [first, *subscription.drain()]))
            if subscription.dropped and not last:
                chunk, last = chunk + _DROPPED, True
            if chunk:
                try:
                    with anyio.move_on_after(settings.write_timeout_seconds) as timer:
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                except OSError:
                    return False  # the client went away
                if timer.cancelled_caught:
                    self.api.sse_stuck += 1
                    log.warning("event stream dropped: the client read nothing for %g s",
                                settings.write_timeout_seconds)
                    return False
            if last:
                return True
            chunk = b""


# --- handlers -----------------------------------------------------------------------------------


class _Handlers:
    def __init__(self, api: DaemonApi, authenticator: Authenticator, metrics: Metrics) -> None:
        self.api = api
        self.auth = authenticator
        self.metrics = metrics
        self._openapi: bytes | None = None

    def principal(self, request: Request) -> Principal:
        try:
            return self.auth.authenticate(request.headers.get("authorization"))
        except AuthFailed as exc:
            raise ApiError(401, "unauthorized", str(exc),
                           headers={"WWW-Authenticate": 'Bearer realm="nodehost"'}) from None

    async def runs(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.start_run(request)
        return await self.list_runs(request)

    async def start_run(self, request: Request) -> Response:
        principal = self.principal(request)
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise ApiError(415, "unsupported_media_type",
                           "the request body must be JSON (Content-Type: application/json)")
        body = await _read_body(request, self.api.settings.max_body_bytes)
        ref, replayed = await self.api.start_run(principal, body,
                                                 request.headers.get("idempotency-key"))
        headers = {"Location": f"{PREFIX}/runs/{ref.run_id}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return _json(ref, 202, headers)

    async def list_runs(self, request: Request) -> Response:
        principal = self.principal(request)
        query = request.query_params
        raw_limit = query.get("limit", "50")
        if not raw_limit.isascii() or not raw_limit.isdigit() or len(raw_limit) > 6:
            raise ApiError(400, "invalid_request", "limit must be an integer from 1 to 200",
                           [IssueOut("limit", "must be an integer from 1 to 200")])
        await self.api.settled()
        page = self.api.list_runs(principal, limit=int(raw_limit), cursor=query.get("cursor"),
                                  status=query.get("status"), client_id=query.get("clientId"))
        return _json(page)

    async def get_run(self, request: Request) -> Response:
        await self.api.settled()
        summary, position = self.api.get_run(self.principal(request),
                                             request.path_params["run_id"])
        return _json(summary, headers={"X-Last-Event-ID": str(position)})

    async def definition(self, request: Request) -> Response:
        await self.api.settled()
        workflow, etag = self.api.definition(self.principal(request),
                                             request.path_params["run_id"])
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return _json(workflow, headers=headers)

    async def cancel_run(self, request: Request) -> Response:
        ref = await self.api.cancel_run(self.principal(request), request.path_params["run_id"])
        return _json(ref, 202)

    async def events(self, request: Request) -> Response:
        principal = self.principal(request)
        query = request.query_params
        raw = request.headers.get("last-event-id")
        where = "Last-Event-ID"
        if raw is None:
            raw, where = query.get("lastEventId"), "lastEventId"
        last_event_id = None
        if raw is not None and raw.strip() != "":
            raw = raw.strip()
            if not _EVENT_ID.match(raw):
                raise ApiError(400, "invalid_request", f"{where} must be an event id",
                               [IssueOut(where, "must be a non-negative integer event id")])
            last_event_id = int(raw)
        stream = self.api.open_events(principal, run_id=query.get("runId"),
                                      client_session_id=query.get("clientSessionId"),
                                      last_event_id=last_event_id)
        if request.method == "HEAD":  # the headers only: no endless empty stream
            self.api.close_events(stream)
            return Response(status_code=200, media_type="text/event-stream",
                            headers={"Cache-Control": "no-store"})
        return _EventStreamResponse(self.api, stream, _request_id(request.scope))

    async def packages(self, request: Request) -> Response:
        self.principal(request)
        return Response(self.api.packages(), media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        health = self.api.health()
        return _json(health, 200 if health.status == "ok" else 503)

    async def metrics_text(self, request: Request) -> Response:
        self.principal(request)
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = _encode(openapi_document())
        return Response(self._openapi, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) a Content-Length over the limit and a body that grows over it."""
    too_large = ApiError(413, "payload_too_large",
                         f"the request body is larger than the limit of {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    return b"".join(chunks)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = [c.strip() for c in header.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


# --- errors and the outer frame ------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    body = _error_body(exc.status, exc.error, exc.message, _request_id(request.scope),
                       exc.details)
    return Response(body, exc.status, headers=exc.headers, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = {404: f"no such endpoint: {request.url.path}",
               405: f"method {request.method} is not allowed here"}.get(status, str(exc.detail))
    body = _error_body(status, _STATUS_ERRORS.get(status, "error"), message,
                       _request_id(request.scope))
    return Response(body, status, headers=dict(exc.headers or {}),
                    media_type="application/json")


async def _server_error(request: Request, exc: Exception) -> Response:
    request_id = _request_id(request.scope)
    log.error("request %s %s %s failed", request_id, request.method, request.url.path,
              exc_info=exc)
    body = _error_body(500, "internal", f"internal error; the daemon log has the details "
                                        f"under request id {request_id}", request_id)
    return Response(body, 500, media_type="application/json")


def _host_of(header: str) -> str:
    host = header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


# the scope extension under which a server says why the peer of a connection is refused
_REFUSED = "nodehost.refused"


def refusing(app: ASGIApp, message: str) -> ASGIApp:
    """`app` (from create_app) answering every request with 403 and `message`: what the
    server hands a connection whose peer it will not serve (one of the daemon's own
    processes), so that the answer is an ErrorBody with a request id, and is counted."""
    async def refused(scope: Scope, receive: Receive, send: Send) -> None:
        extensions = {**(scope.get("extensions") or {}), _REFUSED: message}
        await app({**scope, "extensions": extensions}, receive, send)

    return refused


class _Frame:
    """Outermost layer: request id, refused peers, Host check, metrics, and JSON for
    escaped errors."""

    def __init__(self, app: ASGIApp, metrics: Metrics, allowed_hosts: Sequence[str] | None
                 ) -> None:
        self.app = app
        self.metrics = metrics
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        rid = request_id.encode()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message = {**message, "headers": [
                    *[(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"],
                    (b"x-request-id", rid)]}
            await send(message)

        t0 = time.perf_counter()
        refused = (scope.get("extensions") or {}).get(_REFUSED)
        try:
            if refused is not None:
                await _send_error(send_with_id, 403, "forbidden", refused, request_id)
            elif self.allowed is not None and _host_of(
                    headers.get(b"host", b"").decode("latin-1")) not in self.allowed:
                await _send_error(send_with_id, 403, "forbidden",
                                  "the Host header is not one this daemon answers to",
                                  request_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:  # Starlette answered 500 already, or could not
            if not started:
                log.error("request %s failed", request_id, exc_info=exc)
                await _send_error(send_with_id, 500, "internal",
                                  f"internal error; see the daemon log (request {request_id})",
                                  request_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"
            streaming = template == f"{PREFIX}/events"
            self.metrics.observe(scope.get("method", "-"), template, status,
                                 None if streaming else time.perf_counter() - t0)


async def _send_error(send: Send, status: int, error: str, message: str, request_id: str
                      ) -> None:
    body = _error_body(status, error, message, request_id)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(
    api: DaemonApi,
    *,
    authenticator: Authenticator | None = None,
    metrics: Metrics | None = None,
    allowed_hosts: Sequence[str] | None = None,
    lifespan: Callable[[Any], AbstractAsyncContextManager[None]] | None = None,
) -> ASGIApp:
    """The API as an ASGI app. `allowed_hosts` (for TCP listeners) refuses other Host headers
    with 403; `authenticator` defaults to no tokens (everyone is the `default` tenant)."""
    handlers = _Handlers(api, authenticator or Authenticator(), metrics or Metrics(api))

    def route(path: str, endpoint: Callable[[Request], Any], *methods: str) -> Route:
        return Route(PREFIX + path, endpoint, methods=list(methods))

    routes = [
        route("/runs", handlers.runs, "GET", "POST"),
        route("/runs/{run_id}", handlers.get_run, "GET"),
        route("/runs/{run_id}/definition", handlers.definition, "GET"),
        route("/runs/{run_id}/cancel", handlers.cancel_run, "POST"),
        route("/events", handlers.events, "GET"),
        route("/packages", handlers.packages, "GET"),
        route("/healthz", handlers.healthz, "GET"),
        route("/metrics", handlers.metrics_text, "GET"),
        route("/openapi.json", handlers.openapi, "GET"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    return _Frame(app, handlers.metrics, allowed_hosts)
