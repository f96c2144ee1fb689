"""Typed application errors; one handler renders them as the API's JSON error body."""

from __future__ import annotations

import socket
import sqlite3
from typing import Any

from app.domain import ErrorCode

MAX_LISTED_ERRORS = 20
"""An error body lists at most this many field errors; a request with 100 000 bad keys
still gets a short answer."""


def join_messages(messages: list[str], limit: int = MAX_LISTED_ERRORS) -> str:
    """``"a; b; c"``, or the first ``limit`` messages then ``"and N more"``."""
    shown = "; ".join(messages[:limit])
    hidden = len(messages) - limit
    return f"{shown}; and {hidden} more" if hidden > 0 else shown


class AppError(Exception):
    """Base error: subclasses carry their HTTP status and error code."""

    status_code = 400
    code = "BadRequest"

    def __init__(self, detail: str, fields: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.fields:
            body["fields"] = self.fields[:MAX_LISTED_ERRORS]
        return body


class BadRequest(AppError):
    status_code = 400
    code = "BadRequest"


class Unauthorized(AppError):
    status_code = 401
    code = "Unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "Forbidden"


class NotFound(AppError):
    status_code = 404
    code = "NotFound"


class Conflict(AppError):
    status_code = 409
    code = "Conflict"


class TooLarge(AppError):
    status_code = 413
    code = "PayloadTooLarge"


class ValidationFailed(AppError):
    status_code = 422
    code = "ValidationError"


class IdempotencyKeyReused(ValidationFailed):
    """The same Idempotency-Key sent with a different request."""

    code = "IdempotencyKeyReused"


class Unavailable(AppError):
    """A dependency (the database, Redis) cannot be reached right now. Unlike a 500 it
    says "try again": the request may well succeed once the dependency is back."""

    status_code = 503
    code = "Unavailable"
    retry_after_s = 5
    """Sent as ``Retry-After``: about how long a dependency takes to come back."""

    def __init__(
        self, detail: str = "The service is temporarily unavailable; try again shortly."
    ) -> None:
        super().__init__(detail)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says a dependency cannot be
    reached — connection refused, reset or timed out, the database shutting down or
    starting up, a connection lost mid-statement, no pooled connection in time, the
    SQLite file gone — as opposed to an error in the request or the data (an integrity
    or syntax error, a missing table), which retrying would not cure."""
    seen: BaseException | None = exc
    for _ in range(8):  # a driver error is wrapped a few times (SQLAlchemy, the adapter)
        if seen is None:
            return False
        if _means_unreachable(seen):
            return True
        seen = seen.__cause__
    return False


TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014"})
"""Serialization failure, deadlock, lock not available (``lock_timeout``, ``NOWAIT``),
statement cancelled (``statement_timeout``): the database gave up on this attempt, and
the same statement may well pass the next time."""
_SQLITE_TRANSIENT = ("database is locked", "database table is locked")
"""SQLite's busy timeout ran out while another writer held the file."""


def failure_code(exc: BaseException) -> ErrorCode:
    """The ``ErrorCode`` of an item whose apply raised ``exc``: ``transient`` when the
    database gave up on the attempt (a deadlock, serialization failure, lock or statement
    timeout, a lost connection — ``TRANSIENT_SQLSTATES``, ``is_unavailable``), so a retry
    may pass as it is; ``internal`` for anything else (a bug or bad data: retrying
    repeats it)."""
    if is_unavailable(exc):
        return ErrorCode.TRANSIENT
    seen: BaseException | None = exc
    for _ in range(8):  # SQLAlchemy wraps the adapter's error, which wraps the driver's
        if seen is None:
            break
        state = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if state in TRANSIENT_SQLSTATES:
            return ErrorCode.TRANSIENT
        if isinstance(seen, sqlite3.OperationalError) and str(seen).startswith(_SQLITE_TRANSIENT):
            return ErrorCode.TRANSIENT
        seen = getattr(seen, "orig", None) or seen.__cause__
    return ErrorCode.INTERNAL


def _means_unreachable(exc: BaseException) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True  # refused, reset, broken pipe, unresolvable host, connect timeout
    if isinstance(exc, PoolTimeoutError | RedisConnectionError | RedisTimeoutError):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return str(exc) in _SQLITE_UNREACHABLE
    return isinstance(exc, _asyncpg_unreachable())


_SQLITE_UNREACHABLE = frozenset({"unable to open database file", "disk I/O error"})
"""SQLite's messages for a database file it cannot reach (its other operational errors,
"no such table", "database is locked", are not outages)."""


def _asyncpg_unreachable() -> tuple[type[BaseException], ...]:
    """asyncpg's errors for a server that is down, shutting down, starting up or out of
    connection slots (raised as they are when a new connection fails)."""
    try:
        from asyncpg import exceptions as pg
    except ImportError:  # pragma: no cover - asyncpg is a dependency, but optional here
        return ()
    return (
        pg.PostgresConnectionError,
        pg.ConnectionDoesNotExistError,
        pg.CannotConnectNowError,
        pg.AdminShutdownError,
        pg.CrashShutdownError,
        pg.TooManyConnectionsError,
    )
