"""The approval workbook's columns — one definition shared by the template export, the
import and the error file, so a file batchd writes is always one it can read back.

Columns, in order: Task ID (protected), Title, Department, the node's ``read`` fields
(protected), its ``write`` fields (required ones marked `` *``), Decision, Comment.
``hidden`` fields never appear. The import matches a header by its label or its field
name, case-insensitively and without the `` *`` mark, in any column order; columns it
does not know are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from app.workflow.forms import NodeRules, field_mode

REQUIRED_MARK = " *"
TASK_ID = "Task ID"
TITLE = "Title"
DEPARTMENT = "Department"
DECISION = "Decision"
COMMENT = "Comment"
ERROR = "Error"
"""The error file's extra last column (ignored by the import)."""
DECISIONS = ("approve", "reject")

Kind = Literal[
    "task_id", "title", "department", "read", "write", "decision", "comment", "other", "error"
]
"""``other``: a column the layout does not know, kept as the person typed it (an
error file repeats it, editable); ``error``: the error file's read-only Error column."""


@dataclass(frozen=True)
class Column:
    kind: Kind
    header: str
    """What row 1 shows."""
    field: dict[str, Any] | None = None
    """The form field spec (``read`` / ``write`` columns)."""
    required: bool = False

    @property
    def name(self) -> str:
        """The field name, or the header for the fixed columns."""
        return str(self.field["name"]) if self.field else self.header

    @property
    def editable(self) -> bool:
        return self.kind in ("write", "decision", "comment", "other")

    def matches(self, header: Any) -> bool:
        if not isinstance(header, str):
            return False
        wanted = header.strip().removesuffix(REQUIRED_MARK.strip()).strip().casefold()
        names = {self.header.removesuffix(REQUIRED_MARK).casefold(), self.name.casefold()}
        return wanted in names


def approval_columns(form: list[dict[str, Any]], node: dict[str, Any]) -> list[Column]:
    """The columns for tasks at ``node`` (the node's view config decides them)."""
    rules = NodeRules.build(form, node)
    columns = [Column("task_id", TASK_ID), Column("title", TITLE), Column("department", DEPARTMENT)]
    reads = [f for f in form if field_mode(node, f["name"]) == "read"]
    writes = [f for f in form if f["name"] in rules.writable]
    columns += [Column("read", _label(f), f) for f in reads]
    for f in writes:
        required = f["name"] in rules.required
        columns.append(
            Column("write", _label(f) + (REQUIRED_MARK if required else ""), f, required)
        )
    columns += [Column("decision", DECISION, required=True), Column("comment", COMMENT)]
    return columns


def match_headers(headers: list[Any], columns: list[Column]) -> dict[int, Column]:
    """Position in the sheet → column, for every header the import knows."""
    found: dict[int, Column] = {}
    taken: set[str] = set()
    for i, header in enumerate(headers):
        for column in columns:
            if column.header not in taken and column.matches(header):
                found[i] = column
                taken.add(column.header)
                break
    return found


def sheet_columns(headers: list[str], columns: list[Column]) -> list[Column]:
    """A sheet's own headers as columns of ``columns`` (the header text kept as the
    sheet has it), ``other`` for a header the layout does not know — so a file written
    back (the error file) has the template's validations and protection in the
    person's own column order."""
    found = match_headers(list(headers), columns)
    return [
        replace(found[i], header=h) if i in found else Column("other", h)
        for i, h in enumerate(headers)
    ]


def _label(field: dict[str, Any]) -> str:
    return str(field.get("label") or field["name"])
