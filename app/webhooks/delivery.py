"""Sending one attempt over HTTP, and the guard that keeps batchd from calling into its
own network (SSRF).

The guard resolves the URL's host, refuses it if *any* address is loopback, private,
link-local, multicast, reserved or unspecified (IPv4 and IPv6, IPv4-mapped IPv6
included), and then connects to the very address it checked — the URL's host is
replaced by that IP, the ``Host`` header keeps the name and, for https, so do SNI and
the certificate check (httpcore's ``sni_hostname``) — so a second DNS answer cannot
point the request somewhere else. ``BATCH_WEBHOOK_ALLOW_PRIVATE=true`` turns the guard
off (development and tests only)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import certifi
import httpx
from standardwebhooks import Webhook

URL_MAX = 2000
RESPONSE_MAX = 64 * 1024
"""At most this much of a receiver's response is read; the rest is never downloaded."""
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


def forbidden(address: Address) -> bool:
    """Loopback, private, link-local, multicast, reserved, unspecified or otherwise not
    global — checked on the IPv4 address inside an IPv4-mapped IPv6 one too."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


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
    async with (
        httpx.AsyncClient(
            timeout=limit_s, follow_redirects=False, trust_env=False, verify=_tls_context()
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
        async for chunk in response.aiter_raw():
            head += chunk
            if len(head) >= RESPONSE_MAX:
                break
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
