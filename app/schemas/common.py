"""Shapes shared by every resource: the paginated list, the error body, the strict
request base, and id/text bounds that keep unstorable input a 422 instead of a 500
(ids beyond BIGINT, NUL characters, NaN, text over 10 000 characters, oversized forms)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)
from pydantic_core import PydanticCustomError

T = TypeVar("T")

ID_MAX = 2**63 - 1
"""The largest value a BIGINT column holds: a bigger id is a 422, never a driver error."""
NO_NUL = r"^[^\x00]*$"
"""``pattern=`` for query/path strings: PostgreSQL text cannot hold NUL characters."""
TEXT_MAX = 10_000
"""The longest text value accepted anywhere in a JSON request body."""
PAGE_SIZE_MAX = 1000
"""The largest ``page_size`` of any list (``BATCH_MAX_PAGE_SIZE`` may only lower it)."""
FORM_KEYS_MAX = 200
"""The most keys a ``form_data`` / ``variables`` object may hold."""
NESTING_MAX = 32
"""The deepest a JSON value may nest (objects and lists): deeper values could be stored
but not read back (JSON serialisers stop at a few hundred levels)."""

Id = Annotated[int, Field(ge=1, le=ID_MAX)]
DbInt = Annotated[int, Field(ge=-ID_MAX, le=ID_MAX)]

# The same bounds for path and query parameters.
IdPath = Annotated[int, Path(ge=1, le=ID_MAX)]
IntQuery = Annotated[int | None, Query(ge=-ID_MAX, le=ID_MAX)]
KeyQuery = Annotated[str | None, Query(max_length=100, pattern=NO_NUL)]


def parse_id(raw: str) -> int | None:
    """An id written in a URL or a header (``"42"``), or None. ASCII digits only:
    ``str.isdigit`` also accepts "²" and "٣", which ``int`` refuses or reads as 3."""
    raw = raw.strip()
    if not (0 < len(raw) <= 19 and raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if 1 <= value <= ID_MAX else None


def unstorable(value: Any) -> str | None:
    """Why a JSON value cannot be stored and read back on every backend, or None: NUL
    in text and NaN/Infinity (Python's JSON parser accepts both; PostgreSQL rejects
    them), lone surrogates (``"\\udfff"`` parses to a string no UTF-8 encoder takes),
    text over ``TEXT_MAX`` characters and nesting deeper than ``NESTING_MAX``. A problem
    below the top level names where it is (``"note: …"``)."""
    found = _problem(value, NESTING_MAX)
    if found is None:
        return None
    path, problem = found
    return f"{'.'.join(map(printable, path))}: {problem}" if path else problem


def printable(text: str) -> str:
    """``text`` with lone surrogates replaced, so an error message that quotes a
    caller's key can always be encoded."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def _text_problem(text: str) -> str | None:
    if len(text) > TEXT_MAX:
        return f"text may be at most {TEXT_MAX} characters, got {len(text)}"
    if "\x00" in text:
        return "text must not contain NUL characters"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "text must be valid Unicode (no lone surrogate escapes)"
    return None


def _problem(value: Any, depth: int) -> tuple[list[str], str] | None:
    if isinstance(value, str):
        problem = _text_problem(value)
        return None if problem is None else ([], problem)
    if isinstance(value, float):
        return None if math.isfinite(value) else ([], "numbers must be finite")
    if isinstance(value, (dict, list, tuple)) and depth <= 0:
        return [], f"values may nest at most {NESTING_MAX} levels deep"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _problem(key, depth - 1)
            if found is not None:
                return found[0], f"a key: {found[1]}"
            found = _problem(item, depth - 1)
            if found is not None:
                return [str(key), *found[0]], found[1]
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if type(item) is int:  # the common case (1M ids): nothing to check
                continue
            found = _problem(item, depth - 1)
            if found is not None:
                return [str(index), *found[0]], found[1]
    return None


def _few_keys(value: Any) -> Any:
    """Refuse an oversized bag before its keys are validated one by one, so 100 000
    unknown keys give one short error instead of 100 000."""
    if isinstance(value, dict) and len(value) > FORM_KEYS_MAX:
        raise PydanticCustomError(
            "too_many_keys",
            "may hold at most {limit} fields, got {count}",
            {"limit": FORM_KEYS_MAX, "count": len(value)},
        )
    return value


def _storable_value(value: Any) -> Any:
    """One form value: the same rules as ``unstorable``, reported under its key."""
    problem = unstorable(value)
    if problem is None:
        return value
    if problem == "numbers must be finite":
        raise PydanticCustomError("finite_number", "must be a finite number")
    raise PydanticCustomError("unstorable", problem)


FormValue = Annotated[Any, AfterValidator(_storable_value)]
FormBag = Annotated[
    dict[str, FormValue],
    BeforeValidator(_few_keys),
    Field(
        description=(
            f"Form field name → value; at most {FORM_KEYS_MAX} fields, text at most "
            f"{TEXT_MAX} characters, numbers finite."
        ),
        json_schema_extra={"maxProperties": FORM_KEYS_MAX},
    ),
]
"""``form_data`` / ``variables`` of a request: at most ``FORM_KEYS_MAX`` keys, every
value storable; a problem is a 422 located at the key (``form_data.amount``)."""


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
    """The list shape: ``{"items", "total", "page", "page_size"}``.

    Generic so every resource (tasks, instances, batches, details) documents its own
    item type in OpenAPI: ``Page[TaskListItem]``.
    """

    items: list[T]
    total: int
    page: int
    page_size: int
    total_exact: bool = Field(
        default=True,
        description=(
            "False when `total` is PostgreSQL's estimate: the task and instance lists "
            "count their matches exactly up to 10 000, and estimate beyond (an exact "
            "count of a million rows would take seconds of every page)."
        ),
    )


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

    from app.errors import MAX_LISTED_ERRORS, ValidationFailed, join_messages

    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        fields = [
            {"loc": [part, *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in errors[:MAX_LISTED_ERRORS]
        ]
        messages = [f"{'.'.join(f['loc'][1:]) or part}: {f['msg']}" for f in fields]
        messages += [""] * (len(errors) - len(fields))  # counted as "and N more"
        detail = join_messages(messages)
        raise ValidationFailed(f"{what}: {detail}", fields=fields) from None
