"""Pydantic request/response models (the HTTP contract)."""

from app.schemas.common import (
    ID_MAX,
    NO_NUL,
    DbInt,
    ErrorBody,
    Id,
    Page,
    StrictModel,
    error_responses,
    unstorable,
)

__all__ = [
    "ID_MAX",
    "NO_NUL",
    "DbInt",
    "ErrorBody",
    "Id",
    "Page",
    "StrictModel",
    "error_responses",
    "unstorable",
]
