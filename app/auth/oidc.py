"""The OpenID provider as batchd sees it: discovery, a JWKS cache with a refetch limit,
and the verification of a JWT (a bearer access or ID token, the console's ID token).

Why a cache of our own (not PyJWKClient): an unknown ``kid`` must refetch the keys
(the provider rotated them) but a burst of forged kids must not turn batchd into a
flood against the provider, so refetches are limited to one per
``REFETCH_INTERVAL_S`` in all, whatever the kid, and a provider that is down leaves the
keys already fetched verifying until they rotate. Keys are refreshed after
``KEYS_MAX_AGE_S`` (a withdrawn key stops verifying), and discovery, which the
unauthenticated sign-in start reads, is cached the same way. PyJWT does the cryptography: a key is
a ``PyJWK`` bound to the one algorithm the header names, out of ``ALGORITHMS``, so
``none``, HMAC and a key used with another key type's algorithm are refused there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from app.config import Settings
from app.errors import Unauthorized, Unavailable

ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
"""Asymmetric only: a symmetric (HS*) or ``none`` token is refused before any key is
looked at, so the provider's public key can never serve as an HMAC secret."""
LEEWAY_S = 60
"""Clock skew allowed on ``exp``, ``nbf`` and ``iat``."""
REFETCH_INTERVAL_S = 60.0
"""At most one JWKS fetch, and one discovery read, per this many seconds, whatever
triggers it."""
KEYS_MAX_AGE_S = 3600.0
"""Cached keys older than this are fetched again on their next use (kept if the
provider does not answer), so a key the provider withdrew stops verifying."""
DISCOVERY_MAX_AGE_S = REFETCH_INTERVAL_S
"""How old the metadata the console's sign-in start uses may be: a provider that went
down shows on the sign-in page within a minute."""
HTTP_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
"""A provider that does not answer fails a sign-in in seconds, not a minute."""
MAX_TOKEN_CHARS = 16_384
"""A bearer longer than this is not a token any provider issues; refused unread."""

SUBJECT_MAX = 255
"""The longest ``sub`` kept (``users.oidc_subject``); the OpenID spec caps it there."""

INVALID = "The bearer token is not valid."
"""One sentence for every refused JWT: it says no more about why than a bad ``bd_``
token would (the server log has the reason)."""


class ProviderDown(Unavailable):
    """The provider cannot be reached (or answered nonsense) and nothing cached can
    stand in: a 503 the client may retry."""

    def __init__(self) -> None:
        super().__init__(
            "The sign-in provider cannot be reached right now; try again shortly "
            "(or use a bd_ token)."
        )


class InvalidToken(Unauthorized):
    """A JWT batchd will not accept; ``reason`` is for the log, never the response."""

    def __init__(self, reason: str) -> None:
        super().__init__(INVALID)
        self.reason = reason


def looks_like_jwt(token: str) -> bool:
    """A compact JWS has three dot-separated parts; batchd's own tokens start ``bd_``."""
    return not token.startswith("bd_") and token.count(".") == 2


@dataclass
class OidcProvider:
    """One issuer's metadata and keys, shared by every request of the process."""

    issuer: str
    clock: Callable[[], float] = time.monotonic
    refetch_interval: float = REFETCH_INTERVAL_S
    keys_max_age: float = KEYS_MAX_AGE_S
    transport: httpx.AsyncBaseTransport | None = None
    """For tests only (an in-memory provider); None: the network."""
    metadata: dict[str, Any] | None = None
    metadata_at: float | None = None
    """When ``metadata`` was read (``clock`` time)."""
    discovery_tried_at: float | None = None
    """When discovery was last asked for, answered or not: one try per interval."""
    discovery_failed: bool = False
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys_at: float | None = None
    """When ``keys`` were fetched; older than ``keys_max_age``: refreshed on next use."""
    jwks_tried_at: float | None = None
    """When the JWKS was last asked for, answered or not: one try per interval."""
    fetch_failed: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _discovery_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=HTTP_TIMEOUT, transport=self.transport, follow_redirects=False
        )

    def _metadata_fresh(self, max_age: float | None) -> bool:
        if self.metadata is None or self.metadata_at is None:
            return False
        return max_age is None or self.clock() - self.metadata_at < max_age

    async def discover(self, *, max_age: float | None = None) -> dict[str, Any]:
        """The provider's metadata: the cached copy, re-read when it is older than
        ``max_age`` seconds (None: kept until the process ends). Reads happen at most
        once per ``refetch_interval`` whoever asks — the console's unauthenticated
        start page included — and a read that failed within it is a ``ProviderDown``
        for a caller that wanted fresh metadata (a cached copy for anyone else). The
        ``issuer`` the document states must be the one configured."""
        if self._metadata_fresh(max_age):
            assert self.metadata is not None
            return self.metadata
        async with self._discovery_lock:
            if self._metadata_fresh(max_age):  # another request read it meanwhile
                assert self.metadata is not None
                return self.metadata
            now = self.clock()
            tried = self.discovery_tried_at
            if tried is not None and now - tried < self.refetch_interval:
                if self.metadata is not None and (max_age is None or not self.discovery_failed):
                    return self.metadata
                raise ProviderDown()
            self.discovery_tried_at = now
            self.discovery_failed = True
            data = await self._read_discovery()
            self.discovery_failed = False
            self.metadata, self.metadata_at = data, now
            return data

    async def _read_discovery(self) -> dict[str, Any]:
        try:
            async with self.client() as http:
                response = await http.get(self.discovery_url)
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderDown() from exc
        if not isinstance(data, dict) or data.get("issuer") != self.issuer:
            raise ProviderDown()
        if not isinstance(data.get("jwks_uri"), str):
            raise ProviderDown()
        return data

    def _keys_stale(self, now: float) -> bool:
        return self.keys_at is None or now - self.keys_at >= self.keys_max_age

    async def key_for(self, kid: str | None) -> dict[str, Any] | None:
        """The JWK named ``kid`` (a token without a kid: the only key, if there is just
        one). The JWKS is fetched again — at most once per ``refetch_interval`` in all,
        whatever the kid — when the kid is unknown (the provider rotated its keys) or
        the cached keys are older than ``keys_max_age`` (a key the provider withdrew
        stops verifying within that time). If that fetch fails, a cached key keeps
        verifying; an unknown kid is then a ``ProviderDown``."""
        found = self._cached(kid)
        if found is not None and (not self._keys_stale(self.clock()) or self._lock.locked()):
            return found  # a refresh under way: the cached key does meanwhile
        async with self._lock:
            now = self.clock()
            found = self._cached(kid)  # another request may have refetched meanwhile
            if found is not None and not self._keys_stale(now):
                return found
            tried = self.jwks_tried_at
            if tried is not None and now - tried < self.refetch_interval:
                if found is not None:
                    return found  # stale, but a fetch was tried within the interval
                if self.fetch_failed:  # the provider is down: say so, not "invalid"
                    raise ProviderDown()
                return None
            self.jwks_tried_at = now  # a failed fetch counts too: a down provider is spared
            self.fetch_failed = True
            try:
                await self._fetch_keys()
            except ProviderDown:
                if found is not None:
                    return found  # cached keys keep verifying while the provider is down
                raise
            self.fetch_failed = False
            self.keys_at = now
        return self._cached(kid)

    def _cached(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    async def _fetch_keys(self) -> None:
        metadata = await self.discover()
        try:
            async with self.client() as http:
                response = await http.get(metadata["jwks_uri"])
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderDown() from exc
        keys: dict[str, dict[str, Any]] = {}
        for jwk in document.get("keys", []) if isinstance(document, dict) else []:
            if isinstance(jwk, dict) and jwk.get("use", "sig") == "sig":
                keys[str(jwk.get("kid", ""))] = jwk
        self.keys = keys  # a rotated-out key stops verifying now

    async def verify(
        self,
        token: str,
        *,
        audiences: list[str],
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """The claims of ``token`` once its signature (a provider key, an allowed
        algorithm), ``iss``, ``aud`` (one of ``audiences``), ``exp``, ``nbf`` and
        ``iat`` (with ``LEEWAY_S``), a ``sub``, and — for the console's ID token — the
        ``nonce`` all check out; ``InvalidToken`` otherwise."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"unreadable header: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidToken(f"algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        jwk = await self.key_for(kid if isinstance(kid, str) else None)
        if jwk is None:
            raise InvalidToken(f"unknown key id {kid!r}")
        if jwk.get("alg") not in (None, alg):
            raise InvalidToken(f"key {kid!r} is for {jwk.get('alg')}, not {alg}")
        try:
            key = PyJWK(jwk, algorithm=alg)
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audiences,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= SUBJECT_MAX:
            raise InvalidToken("no usable subject")
        if nonce is not None and claims.get("nonce") != nonce:
            raise InvalidToken("nonce does not match")
        return claims


def api_audiences(settings: Settings) -> list[str]:
    """What a bearer JWT's ``aud`` may be: the API's audience (access tokens) and the
    console's client id (ID tokens issued to it)."""
    audiences = [a for a in (settings.oidc_audience, settings.oidc_client_id) if a]
    return audiences


def check_settings(settings: Settings) -> None:
    """Refuse to start half-configured: an issuer without an audience would accept
    every token the provider signs for any application."""
    if settings.oidc_issuer and not settings.oidc_audience:
        raise ValueError(
            "BATCH_OIDC_ISSUER is set but BATCH_OIDC_AUDIENCE is not: set it to the "
            "audience (aud) of the access tokens the provider issues for batchd."
        )
    if settings.oidc_client_id and not settings.oidc_issuer:
        raise ValueError("BATCH_OIDC_CLIENT_ID needs BATCH_OIDC_ISSUER.")


def provider_of(state: Any, settings: Settings) -> OidcProvider | None:
    """The process's provider (made on first use, kept on ``app.state``); None when
    single sign-on is off."""
    if not settings.oidc_issuer:
        return None
    provider: OidcProvider | None = getattr(state, "oidc", None)
    if provider is None or provider.issuer != settings.oidc_issuer:
        check_settings(settings)
        provider = OidcProvider(settings.oidc_issuer)
        state.oidc = provider
    return provider
