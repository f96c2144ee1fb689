"""Each filter declared once: the fields a list (and a filter batch) of tasks,
instances or archives may be narrowed by — name, type, description, and which column(s)
the value is matched against and how.

Everything else is derived from these declarations, so the four places a filter shows
up cannot drift apart: the Pydantic body model of a batch's ``filter``
(``body_model``), the list endpoint's query parameters (``query_dependency``), the SQL
``WHERE`` clauses (``app.workflow.queries.filter_clauses``) and the console's filter form
(``app.web``).

The SQL side names ORM columns (this layer sits above ``app.models``); turning a
``Match`` into a clause is ``app.workflow.queries``' job.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, get_args, get_origin

from fastapi import Query
from pydantic import AwareDatetime, Field, create_model

from app.models import InstanceArchive, ProcessInstance, Task
from app.schemas.common import NO_NUL, DbInt, StrictModel
from app.schemas.engine import InstanceStatus, TaskStatus, UtcDatetime


class Match(enum.Enum):
    """How a value narrows the rows (a blank or absent value never does)."""

    EQUALS = "equals"
    """``column = value``."""
    CONTAINS = "contains"
    """Any of the columns contains the trimmed value, case-insensitively."""
    AT_OR_AFTER = "at_or_after"
    """``column >= value`` (inclusive) ..."""
    BEFORE = "before"
    """... and ``column < value`` (exclusive): consecutive windows neither overlap nor
    leave a gap."""
    ONE_OF = "one_of"
    """``column IN (values)``; an empty list matches nothing."""


class Kind(enum.StrEnum):
    """What sort of value a field holds, as a form (and the JSON it sends) needs it."""

    CHOICE = "choice"
    INTEGER = "integer"
    DATETIME = "datetime"
    TEXT = "text"


class Lookup(enum.StrEnum):
    """Where the console finds the values of a free-text field to offer as choices."""

    DEFINITION = "definition"
    """The keys of the definitions the viewer can list."""
    NODE = "node"
    """The node ids of those definitions (of the chosen one, when one is chosen)."""


@dataclass(frozen=True)
class FilterField:
    """One filter field of a list, declared once."""

    name: str
    label: str
    """What the console's form calls it."""
    description: str
    type: Any
    """The value's type (never optional: every filter field is)."""
    columns: tuple[Any, ...]
    """The ORM column(s) the value is matched against."""
    match: Match = Match.EQUALS
    max_length: int | None = None
    """Bounded text is also refused with NUL characters as a query parameter."""
    in_batch: bool = True
    """False for a list-only field: a filter batch fixes it itself (a ``task.approve``
    batch picks the creator's pending tasks)."""
    in_console: bool = True
    """False for a field the console sets itself (the viewer's own tasks) or never
    offers (a list of ids)."""
    lookup: Lookup | None = None

    @property
    def kind(self) -> Kind:
        """Read from ``type``, so a form control cannot disagree with what the API takes."""
        base = get_args(self.type)[0] if get_origin(self.type) is Annotated else self.type
        if isinstance(base, type) and issubclass(base, enum.Enum):
            return Kind.CHOICE
        if base is int:
            return Kind.INTEGER
        if base in (datetime, AwareDatetime):
            return Kind.DATETIME
        return Kind.TEXT

    @property
    def choices(self) -> list[str]:
        """The allowed values of a ``CHOICE`` field, in declaration order."""
        return [str(member.value) for member in self.type] if self.kind is Kind.CHOICE else []

    def query_annotation(self) -> Any:
        """The list endpoint's query parameter: optional, bounded like the body field."""
        bounded = self.max_length is not None
        return Annotated[
            self.type | None,
            Query(
                max_length=self.max_length,
                pattern=NO_NUL if bounded else None,
                description=self.description,
            ),
        ]


@dataclass(frozen=True)
class FilterSet:
    """The filter fields of one target (tasks, instances, archives)."""

    fields: tuple[FilterField, ...]

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate filter field in {self.names}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def batch_fields(self) -> tuple[FilterField, ...]:
        return tuple(f for f in self.fields if f.in_batch)

    @property
    def console_fields(self) -> tuple[FilterField, ...]:
        return tuple(f for f in self.fields if f.in_console)

    def body_model(self, name: str, doc: str) -> type[StrictModel]:
        """The ``filter`` of a batch body (and its OpenAPI component ``name``): the
        batch fields, each optional; unknown keys are a 422 (``StrictModel``)."""
        definitions: dict[str, Any] = {
            f.name: (
                f.type | None,
                Field(default=None, max_length=f.max_length, description=f.description),
            )
            for f in self.batch_fields
        }
        return create_model(name, __base__=StrictModel, __doc__=doc, **definitions)

    def query_dependency(self) -> Callable[..., dict[str, Any]]:
        """A FastAPI dependency taking every field as an optional query parameter (in
        declaration order) and returning the given ones by name; FastAPI reads the
        parameters from its signature, so names, types, bounds and errors follow the
        declaration."""

        def given_filters(**values: Any) -> dict[str, Any]:
            return {name: value for name, value in values.items() if value is not None}

        given_filters.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=f.query_annotation(),
                )
                for f in self.fields
            ],
            return_annotation=dict[str, Any],
        )
        return given_filters


def _definition_key(column: Any) -> FilterField:
    """The same field on every target, matched against the table that holds the key."""
    return FilterField(
        "definition_key",
        "Definition",
        "Key of the process definition.",
        str,
        (column,),
        max_length=100,
        lookup=Lookup.DEFINITION,
    )


_KEYWORD = FilterField(
    "keyword",
    "Keyword",
    "Substring of title or business key.",
    str,
    (ProcessInstance.title, ProcessInstance.business_key),
    Match.CONTAINS,
    max_length=200,
)
_DEPARTMENT = FilterField(
    "department_id",
    "Department",
    "The instance's department.",
    DbInt,
    (ProcessInstance.department_id,),
)

TASK_FILTERS = FilterSet(
    (
        FilterField(
            "status",
            "Status",
            "The task's status.",
            TaskStatus,
            (Task.status,),
            in_batch=False,
        ),
        _definition_key(ProcessInstance.definition_key),
        FilterField(
            "node_id",
            "Node",
            "The step the task is at.",
            str,
            (Task.node_id,),
            max_length=100,
            lookup=Lookup.NODE,
        ),
        _KEYWORD,
        _DEPARTMENT,
        FilterField(
            "assignee_id",
            "Assignee",
            "The task's assignee (a user only ever sees their own tasks).",
            DbInt,
            (Task.assignee_id,),
            in_batch=False,
            in_console=False,
        ),
        FilterField(
            "ids",
            "Tasks",
            "Comma-separated task ids; an empty value matches nothing.",
            str,
            (Task.id,),
            Match.ONE_OF,
            in_batch=False,
            in_console=False,
        ),
    )
)
"""Tasks; the columns are on ``tasks`` and ``process_instances`` (select them joined)."""

INSTANCE_FILTERS = FilterSet(
    (
        FilterField(
            "status",
            "Status",
            "The instance's status.",
            InstanceStatus,
            (ProcessInstance.status,),
        ),
        _definition_key(ProcessInstance.definition_key),
        _KEYWORD,
        _DEPARTMENT,
        FilterField(
            "business_key",
            "Business key",
            "Exact business key.",
            str,
            (ProcessInstance.business_key,),
            max_length=200,
        ),
        FilterField(
            "started_after",
            "Started after",
            "Created at or after (ISO 8601 with an offset, e.g. 2026-01-01T00:00Z).",
            UtcDatetime,
            (ProcessInstance.created_at,),
            Match.AT_OR_AFTER,
        ),
        FilterField(
            "started_before",
            "Started before",
            "Created strictly before (ISO 8601 with an offset).",
            UtcDatetime,
            (ProcessInstance.created_at,),
            Match.BEFORE,
        ),
    )
)

ARCHIVE_FILTERS = FilterSet((_definition_key(InstanceArchive.definition_key),))
