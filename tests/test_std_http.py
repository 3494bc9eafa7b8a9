"""nodehost.std.http.request against a real HTTP server on the loopback interface.

The servers listen on 127.0.0.1 only, so most tests run the node with that address in
`[sandbox] http_allow`; the destination tests run it without. Every socket the node opens is
watched (`connections`): one to an address off this machine fails the test before it is
made, so a broken check cannot send a request out.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpcore
import msgspec
import pytest
from nodehost_std import destinations, package
from nodehost_std.destinations import Allow, DestinationRefused, not_public

from nodehost import NodeError
from nodehost.config import Config, ExecutorsConfig, Sandbox
from nodehost.host import build_host
from nodehost.plugins import Catalog
from std_support import make_ctx

SPEC = package.nodes["nodehost.std.http.request"]
SERVERS = Sandbox(http_allow=["127.0.0.1"])  # where the test servers listen
DEFAULTS = Sandbox()  # nothing but public addresses
REFUSED = "E.STD.HTTP.DESTINATION_REFUSED"


async def request(params: dict[str, Any], sandbox: Sandbox = SERVERS) -> dict[str, Any]:
    """Run the node as the host would, with these [sandbox] settings."""
    ctx = make_ctx(SPEC)
    ctx.sandbox = sandbox
    return SPEC.encode_result(await SPEC.fn(ctx, SPEC.decode_params(params)))


async def refusal(params: dict[str, Any], sandbox: Sandbox = DEFAULTS) -> NodeError:
    with pytest.raises(NodeError) as caught:
        await request(params, sandbox)
    assert caught.value.code == REFUSED, caught.value
    return caught.value


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses the node opens sockets to, below the destination check (which hands
    the backend an address, never a name); anything but loopback fails the test."""
    opened: list[str] = []
    connect = httpcore.AnyIOBackend.connect_tcp

    async def watched(self: httpcore.AnyIOBackend, host: str, port: int,
                      *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        assert ipaddress.ip_address(host).is_loopback, f"the node connected to {host}"
        opened.append(host)
        return await connect(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", watched)
    return opened


def fake_dns(monkeypatch: pytest.MonkeyPatch, records: dict[str, list[str]]) -> None:
    """Names the node resolves to the given addresses (others as usual)."""
    real = destinations.resolve

    async def resolve(host: str, port: int, timeout: float | None) -> list[str]:
        return records[host] if host in records else await real(host, port, timeout)

    monkeypatch.setattr(destinations, "resolve", resolve)


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
                        "host": self.headers.get("Host"),
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
        elif url.path in ("/to", "/loop"):  # /to?url=...: a redirect there
            self.send_response(302)
            self.send_header("Location", parse_qs(url.query)["url"][0] if url.query else "/loop")
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


@contextmanager
def serving(tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """A Server on 127.0.0.1 (with TLS if given), for the duration of the block: its port."""
    server = Server(("127.0.0.1", 0), Handler)
    server.release = threading.Event()
    if tls is not None:  # the handshake is made at accept, in the serving thread
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    # A short poll interval keeps shutdown() quick.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def port() -> Iterator[int]:
    with serving() as port:
        yield port


@pytest.fixture
def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


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


# --- destinations -------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("host", "addresses"),
    [
        ("127.0.0.1", {"127.0.0.1"}),
        ("localhost", {"127.0.0.1", "::1"}),  # a name is judged by what it resolves to
        ("[::1]", {"::1"}),
        ("2130706433", {"127.0.0.1"}),  # decimal, as inet_aton reads it
        ("0x7f000001", {"127.0.0.1"}),
        ("127.0.0.2", {"127.0.0.2"}),  # allowing 127.0.0.1 opens that address only
        ("[::ffff:127.0.0.1]", {"::ffff:127.0.0.1"}),
        ("0.0.0.0", {"0.0.0.0"}),
        ("169.254.169.254", {"169.254.169.254"}),  # cloud metadata
        ("[fe80::1]", {"fe80::1"}),
        ("10.0.0.1", {"10.0.0.1"}),
        ("100.64.0.1", {"100.64.0.1"}),
        ("224.0.0.1", {"224.0.0.1"}),
    ],
)
async def test_non_public_destinations_are_refused_before_any_connection(
    port: int, connections: list[str], host: str, addresses: set[str]
) -> None:
    url = f"http://{host}:{port}/echo"
    sandbox = SERVERS if host == "127.0.0.2" else DEFAULTS
    error = await refusal({"url": url}, sandbox)
    assert connections == []  # refused at the check: not a packet sent, to anyone
    assert error.retryable is False and error.details is not None
    address = error.details["address"]
    assert address in addresses
    assert error.details["host"] == host.strip("[]")
    assert error.message.startswith(f"GET {url}: refused: ")
    assert address in error.message and host.strip("[]") in error.message
    assert "[sandbox] http_allow" in error.message
    assert error.remediation is not None and "http_allow" in error.remediation


@pytest.mark.anyio
async def test_a_name_is_refused_when_any_of_its_addresses_is(
    monkeypatch: pytest.MonkeyPatch, connections: list[str]
) -> None:
    # a public address first (never connected to: the watch would fail the test), then loopback
    fake_dns(monkeypatch, {"mixed.test": ["93.184.215.14", "127.0.0.1"]})
    error = await refusal({"url": "http://mixed.test/"})
    assert "mixed.test resolves to 127.0.0.1, a loopback address" in error.message
    assert 'by address ("127.0.0.1"), network or host name ("mixed.test")' in error.message
    assert connections == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("allow", "host"),
    [
        (["127.0.0.1"], "127.0.0.1"),  # an address
        (["127.0.0.0/8"], "127.0.0.1"),  # a network
        (["127.0.0.0/8", "::1"], "localhost"),  # the addresses a name resolves to
        (["LocalHost."], "localhost"),  # a host name, whatever it resolves to
    ],
)
async def test_http_allow_opens_addresses_networks_and_names(
    port: int, connections: list[str], allow: list[str], host: str
) -> None:
    result = await request({"url": f"http://{host}:{port}/echo"}, Sandbox(http_allow=allow))
    assert result["status"] == 200
    assert result["json"]["host"] == f"{host}:{port}"  # the URL's host, not the address
    assert connections[-1] == "127.0.0.1"  # where the server is (::1 may be tried first)


@pytest.mark.anyio
async def test_a_name_is_connected_to_at_the_address_checked(
    monkeypatch: pytest.MonkeyPatch, port: int, connections: list[str]
) -> None:
    """The name is resolved once: the socket goes to that address, with the name kept in
    the Host header; `*.corp.test` opens the names below corp.test, not corp.test."""
    fake_dns(monkeypatch, {"api.corp.test": ["127.0.0.1"], "corp.test": ["127.0.0.1"]})
    wildcard = Sandbox(http_allow=["*.corp.test"])
    result = await request({"url": f"http://api.corp.test:{port}/echo"}, wildcard)
    assert result["json"]["host"] == f"api.corp.test:{port}"
    assert result["url"] == f"http://api.corp.test:{port}/echo"
    assert connections == ["127.0.0.1"]
    await refusal({"url": f"http://corp.test:{port}/echo"}, wildcard)
    assert connections == ["127.0.0.1"]


@pytest.mark.anyio
@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://[::1]/"])
async def test_a_redirect_to_a_refused_destination_fails(
    base_url: str, connections: list[str], target: str
) -> None:
    url = f"{base_url}/to?url={target}"
    error = await refusal({"url": url}, SERVERS)
    assert error.message.startswith(f"GET {url}: redirected to {target}, refused: ")
    assert error.details is not None and error.details["url"] == target
    assert connections == ["127.0.0.1"]  # the allowed first hop only
    stayed = await request({"url": url, "followRedirects": False, "expectStatus": [302]})
    assert stayed["headers"]["location"] == target


@pytest.mark.anyio
async def test_a_redirect_loop_stops_after_twenty_hops(base_url: str) -> None:
    with pytest.raises(NodeError) as caught:
        await request({"url": f"{base_url}/loop"})
    assert caught.value.code == "E.STD.HTTP.REDIRECTS"
    assert f"GET {base_url}/loop: more than 20 redirects, the last to {base_url}/loop" == (
        caught.value.message
    )


@pytest.fixture
def localhost_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ssl.SSLContext,
                                                                            list[str | None]]:
    """A server context with a self-signed certificate for `localhost`, which the node
    trusts (SSL_CERT_FILE), and the names clients sent as SNI."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _context: names.append(name)
    return context, names


@pytest.mark.anyio
async def test_tls_is_for_the_name_though_the_socket_goes_to_the_address(
    localhost_tls: tuple[ssl.SSLContext, list[str | None]], connections: list[str]
) -> None:
    context, names = localhost_tls
    with serving(context) as port:
        url = f"https://localhost:{port}/echo"
        result = await request({"url": url}, Sandbox(http_allow=["localhost"]))
        assert result["json"]["host"] == f"localhost:{port}"
        assert names == ["localhost"]  # SNI, and the certificate checked, for the name
        assert connections[-1] == "127.0.0.1"
        with pytest.raises(NodeError) as caught:  # the certificate is not for the address
            await request({"url": f"https://127.0.0.1:{port}/echo"})
        assert caught.value.code == "E.STD.HTTP.TRANSPORT"
        assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message


@pytest.mark.anyio
@pytest.mark.parametrize("executor", ["inprocess", "subprocess"])
async def test_the_hosts_sandbox_setting_reaches_the_node(base_url: str, executor: str) -> None:
    catalog = Catalog()
    catalog.add(package)
    document = {
        "id": "wf", "schemaVersion": "2025-01", "metadata": {"name": "wf"}, "edges": [],
        "nodes": [{"id": "n", "type": SPEC.type,
                   "package": {"name": package.name, "version": package.version},
                   "parameters": {"url": f"{base_url}/created"}}],
    }
    tasks = []
    for allow in ([], ["127.0.0.1"]):
        config = Config(
            executors=ExecutorsConfig(default=executor, inprocess=[]),  # type: ignore[arg-type]
            sandbox=Sandbox(http_allow=allow),
        )
        host = build_host(config, catalog)
        with anyio.fail_after(30):
            async with host.running():
                tasks.append((await host.run(document)).tasks["n"])
    refused, fetched = tasks
    assert refused.status == "failed" and refused.error is not None
    assert refused.error.code == REFUSED
    assert fetched.status == "succeeded" and fetched.result is not None
    assert fetched.result["json"] == {"id": 7}


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("fec0::1", "site-local"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.1.2.3", "not a globally reachable"),
        ("192.0.2.1", "not a globally reachable"),  # documentation
        ("198.18.0.1", "not a globally reachable"),  # benchmarking
        ("2001:db8::1", "not a globally reachable"),
        ("2001::1", "not a globally reachable"),  # Teredo
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("::127.0.0.1", "reserved"),  # IPv4-compatible
        ("2002:7f00:1::", "an IPv6 form of 127.0.0.1, a loopback"),  # 6to4
        ("2002:a9fe:a9fe::1", "an IPv6 form of 169.254.169.254, a link-local"),
        ("64:ff9b::a9fe:a9fe", "an IPv6 form of 169.254.169.254, a link-local"),  # NAT64
    ],
)
def test_what_is_not_public(address: str, kind: str) -> None:
    found = not_public(ipaddress.ip_address(address))
    assert found is not None and kind in found


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1",
     "64:ff9b::808:808"],
)
def test_what_is_public(address: str) -> None:
    assert not_public(ipaddress.ip_address(address)) is None


def test_allow_entries_are_addresses_networks_names_and_wildcards() -> None:
    allow = Allow.parse(["10.0.0.0/8", "::1", "[fe80::1]", "192.168.1.7", "Internal.Example.",
                         "*.corp.test", "10.0.0.0/33"])  # the last is no network: a name
    for address in ("10.9.9.9", "::1", "fe80::1", "192.168.1.7", "::ffff:10.0.0.1"):
        assert allow.opens_address(ipaddress.ip_address(address)), address
    for address in ("11.0.0.1", "192.168.1.8", "127.0.0.1", "::2"):
        assert not allow.opens_address(ipaddress.ip_address(address)), address
    for name in ("internal.example", "INTERNAL.example.", "a.corp.test", "x.y.corp.test"):
        assert allow.opens_name(name), name
    for name in ("corp.test", "evilcorp.test", "internal.example.org", "example"):
        assert not allow.opens_name(name), name
    allow.check("internal.example", ["127.0.0.1"])  # a name opens every address it has
    allow.check("public.test", ["8.8.8.8", "10.1.1.1"])
    with pytest.raises(DestinationRefused, match=r"public\.test resolves to 127\.0\.0\.1"):
        allow.check("public.test", ["8.8.8.8", "127.0.0.1"])


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
