"""nodehost.std.http.request against a real HTTP server on the loopback interface."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest
from nodehost_std import package

from nodehost import NodeError
from std_support import acall

SPEC = package.nodes["nodehost.std.http.request"]


async def request(params: dict[str, Any]) -> dict[str, Any]:
    return await acall(SPEC, params)


class Handler(BaseHTTPRequestHandler):
    """Routes by path; `server.release` lets the /slow handler finish at teardown."""

    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.route()

    def do_POST(self) -> None:
        self.route()

    def do_PUT(self) -> None:
        self.route()

    def do_DELETE(self) -> None:
        self.route()

    def do_HEAD(self) -> None:
        self.send(200, "application/json", b"", length=17)

    def route(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/echo":
            self.send(
                200,
                "application/json",
                json.dumps(
                    {
                        "method": self.command,
                        "query": parse_qs(url.query),
                        "contentType": self.headers.get("Content-Type"),
                        "token": self.headers.get("X-Token"),
                        "body": body.decode(),
                    }
                ).encode(),
            )
        elif url.path == "/text":
            self.send(200, "text/plain; charset=latin-1", "café".encode("latin-1"))
        elif url.path == "/problem+json":
            self.send(200, "application/problem+json", b'{"title": "x"}')
        elif url.path == "/missing":
            self.send(404, "text/plain", b"no such thing\nhere")
        elif url.path == "/created":
            self.send(201, "application/json", b'{"id": 7}')
        elif url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/created")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/big":
            self.send(200, "text/plain", b"x" * 2000)
        elif url.path == "/big-unannounced":  # no Content-Length: read until the server closes
            self.send(200, "text/plain", b"x" * 2000, length=None)
        elif url.path == "/bad-json":
            self.send(200, "application/json", b'{"open": ')
        elif url.path == "/slow":
            self.server.release.wait(30)
            self.send(200, "text/plain", b"late")
        else:
            self.send(500, "text/plain", b"unknown route " + url.path.encode())

    def send(self, status: int, content_type: str, body: bytes, length: int | None = -1) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        if length is not None:
            self.send_header("Content-Length", str(len(body) if length == -1 else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    release: threading.Event


@pytest.fixture
def base_url() -> Iterator[str]:
    server = Server(("127.0.0.1", 0), Handler)
    server.release = threading.Event()
    # A short poll interval keeps shutdown() quick.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


# --- requests and responses ---------------------------------------------------------------


@pytest.mark.anyio
async def test_get_with_query_returns_parsed_json(base_url: str) -> None:
    result = await request(
        {
            "url": f"{base_url}/echo",
            "query": {"q": "edge box", "tag": ["a", "b"], "n": 3},
            "headers": {"X-Token": "secret"},
        }
    )
    assert result["status"] == 200
    assert result["json"]["method"] == "GET"
    assert result["json"]["query"] == {"q": ["edge box"], "tag": ["a", "b"], "n": ["3"]}
    assert result["json"]["token"] == "secret"
    assert "text" not in result
    assert result["headers"]["content-type"] == "application/json"
    assert result["headers"]["set-cookie"] == "a=1, b=2"
    assert result["elapsedSeconds"] >= 0
    assert result["url"].startswith(f"{base_url}/echo?")


@pytest.mark.anyio
async def test_query_is_added_to_the_query_already_in_the_url(base_url: str) -> None:
    kept = await request({"url": f"{base_url}/echo?page=2"})
    assert kept["json"]["query"] == {"page": ["2"]}
    merged = await request({"url": f"{base_url}/echo?page=2", "query": {"size": 50}})
    assert merged["json"]["query"] == {"page": ["2"], "size": ["50"]}


@pytest.mark.anyio
async def test_post_json_is_encoded_with_its_content_type(base_url: str) -> None:
    result = await request(
        {"method": "POST", "url": f"{base_url}/echo", "json": {"reading": 21.5, "ok": True}}
    )
    assert result["json"]["method"] == "POST"
    assert result["json"]["contentType"] == "application/json"
    assert msgspec.json.decode(result["json"]["body"]) == {"reading": 21.5, "ok": True}


@pytest.mark.anyio
async def test_put_text_body_with_headers(base_url: str) -> None:
    result = await request(
        {
            "method": "PUT",
            "url": f"{base_url}/echo",
            "body": "a,b\n1,2\n",
            "headers": {"Content-Type": "text/csv"},
        }
    )
    assert result["json"]["method"] == "PUT"
    assert result["json"]["contentType"] == "text/csv"
    assert result["json"]["body"] == "a,b\n1,2\n"


@pytest.mark.anyio
async def test_text_is_decoded_with_the_declared_charset(base_url: str) -> None:
    result = await request({"url": f"{base_url}/text"})
    assert result["text"] == "café"
    assert "json" not in result


@pytest.mark.anyio
async def test_json_suffix_media_types_are_parsed(base_url: str) -> None:
    assert (await request({"url": f"{base_url}/problem+json"}))["json"] == {"title": "x"}


@pytest.mark.anyio
async def test_head_has_no_body(base_url: str) -> None:
    result = await request({"method": "HEAD", "url": f"{base_url}/echo"})
    assert result["status"] == 200
    assert result["text"] == ""


@pytest.mark.anyio
async def test_redirects_are_followed_unless_disabled(base_url: str) -> None:
    followed = await request({"url": f"{base_url}/redirect"})
    assert followed["status"] == 201
    assert followed["url"] == f"{base_url}/created"
    assert followed["json"] == {"id": 7}
    stayed = await request(
        {"url": f"{base_url}/redirect", "followRedirects": False, "expectStatus": [302]}
    )
    assert stayed["status"] == 302
    assert stayed["headers"]["location"] == "/created"


# --- status checks ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unexpected_status_fails_with_status_and_body_excerpt(base_url: str) -> None:
    with pytest.raises(NodeError) as caught:
        await request({"url": f"{base_url}/missing"})
    error = caught.value
    assert error.code == "E.STD.HTTP.STATUS"
    assert f"GET {base_url}/missing returned 404 Not Found, expected 2xx" in error.message
    assert "no such thing here" in error.message
    assert error.details is not None and error.details["status"] == 404


@pytest.mark.anyio
async def test_expect_status_accepts_listed_codes_only(base_url: str) -> None:
    assert (await request({"url": f"{base_url}/missing", "expectStatus": [404]}))["status"] == 404
    with pytest.raises(NodeError) as caught:
        await request({"url": f"{base_url}/created", "expectStatus": [200, 204]})
    assert caught.value.code == "E.STD.HTTP.STATUS"
    assert "returned 201 Created, expected 200, 204" in caught.value.message


# --- limits and transport errors ----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
async def test_responses_over_max_response_bytes_fail(base_url: str, path: str) -> None:
    with pytest.raises(NodeError) as caught:
        await request({"url": f"{base_url}{path}", "maxResponseBytes": 1000})
    assert caught.value.code == "E.STD.HTTP.TOO_LARGE"
    assert f"{base_url}{path}" in caught.value.message
    assert "maxResponseBytes (1000)" in caught.value.message
    assert len((await request({"url": f"{base_url}{path}"}))["text"]) == 2000


@pytest.mark.anyio
async def test_slow_server_times_out(base_url: str) -> None:
    with pytest.raises(NodeError) as caught:
        await request({"url": f"{base_url}/slow", "timeoutSeconds": 0.3})
    assert caught.value.code == "E.STD.HTTP.TIMEOUT"
    assert f"GET {base_url}/slow did not complete within 0.3 s" in caught.value.message


@pytest.mark.anyio
async def test_connection_refused_is_a_transport_error() -> None:
    with socket.socket() as sock:  # a port that nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/anything"
    with pytest.raises(NodeError) as caught:
        await request({"url": url})
    assert caught.value.code == "E.STD.HTTP.TRANSPORT"
    assert url in caught.value.message
    assert caught.value.details is not None and caught.value.details["retryable"] is True


@pytest.mark.anyio
async def test_json_content_type_with_a_broken_body_fails(base_url: str) -> None:
    with pytest.raises(NodeError) as caught:
        await request({"url": f"{base_url}/bad-json"})
    assert caught.value.code == "E.STD.HTTP.BAD_JSON"
    assert f"{base_url}/bad-json" in caught.value.message


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"url": "ftp://example.org/file"}, "$.url"),
        ({"url": "example.org"}, "$.url"),
        ({}, "missing required field `url`"),
        ({"url": "http://x", "method": "TRACE"}, "$.method"),
        ({"url": "http://x", "timeoutSeconds": 0}, "$.timeoutSeconds"),
        ({"url": "http://x", "expectStatus": [99]}, "$.expectStatus[0]"),
        ({"url": "http://x", "maxResponseBytes": -1}, "$.maxResponseBytes"),
        ({"url": "http://x", "json": {}, "body": "x"}, "either json or body"),
        ({"url": "http://x", "data": "x"}, "unknown field `data`"),
    ],
)
def test_bad_parameters_are_rejected(params: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        SPEC.decode_params(params)
    assert message in str(caught.value)


def test_parameter_defaults() -> None:
    params = SPEC.decode_params({"url": "https://example.org/api"})
    assert params.method == "GET"
    assert params.timeout_seconds == 30
    assert params.max_response_bytes == 10 * 1024 * 1024
    assert params.expect_status is None
