"""`nodehost.std.http.request`: one HTTP request with httpx, checked and size-limited.

Only public addresses are reached, besides what `[sandbox] http_allow` opens: every hop is
checked where its socket is opened (destinations.py), and redirects are followed here, one at
a time, so that a refused hop is named as such.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, NoReturn

import anyio
import httpx
import msgspec
from msgspec import UNSET, Meta, UnsetType, field

from nodehost import Context, NodeError

from . import package
from .destinations import Allow, DestinationRefused, GuardedTransport
from .structs import MiB, Params, Result

__all__ = ["HttpParams", "HttpResult", "request"]

EXCERPT_CHARS = 500  # of the body, in the message of an unexpected status
MAX_REDIRECTS = 20  # httpx's default limit, kept now that the node follows redirects itself

QueryValue = str | int | float | bool


class HttpParams(Params, kw_only=True):
    """Send one HTTP request and return the response."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: Annotated[
        str, Meta(pattern=r"^[hH][tT][tT][pP][sS]?://[^\s/?#]+", description="http(s) URL.")
    ]
    headers: dict[str, str] = field(default_factory=dict)
    query: Annotated[
        dict[str, QueryValue | list[QueryValue]],
        Meta(description="Query parameters added to the URL; a list repeats the name."),
    ] = field(default_factory=dict)
    json: Annotated[Any, Meta(description="Request body, sent as JSON.")] | UnsetType = UNSET
    body: Annotated[str, Meta(description="Request body, sent as text.")] | UnsetType = UNSET
    timeout_seconds: Annotated[float, Meta(gt=0, le=86_400)] = 30.0
    expect_status: (
        Annotated[
            list[Annotated[int, Meta(ge=100, le=599)]],
            Meta(min_length=1, description="Accepted status codes; by default any 2xx."),
        ]
        | None
    ) = None
    max_response_bytes: Annotated[int, Meta(ge=0, le=1024 * MiB)] = 10 * MiB
    follow_redirects: bool = True

    def __post_init__(self) -> None:
        if self.json is not UNSET and self.body is not UNSET:
            raise ValueError("give either json or body, not both")


class HttpResult(Result, kw_only=True):
    status: int
    url: Annotated[str, Meta(description="The final URL, after redirects.")]
    headers: Annotated[dict[str, str], Meta(description="Lowercase names; repeats joined by ', '.")]
    json: Annotated[Any, Meta(description="The body, when it is JSON.")] | UnsetType = UNSET
    text: Annotated[str, Meta(description="The body, when it is not JSON.")] | UnsetType = UNSET
    elapsed_seconds: float


@package.node("nodehost.std.http.request")
async def request(ctx: Context, params: HttpParams) -> HttpResult:
    """Send an HTTP request and return the status, headers and JSON or text body."""
    where = f"{params.method} {params.url}"
    started = time.monotonic()
    content: Any = None
    headers = dict(params.headers)
    if params.json is not UNSET:
        content = msgspec.json.encode(params.json)
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
    elif params.body is not UNSET:
        content = params.body.encode()
    try:
        url = httpx.URL(params.url)
        if params.query:  # added to the URL's own query (httpx's params= would replace it)
            url = url.copy_merge_params(params.query)
    except httpx.InvalidURL as exc:
        raise NodeError("E.STD.HTTP.URL", f"invalid URL {params.url!r}: {exc}") from None
    timeout = httpx.Timeout(params.timeout_seconds)
    transport = GuardedTransport(Allow.parse(ctx.sandbox.http_allow))
    with anyio.move_on_after(params.timeout_seconds) as deadline:
        try:
            async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
                first = client.build_request(params.method, url, headers=headers, content=content)
                response = await _send(client, first, params.follow_redirects, where)
                try:
                    data = await _read_body(response, params.max_response_bytes, where)
                finally:
                    await response.aclose()
        except httpx.TimeoutException:
            _timed_out(where, params.timeout_seconds)
        except httpx.TransportError as exc:
            raise NodeError(
                "E.STD.HTTP.TRANSPORT",
                f"{where} failed: {type(exc).__name__}: {exc or 'no details'}",
                remediation="Check that the server is up and reachable; retrying may help.",
                details={"retryable": True, "url": params.url},
            ) from None
    if deadline.cancelled_caught:
        _timed_out(where, params.timeout_seconds)
    elapsed = round(time.monotonic() - started, 6)

    status = response.status_code
    expected = params.expect_status
    if (status not in expected) if expected else not 200 <= status < 300:
        excerpt = " ".join(_text(response, data)[:EXCERPT_CHARS].split())
        wanted = ", ".join(map(str, expected)) if expected else "2xx"
        raise NodeError(
            "E.STD.HTTP.STATUS",
            f"{where} returned {status} {response.reason_phrase}, expected {wanted}"
            + (f": {excerpt}" if excerpt else ""),
            remediation="Check the request (URL, method, headers, body) against the server.",
            details={
                "status": status,
                "url": str(response.url),
                "retryable": status in (408, 429) or status >= 500,
            },
        )
    result = HttpResult(
        status=status,
        url=str(response.url),
        headers={name: ", ".join(response.headers.get_list(name)) for name in response.headers},
        elapsed_seconds=elapsed,
    )
    if data and _is_json(response):
        try:
            result.json = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise NodeError(
                "E.STD.HTTP.BAD_JSON",
                f"{where}: the response says it is JSON but is not: {exc}",
            ) from None
    else:
        result.text = _text(response, data)
    return result


async def _send(
    client: httpx.AsyncClient, request: httpx.Request, follow: bool, where: str
) -> httpx.Response:
    """Send `request` and follow its redirects (if asked) one hop at a time, as httpx would
    (`next_request`: method, body and credentials handled its way), so that a hop to a
    refused destination is reported with the URL that led there."""
    for hop in range(MAX_REDIRECTS + 1):
        try:
            response = await client.send(request, stream=True)
        except DestinationRefused as refused:
            _refused(where, request.url, hop > 0, refused)
        if not follow or response.next_request is None:
            return response
        await response.aclose()
        request = response.next_request
    raise NodeError(
        "E.STD.HTTP.REDIRECTS",
        f"{where}: more than {MAX_REDIRECTS} redirects, the last to {request.url}",
        remediation="Check the URL for a redirect loop, or set followRedirects to false.",
        details={"url": str(request.url)},
    )


def _refused(where: str, url: httpx.URL, redirected: bool, refused: DestinationRefused) -> NoReturn:
    address = refused.address.split("%")[0]  # without an IPv6 scope, as http_allow takes it
    opens = (f'address ("{address}") or network' if refused.host == address
             else f'address ("{address}"), network or host name ("{refused.host}")')
    raise NodeError(
        "E.STD.HTTP.DESTINATION_REFUSED",
        f"{where}: " + (f"redirected to {url}, " if redirected else "")
        + f"refused: {refused}; [sandbox] http_allow opens such a destination by {opens}",
        remediation="Use a public address, or ask the operator to add the destination to "
        "http_allow in the [sandbox] section of the daemon's configuration.",
        retryable=False,
        details={
            "url": str(url),
            "host": refused.host,
            "address": refused.address,
        },
    )


async def _read_body(response: httpx.Response, limit: int, where: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        _too_large(where, f"declares {int(declared)} bytes", limit)
    body = bytearray()
    with anyio.CancelScope() as scope:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                # Stop at httpx's next read, so that its nested async generators unwind there;
                # leaving the loop here would leave them to the garbage collector (trio warns).
                scope.cancel()
    if len(body) > limit:
        _too_large(where, f"is more than {limit} bytes", limit)
    return bytes(body)


def _too_large(where: str, what: str, limit: int) -> NoReturn:
    raise NodeError(
        "E.STD.HTTP.TOO_LARGE",
        f"{where}: the response body {what}, over maxResponseBytes ({limit})",
        remediation="Raise maxResponseBytes, or ask the server for less (paging, filters).",
    )


def _timed_out(where: str, seconds: float) -> NoReturn:
    raise NodeError(
        "E.STD.HTTP.TIMEOUT",
        f"{where} did not complete within {seconds:g} s",
        remediation="Raise timeoutSeconds, or check why the server is slow; retrying may help.",
        details={"retryable": True},
    )


def _is_json(response: httpx.Response) -> bool:
    media = str(response.headers.get("content-type", "")).split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _text(response: httpx.Response, data: bytes) -> str:
    encoding = response.charset_encoding or "utf-8"
    try:
        return data.decode(encoding, errors="replace")
    except LookupError:  # a charset Python does not know
        return data.decode("utf-8", errors="replace")
