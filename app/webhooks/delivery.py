"""Sending one attempt over HTTP, and the guard that keeps batchd from calling into its
own network (SSRF).

The guard resolves the URL's host, refuses it if *any* address is not a public unicast
host (loopback, private, link-local, multicast, reserved, unspecified…, by batchd's own
tables, IPv4 and IPv6; IPv6 that wraps an IPv4 address is judged by that address too),
and then connects to the very address it checked — the URL's host is
replaced by that IP, the ``Host`` header keeps the name and, for https, so do SNI and
the certificate check (httpcore's ``sni_hostname``) — so a second DNS answer cannot
point the request somewhere else. ``BATCH_WEBHOOK_ALLOW_PRIVATE=true`` turns the guard
off (development and tests only). At most ``RESPONSE_MAX`` bytes of the answer's body
are read from the connection."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import certifi
import httpcore
import httpx
from standardwebhooks import Webhook

URL_MAX = 2000
RESPONSE_MAX = 64 * 1024
"""At most this many bytes of a receiver's response body are read from the connection;
then it is closed and the rest is never downloaded."""
ERROR_MAX = 500

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_tls: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: loading the CA bundle costs milliseconds
    of CPU, more than the rest of an attempt's set-up."""
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context(cafile=certifi.where())
    return _tls


class Refused(Exception):
    """A URL batchd will not call; the message says why, for a person."""


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


resolve: Callable[[str, int], Awaitable[list[str]]] = _getaddrinfo
"""The resolver (host, port) → addresses; tests replace it."""


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# The tables are written out here, not taken from ``ipaddress``'s ``is_private`` /
# ``is_global``: those follow the IANA registries as of each Python patch release (3.11.7
# still accepts fec0::/10 and 2002::/16 wrapping 127.0.0.1), and whether a URL is refused
# must not change with the interpreter.
V4_REFUSED = _nets(
    "0.0.0.0/8",  # "this network", 0.0.0.0 (connects to the local host on Linux)
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # carrier-grade NAT (shared address space)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local (cloud metadata services live here)
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation (TEST-NET-1)
    "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation (TEST-NET-2)
    "203.0.113.0/24",  # documentation (TEST-NET-3)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the broadcast address 255.255.255.255
)
"""IPv4 destinations batchd never calls."""
V6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
"""Every public IPv6 address is in here; whatever is outside it (::, ::1, IPv4-mapped
and -compatible, discard-only, unique-local fc00::/7, link-local fe80::/10, the
deprecated site-local fec0::/10, multicast ff00::/8, local-use NAT64 64:ff9b:1::/48, …)
is refused, except well-known NAT64 checked by the IPv4 it wraps."""
V6_REFUSED = _nets(
    "2001::/23",  # IETF protocol assignments: Teredo 2001::/32, benchmarking, ORCHID…
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
)
"""Blocks inside 2000::/3 that are not somebody's public host."""
NAT64 = ipaddress.ip_network("64:ff9b::/96")
"""Well-known NAT64 prefix: the last 32 bits are an IPv4 address, reached through the
translator."""
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
"""6to4: bits 16-47 are an IPv4 address, reached through a relay."""


def forbidden(address: Address) -> bool:
    """Loopback, private, link-local, multicast, reserved, unspecified or otherwise not
    a public unicast host, from the tables above only (the same on every Python); an
    IPv6 address that carries an IPv4 one (NAT64, 6to4) is judged by that IPv4 address
    too, and IPv4-mapped/-compatible, Teredo and site-local addresses are refused."""
    if isinstance(address, ipaddress.IPv4Address):
        return any(address in net for net in V4_REFUSED)
    if address in NAT64:
        return forbidden(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address not in V6_GLOBAL_UNICAST or any(address in net for net in V6_REFUSED):
        return True
    if address in SIX_TO_FOUR:
        return forbidden(ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF))
    return False


def check_shape(url: str) -> httpx.URL:
    """The URL's form: http or https, a host, no credentials, at most ``URL_MAX`` long."""
    if len(url) > URL_MAX:
        raise Refused(f"The URL is longer than {URL_MAX} characters.")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise Refused(f"The URL is not valid: {exc}.") from None
    if parsed.scheme not in ("http", "https"):
        raise Refused("The URL must start with http:// or https://.")
    if not parsed.host:
        raise Refused("The URL has no host.")
    if parsed.userinfo:
        raise Refused("The URL must not carry a user name or password.")
    return parsed


async def checked_address(parsed: httpx.URL, *, allow_private: bool) -> str:
    """Resolve the URL's host and return the address to connect to; ``Refused`` if it
    does not resolve or any address it resolves to is not public."""
    host = parsed.host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise Refused(f"The host {host} does not resolve ({exc}).") from None
    if not addresses:
        raise Refused(f"The host {host} does not resolve.")
    if not allow_private:
        for raw in addresses:
            if forbidden(ipaddress.ip_address(raw.split("%", 1)[0])):
                # Which address is not said: a caller must not learn how batchd's own
                # network resolves a name.
                raise Refused(
                    f"The host {host} resolves to a loopback, private, link-local, "
                    "multicast or reserved address: batchd does not send webhooks into "
                    "its own network."
                )
    return addresses[0]


async def check_url(url: str, *, allow_private: bool) -> None:
    """What create and update check: the form, and where the host points now."""
    await checked_address(check_shape(url), allow_private=allow_private)


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers, signed with the ``standardwebhooks`` library."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
        "user-agent": "batchd-webhooks",
    }


async def send(
    url: str, headers: dict[str, str], body: str, *, limit_s: float, allow_private: bool
) -> Attempt:
    """One attempt: check where the host points *now*, POST to that address, read at
    most ``RESPONSE_MAX`` bytes of the answer; redirects are not followed. Never raises
    for the receiver's faults: they come back as the attempt's error."""
    try:
        async with asyncio.timeout(limit_s):
            return await _send(url, headers, body, limit_s=limit_s, allow_private=allow_private)
    except TimeoutError:
        return Attempt(None, f"No answer within {limit_s:g} s.")
    except Refused as exc:
        return Attempt(None, f"Not sent: {exc}")
    except httpx.HTTPError as exc:
        return Attempt(None, _short(f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)))
    except OSError as exc:
        return Attempt(None, _short(f"{type(exc).__name__}: {exc}"))


class _ReadBudget:
    """What is left of ``RESPONSE_MAX`` for one attempt: ``None`` while the response
    head is read (socket reads take what the HTTP parser asks, 64 KiB), then the body
    bytes this attempt may still take from the connection."""

    def __init__(self) -> None:
        self.left: int | None = None


class _CappedStream(httpcore.AsyncNetworkStream):
    """A connection whose reads never ask for more than the budget has left, so the body
    read stops at ``RESPONSE_MAX`` exactly instead of one 64 KiB socket read later.
    (The ``timeout`` parameters are httpcore's interface.)"""

    def __init__(self, inner: httpcore.AsyncNetworkStream, budget: _ReadBudget) -> None:
        self._inner = inner
        self._budget = budget

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        left = self._budget.left
        if left is not None:
            if left <= 0:  # the caller stops before this; never read past the cap
                raise httpcore.ReadError(f"more than {RESPONSE_MAX} bytes of response")
            max_bytes = min(max_bytes, left)
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface, as above
    ) -> httpcore.AsyncNetworkStream:
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _CappedStream(tls, self._budget)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CappedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's asyncio backend, handing out ``_CappedStream`` connections."""

    def __init__(self, budget: _ReadBudget) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._budget = budget

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CappedStream(stream, self._budget)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Transport(httpx.AsyncHTTPTransport):
    """httpx's own transport over a connection pool on ``_CappedBackend`` (httpx has no
    public way to pass a network backend: the pool it builds is replaced)."""

    def __init__(self, budget: _ReadBudget) -> None:
        super().__init__(verify=_tls_context(), trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_tls_context(), max_connections=1, network_backend=_CappedBackend(budget)
        )


async def _send(
    url: str, headers: dict[str, str], body: str, *, limit_s: float, allow_private: bool
) -> Attempt:
    parsed = check_shape(url)
    address = await checked_address(parsed, allow_private=allow_private)
    target = parsed.copy_with(host=address)
    host_header = parsed.host if ":" not in parsed.host else f"[{parsed.host}]"
    if parsed.port is not None:
        host_header = f"{host_header}:{parsed.port}"
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    budget = _ReadBudget()
    async with (
        httpx.AsyncClient(
            transport=_Transport(budget), timeout=limit_s, follow_redirects=False, trust_env=False
        ) as client,
        client.stream(
            "POST",
            target,
            content=body.encode(),
            headers={**headers, "host": host_header},
            extensions=extensions,
        ) as response,
    ):
        head = bytearray()
        budget.left = RESPONSE_MAX
        async for chunk in response.aiter_raw():
            head += chunk
            budget.left = RESPONSE_MAX - len(head)
            if budget.left <= 0:
                break  # closing an unfinished response closes the connection, unread
        code = response.status_code
    if 200 <= code < 300:
        return Attempt(code, None)
    if 300 <= code < 400:
        where = response.headers.get("location", "")
        return Attempt(code, _short(f"HTTP {code}: redirects are not followed ({where})."))
    text = bytes(head[:200]).decode("utf-8", "replace").strip()
    return Attempt(code, _short(f"HTTP {code}" + (f": {text}" if text else "")))


def _short(text: str) -> str:
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 1] + "…"
