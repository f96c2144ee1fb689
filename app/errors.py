"""Typed application errors; one handler renders them as DESIGN.md §4's JSON shape."""

from __future__ import annotations

from typing import Any

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
    """The same Idempotency-Key sent with a different request (DESIGN.md §4)."""

    code = "IdempotencyKeyReused"
