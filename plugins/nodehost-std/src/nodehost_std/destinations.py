"""Where `nodehost.std.http.request` may connect: public unicast addresses, and whatever the
operator's `[sandbox] http_allow` opens besides (addresses, CIDR networks, host names).

The check sits in the httpcore network backend, the one place where httpx opens a socket, so
no path (first request, redirect hop, new pooled connection) can skip it: the host name is
resolved once, every address it resolves to is checked, and the socket is connected to one
of those checked addresses, never to the name, which a second lookup could answer
differently (DNS rebinding). The URL itself keeps the name, so the Host header, TLS SNI and
certificate verification, cookies and relative redirects stay httpx's own, for the name;
rewriting the URL to the address (with an `sni_hostname` extension and a Host header) would
have to undo all of that by hand.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
import httpcore
import httpx

__all__ = ["Allow", "DestinationRefused", "GuardedTransport", "not_public", "resolve"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Named here because `is_private` / `is_global` lump them in with the rest (or miss them).
_PRIVATE = tuple(
    ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                          "fc00::/7")
)
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # a translator reaches the IPv4 in the low bits


class DestinationRefused(Exception):
    """A destination resolves to an address that is not public, and http_allow does not
    open it. Not an httpcore error, so that httpx passes it through unchanged."""

    def __init__(self, host: str, address: str, kind: str) -> None:
        self.host, self.address, self.kind = host, address, kind
        where = f"{host} is" if host == address else f"{host} resolves to {address},"
        super().__init__(f"{where} {kind}")


def not_public(address: Address) -> str | None:
    """What keeps `address` from being a public unicast address ("a loopback address", ...),
    or None if it is one. (::a.b.c.d, deprecated, is in the reserved ::/8.)"""
    judged: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None or address in _NAT64:
            # ::ffff:a.b.c.d reaches a.b.c.d on a dual-stack socket, 64:ff9b::a.b.c.d through
            # a NAT64 translator: that IPv4 address alone is judged (before 3.13 Python calls
            # every mapped address private, and 64:ff9b::/96 lies in the reserved ::/8, which
            # would refuse every destination of an IPv6-only host)
            judged = [ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)]
        elif address.sixtofour is not None:
            judged.append(address.sixtofour)  # 2002:a.b.c.d::, which is_global overlooks
    for form in judged:
        kind = _kind(form)
        if kind is not None:
            return kind if form is address else f"an IPv6 form of {form}, {kind}"
    return None


def _kind(address: Address) -> str | None:
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:  # is_global is true for most multicast addresses
        return "a multicast address"
    if address in _SHARED:  # not is_private, though not global either
        return "a carrier-grade NAT address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:  # is_global
        return "a site-local address"  # is true for fec0::/10 on Python < 3.13
    if any(address in net for net in _PRIVATE):
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:  # this-network, documentation, benchmarking, Teredo, ...
        return "not a globally reachable address"
    return None


@dataclass(frozen=True, slots=True)
class Allow:
    """`[sandbox] http_allow`, parsed: an entry is an address or a CIDR network if it reads as
    one, else a host name, matched exactly but for case and a final dot; `*.example.com`
    matches every name below example.com (not example.com itself), for an internal domain."""

    networks: tuple[Network, ...] = ()  # an address is its own /32 or /128
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # ".example.com" for "*.example.com"

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allow:
        networks: list[Network] = []
        names: set[str] = set()
        suffixes: list[str] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip().strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = _name(entry)
            if name.startswith("*."):
                suffixes.append(name[1:])
            else:
                names.add(name)
        return cls(tuple(networks), frozenset(names), tuple(suffixes))

    def opens_name(self, host: str) -> bool:
        name = _name(host)
        return name in self.names or name.endswith(self.suffixes)

    def opens_address(self, address: Address) -> bool:
        forms = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            forms.append(address.ipv4_mapped)  # "127.0.0.1" opens ::ffff:127.0.0.1 too
        return any(form in net for form in forms for net in self.networks)

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """Raise DestinationRefused unless every address is public or opened by http_allow,
        or the host name itself is: one refused address refuses the name, since which of
        them the connection ends up on is not ours to choose."""
        if self.opens_name(host):
            return
        for text in addresses:
            address = ipaddress.ip_address(text)
            kind = not_public(address)
            if kind is not None and not self.opens_address(address):
                raise DestinationRefused(host, text, kind)


def _name(host: str) -> str:
    return host.strip().lower().rstrip(".")


async def resolve(host: str, port: int, timeout: float | None) -> list[str]:
    """The addresses `host` resolves to, in the resolver's order, without repeats; failures
    are httpcore's connect errors, which httpx reports as it reports a failed connection."""
    try:
        with anyio.fail_after(timeout):
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
    except OSError as exc:  # socket.gaierror
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections to checked addresses only (anyio's backend does the connecting,
    on asyncio and trio alike)."""

    def __init__(self, allow: Allow) -> None:
        self._allow = allow
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port, timeout)
        self._allow.check(host, addresses)
        failure: Exception | None = None
        for address in addresses:  # each in turn, as socket.create_connection does
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout,
                                                     local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host} resolves to no address")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request and response mapping, its exception types) over a
    connection pool whose sockets `_GuardedBackend` opens. Giving it a client also turns off
    the proxies of the environment (HTTP_PROXY...), which would connect in our stead,
    unchecked."""

    def __init__(self, allow: Allow) -> None:
        ssl_context = httpx.create_ssl_context()  # as AsyncClient() makes it (SSL_CERT_FILE...)
        super().__init__(verify=ssl_context)
        # httpx takes no network backend (encode/httpx#3749 is open), so its pool is swapped
        # for one that has ours: the only private name used, and checked, lest a renamed
        # attribute leave the connections unguarded.
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("this httpx keeps no `_pool`: destinations cannot be checked")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=_GuardedBackend(allow)
        )
