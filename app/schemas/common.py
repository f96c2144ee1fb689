"""Shapes shared by every resource: the paginated list, the error body, the strict
request base, and id/text bounds that keep unstorable input a 422 instead of a 500
(ids beyond BIGINT, NUL characters, NaN)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

T = TypeVar("T")

ID_MAX = 2**63 - 1
"""The largest value a BIGINT column holds: a bigger id is a 422, never a driver error."""
NO_NUL = r"^[^\x00]*$"
"""``pattern=`` for query/path strings: PostgreSQL text cannot hold NUL characters."""

Id = Annotated[int, Field(ge=1, le=ID_MAX)]
DbInt = Annotated[int, Field(ge=-ID_MAX, le=ID_MAX)]

# The same bounds for path and query parameters.
IdPath = Annotated[int, Path(ge=1, le=ID_MAX)]
IntQuery = Annotated[int | None, Query(ge=-ID_MAX, le=ID_MAX)]
KeyQuery = Annotated[str | None, Query(max_length=100, pattern=NO_NUL)]
KeywordQuery = Annotated[
    str | None,
    Query(max_length=200, pattern=NO_NUL, description="Substring of title or business key."),
]


def unstorable(value: Any) -> str | None:
    """Why a JSON value cannot be stored on every backend (NUL in text, NaN/Infinity),
    or None. Python's JSON parser accepts both; PostgreSQL rejects them with a 500."""
    if isinstance(value, str):
        return "text must not contain NUL characters" if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = unstorable(key) or unstorable(item)
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for item in value:
            problem = unstorable(item)
            if problem:
                return problem
    return None


class StrictModel(BaseModel):
    """Base of request bodies: unknown keys are a 422 (a typo is never silently
    ignored), and no value may be one the database cannot store."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        problem = unstorable(value)
        if problem:
            raise ValueError(problem)
        return value


class Page(BaseModel, Generic[T]):
    """DESIGN.md §4 list shape: ``{"items", "total", "page", "page_size"}``.

    Generic so every resource (tasks, instances, batches, details) documents its own
    item type in OpenAPI: ``Page[TaskListItem]``.
    """

    items: list[T]
    total: int
    page: int
    page_size: int


class FieldErrorOut(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None = None


class ErrorBody(BaseModel):
    """What every 4xx looks like (rendered by the handler in app.main); for OpenAPI."""

    error: str
    detail: str
    fields: list[FieldErrorOut] | None = None


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route, so OpenAPI shows the error body for each status."""
    return {code: {"model": ErrorBody} for code in codes}


M = TypeVar("M", bound=BaseModel)


def validate_part(model: type[M], raw: Any, *, part: str, what: str) -> M:
    """Validate one part of a request body (``params``, ``filter``) against the model
    chosen at run time; errors become a 422 whose field locations start with ``part``."""
    from pydantic import ValidationError

    from app.errors import ValidationFailed

    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        fields = [
            {"loc": [part, *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(f['loc'][1:]) or part}: {f['msg']}" for f in fields)
        raise ValidationFailed(f"{what}: {detail}", fields=fields) from None
