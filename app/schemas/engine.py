"""Request and response models of the local approval engine: users, definitions,
instances, tasks and node views.

Request models forbid unknown keys, so a typo is a 422 and never silently ignored.
Cross-field rules of a definition (unique names, references between nodes and form
fields, existing assignees) are checked in ``app.workflow.definitions`` so that every
problem is reported at once with its exact location.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)

from app.schemas.common import DbInt, FormBag, Id, StrictModel

FieldType = Literal["text", "number", "date", "select", "multiselect", "bool"]
FieldMode = Literal["hidden", "read", "write"]


# Named enums (not Literals) so OpenAPI has one reusable component per vocabulary and a
# generated client one enum class, instead of an inline enum per field.
class Role(enum.StrEnum):
    ADMIN = "admin"
    USER = "user"


class InstanceStatus(enum.StrEnum):
    """``active`` until it completes, is rejected or is terminated."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    REJECTED = "rejected"
    TERMINATED = "terminated"


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Decision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


# Keys and node ids appear in URL paths (/nodes/{key}/{node_id}/view), so keep them plain.
SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _to_utc(value: datetime) -> datetime:
    """Normalise to UTC so a stored filter reads the same whatever offset was sent; a
    value that leaves the datetime range in UTC (``0001-01-01T00:00+01:00``) is a 422,
    not an ``OverflowError`` at query time."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be a datetime within years 1..9999 in UTC") from None


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_text(value: Any) -> Any:
    """Only ISO 8601 text: pydantic would also read a number (``0.5``, ``"1700000000"``)
    as seconds since 1970, which nobody filtering by date means."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value.strip()):
        raise ValueError("must be an ISO 8601 datetime with an offset, e.g. 2026-01-01T00:00Z")
    return value


UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_to_utc)]
"""An ISO 8601 datetime WITH an offset (a naive one is a 422: its meaning would depend
on the server's clock), returned in UTC."""


class OrmModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- users -----------------------------------------------------------------------------


class UserCreate(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.USER
    department_id: DbInt | None = None


class UserOut(OrmModel):
    id: int
    name: str
    role: Role
    department_id: int | None


class Me(UserOut):
    monitor_keys: list[str] = Field(
        default_factory=list, description="Definition keys this user holds a monitor grant for."
    )


class UserCreated(UserOut):
    token: str = Field(description="The bearer token; shown only in this response.")


class NewToken(BaseModel):
    token: str = Field(
        description="The new bearer token; shown only in this response. The old token "
        "and the user's browser sessions are refused from now on."
    )


class GrantCreate(StrictModel):
    definition_key: str = Field(min_length=1, max_length=100, pattern=SLUG)


class GrantOut(OrmModel):
    id: int
    user_id: int
    definition_key: str
    created_at: datetime


# --- definitions -----------------------------------------------------------------------


class FormFieldIn(StrictModel):
    name: str = Field(min_length=1, max_length=100, pattern=FIELD_NAME)
    label: str = Field(min_length=1, max_length=200)
    type: FieldType
    options: list[str] | None = Field(default=None, max_length=1000)
    required: bool = False


class NodeIn(StrictModel):
    id: str = Field(min_length=1, max_length=100, pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)
    assignee_id: Id
    fields: dict[str, FieldMode] = Field(default_factory=dict)
    required: list[str] = Field(default_factory=list)
    searchable: list[str] = Field(default_factory=list)


class DefinitionCreate(StrictModel):
    key: str = Field(min_length=1, max_length=100, pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)
    form: list[FormFieldIn] = Field(default_factory=list, max_length=500)
    nodes: list[NodeIn] = Field(min_length=1, max_length=200)


class DefinitionOut(OrmModel):
    id: int
    key: str
    version: int
    name: str
    form: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    created_at: datetime


# --- tasks, instances, logs ------------------------------------------------------------


class TaskOut(OrmModel):
    id: int
    instance_id: int
    node_id: str
    assignee_id: int
    status: TaskStatus
    decision: Decision | None
    comment: str | None
    locked_by_batch_id: int | None
    created_at: datetime
    completed_at: datetime | None


class TaskListItem(TaskOut):
    """A task with the instance columns a task list shows (one joined query)."""

    title: str
    business_key: str | None
    definition_key: str
    department_id: int | None
    instance_status: InstanceStatus
    form_data: dict[str, Any] = Field(
        default_factory=dict,
        description="The process's form values that the task's step shows (fields hidden "
        "at that step are left out).",
    )


class ProcessLogOut(OrmModel):
    id: int
    instance_id: int
    task_id: int | None
    actor_id: int | None
    batch_id: int | None
    action: str
    message: str | None
    created_at: datetime


class InstanceCreate(StrictModel):
    definition_key: str = Field(min_length=1, max_length=100)
    title: str = Field(min_length=1, max_length=500)
    department_id: DbInt | None = Field(
        default=None, description="Defaults to the caller's department."
    )
    business_key: str | None = Field(default=None, max_length=200)
    form_data: FormBag = Field(default_factory=dict)


class InstanceOut(OrmModel):
    id: int
    definition_id: int
    definition_key: str
    title: str
    business_key: str | None
    department_id: int | None
    initiator_id: int
    status: InstanceStatus
    current_node_id: str | None
    form_data: dict[str, Any]
    variables: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class InstanceDetail(InstanceOut):
    tasks: list[TaskOut]
    logs: list[ProcessLogOut]


class ApproveRequest(StrictModel):
    decision: Decision
    comment: str | None = Field(default=None, max_length=10_000)
    form_data: FormBag | None = None
    next_assignee_id: Id | None = None


class ApproveResult(BaseModel):
    """The approved task and the instance after the step (new status / current node)."""

    task: TaskOut
    instance: InstanceOut


# --- node view -------------------------------------------------------------------------


class NodeFieldView(BaseModel):
    name: str
    label: str
    type: str
    options: list[str]
    visible: bool
    searchable: bool
    writable: bool
    required: bool


class NodeView(BaseModel):
    definition_key: str
    version: int
    node_id: str
    node_name: str
    fields: list[NodeFieldView]


# --- archives --------------------------------------------------------------------------


class ArchiveSummary(OrmModel):
    """One snapshot taken before an instance was deleted (list item)."""

    id: int
    instance_id: int
    definition_key: str
    deleted_by: int | None = Field(description="The user who deleted the instance.")
    batch_id: int | None = Field(description="The batch that deleted it, if any.")
    created_at: datetime


class ArchiveDetail(ArchiveSummary):
    """The summary plus the snapshot exactly as stored."""

    snapshot: dict[str, Any] = Field(
        description='As archived: {"instance": {…}, "tasks": [{…}], "logs": [{…}]}.'
    )
