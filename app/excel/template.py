"""The approval template: the caller's pending tasks at one node of a definition, as a
workbook to fill in and import.

Which tasks: those at the node in every version of the definition whose node has the
latest version's columns (a new version that only renamed another step, as the demo's
``expense`` v2 does, changes nothing for this one): the template holds what the task
list shows at that step. A version whose step has other columns would need another
sheet; its tasks are left out, and named when that leaves the template empty. An
empty template is a 422 that says why, never a file with nothing to decide.

- ``xlsx``: sheet "Tasks", one row per task, the columns of
  :func:`app.excel.layout.approval_columns` (the import reads the same layout back);
- ``zip``: one workbook per task (``task-<id>.xlsx``), sheet "Task" with a vertical
  ``Field | Value`` form in the same column order.

Option lists live on a hidden sheet "Lists" that the validations reference, so a long
option list never hits Excel's 255-character limit on inline lists. The sheets are
protected without a password: protection here is a guard against editing the wrong
column by accident, not security — any tool removes it, with or without a password —
and the import checks every value again (read-only columns are never applied).

Memory stays flat: the task ids are resolved once (≤ ``MAX_TASKS`` integers), rows are
read in pages by id, each page in its own short transaction, and workbooks are built
with openpyxl's write-only mode into a temporary file, in a thread. The file is built
whole before the response starts (``app.excel.built``), then streamed from disk. Every
text goes through ``app.excel.cells`` (a title or form value holding a control
character is written with U+FFFD in its place).
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator, Sequence
from copy import copy
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, Literal, TypeAlias

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font, PatternFill, Protection
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.worksheet.dimensions import ColumnDimension
from openpyxl.worksheet.worksheet import Worksheet
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import NotFound, TooLarge, ValidationFailed
from app.excel.built import BuiltFile, build_file
from app.excel.cells import comment, text_cell, validation
from app.excel.layout import DECISIONS, Column, approval_columns
from app.models import ProcessDefinition, ProcessInstance, Task, User
from app.schemas.common import TEXT_MAX
from app.workflow.definitions import latest_definition
from app.workflow.forms import NUMBER_MAX, find_node
from app.workflow.queries import TASK_INSTANCE_JOIN, task_filter_clauses

Format = Literal["xlsx", "zip"]
Sheet: TypeAlias = Any
"""A ``WriteOnlyWorksheet`` (the 50 000-row sheet) or a ``Worksheet`` (a task's small
form); openpyxl is untyped."""

MAX_TASKS = 50_000
"""The most tasks one xlsx template holds (well below ``BATCH_MAX_ITEMS``: a sheet a
person fills in; 50 000 rows build in seconds with flat memory)."""
ZIP_MAX_TASKS = 1_000
"""The most tasks one zip holds: a workbook per task costs 10–20 ms to build (openpyxl
writes a whole package each time), so 1 000 take 10–20 s before the first byte (5 000
took 108 s in bench/excel_template.py); more belong in the xlsx variant."""
PAGE = 2_000
"""Task ids per query while building (also keeps ``IN (…)`` far below every driver's
bind-parameter limit)."""

SHEET = "Tasks"
FORM_SHEET = "Task"
LISTS_SHEET = "Lists"
FORM_HEADERS = ("Field", "Value")
DATE_FORMAT = "yyyy-mm-dd"
YES, NO = "yes", "no"
DEFAULT_WIDTH = 9.140625
"""Excel's own width of a column nobody has resized (Calibri 11)."""
EXCEL_MAX_COLUMN = 16_384
"""Column XFD: a ``<col>`` range up to here covers every column of a row."""
EXCEL_DATE_MIN, EXCEL_DATE_MAX = 1, 2958465
"""Excel serials of 1900-01-01 and 9999-12-31: "any date" for a date validation."""

COMMENT_MAX = 2_000
"""The longest approval comment (``ApproveParams.comment``, app/operations/tasks.py)."""

UNLOCKED = Protection(locked=False)
HEADER_FONT = Font(bold=True)
REQUIRED_FONT = Font(bold=True, color="C00000")
EDITABLE_FILL = PatternFill("solid", fgColor="E2EFDA")
PROTECTED_FILL = PatternFill("solid", fgColor="D9D9D9")


@dataclass(frozen=True)
class TemplateSource:
    """What a template shows, resolved in the request (so 404/413 come before any byte)."""

    user_id: int
    definition_ids: tuple[int, ...]
    """The versions whose node has the columns below (the latest one first)."""
    definition_key: str
    node_id: str
    columns: list[Column]
    task_ids: list[int]
    """Ascending; at most ``MAX_TASKS`` (``ZIP_MAX_TASKS`` for zip)."""
    skipped: int
    """Requested ``task_ids`` that are not the caller's pending tasks at this node."""
    extra: dict[str, Any]
    """The request's ``filter`` (re-applied while reading, like the task list)."""

    def clauses(self) -> list[ColumnElement[bool]]:
        """The caller's own pending tasks at the node of these definition versions —
        for an admin too: a template is for deciding, and only the assignee decides."""
        return [
            Task.assignee_id == self.user_id,
            Task.status == "pending",
            Task.node_id == self.node_id,
            ProcessInstance.definition_id.in_(self.definition_ids),
            *task_filter_clauses(None, **self.extra),
        ]


@dataclass(frozen=True)
class TaskData:
    id: int
    title: str
    department_id: int | None
    form_data: dict[str, Any]


def limit_for(fmt: Format) -> int:
    return ZIP_MAX_TASKS if fmt == "zip" else MAX_TASKS


async def resolve(
    session: AsyncSession,
    user: User,
    *,
    definition_key: str,
    node_id: str,
    fmt: Format,
    filter: dict[str, Any] | None = None,
    task_ids: Sequence[int] | None = None,
) -> TemplateSource:
    """The template's columns and task ids. 404 for an unknown definition or node;
    413 beyond ``limit_for(fmt)`` tasks; 422 when no task would be in it. Listed ids
    that are not the caller's pending tasks at that node are left out and counted
    (``skipped``), never an error by themselves: a list copied from yesterday's task
    list should still give today's template."""
    definition = await latest_definition(session, definition_key)
    if definition is None:
        raise NotFound(f"Definition '{definition_key}' does not exist.")
    found = find_node(definition.nodes, node_id)
    if found is None:
        raise NotFound(f"Definition '{definition_key}' has no node '{node_id}'.")
    columns = approval_columns(definition.form, found[1])
    alike, other = await _versions_alike(session, definition, node_id, columns)
    limit = limit_for(fmt)
    source = TemplateSource(
        user_id=user.id,
        definition_ids=alike,
        definition_key=definition.key,
        node_id=node_id,
        columns=columns,
        task_ids=[],
        skipped=0,
        extra={k: v for k, v in (filter or {}).items() if v is not None},
    )
    base = select(Task.id).join(ProcessInstance, TASK_INSTANCE_JOIN).where(*source.clauses())
    ids: list[int] = []
    skipped = 0
    if task_ids is None:
        ids = list(await session.scalars(base.order_by(Task.id).limit(limit + 1)))
    else:
        wanted = sorted(set(task_ids))
        if len(wanted) > limit:
            raise too_many(len(wanted), fmt)
        for i in range(0, len(wanted), PAGE):
            chunk = wanted[i : i + PAGE]
            ids += await session.scalars(base.where(Task.id.in_(chunk)).order_by(Task.id))
        skipped = len(wanted) - len(ids)
    if len(ids) > limit:
        raise too_many(None, fmt)
    if not ids:
        step = str(found[1].get("name") or node_id)
        raise await _empty(session, replace(source, definition_ids=other), step, task_ids)
    return replace(source, task_ids=ids, skipped=skipped)


async def _versions_alike(
    session: AsyncSession, latest: ProcessDefinition, node_id: str, columns: list[Column]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ids of the definition's versions whose ``node_id`` has these ``columns``
    (the latest first), and of those where the node has other columns."""
    versions = await session.scalars(
        select(ProcessDefinition)
        .where(ProcessDefinition.key == latest.key)
        .order_by(ProcessDefinition.version.desc())
    )
    alike: list[int] = []
    other: list[int] = []
    for version in versions:
        node = find_node(version.nodes, node_id)
        if node is None:
            continue
        same = approval_columns(version.form, node[1]) == columns
        (alike if same else other).append(version.id)
    return tuple(alike), tuple(other)


async def _empty(
    session: AsyncSession, elsewhere: TemplateSource, step: str, task_ids: Sequence[int] | None
) -> ValidationFailed:
    """The 422 for a template without a task: what was asked for, and — when the
    caller's pending tasks at this step are on versions whose step has other columns —
    how many and what to do about them (they are the caller's own: nothing is revealed)."""
    where = f"at step {step} of {elsewhere.definition_key}"
    if task_ids is not None:
        n = len(set(task_ids))
        what = (
            f"None of the {n} listed task{'s' if n != 1 else ''} is a pending task of yours {where}"
        )
    elif elsewhere.extra:
        what = f"None of your pending tasks {where} matches the filter"
    else:
        what = f"You have no pending tasks {where}"
    detail = f"{what}: the template would be empty."
    if elsewhere.definition_ids:
        version = ProcessDefinition.version
        query = (
            select(func.count(), func.min(version), func.max(version))
            .select_from(Task)
            .join(ProcessInstance, TASK_INSTANCE_JOIN)
            .join(ProcessDefinition, ProcessDefinition.id == ProcessInstance.definition_id)
            .where(*elsewhere.clauses())
        )
        if task_ids is not None:
            query = query.where(Task.id.in_(sorted(set(task_ids))[:PAGE]))
        n, first, last = (await session.execute(query)).one()
        if n:
            versions = f"version {first}" if first == last else f"versions {first}–{last}"
            detail += (
                f" {n} pending task{'s' if n != 1 else ''} of yours there "
                f"{'are' if n != 1 else 'is'} on {versions}, whose step has other columns: "
                "migrate those instances to the latest version (instance.migrate), or "
                "decide them in the task list."
            )
    return ValidationFailed(detail, fields=[{"loc": ["body", "node_id"], "msg": "no tasks"}])


def too_many(count: int | None, fmt: Format) -> TooLarge:
    """The 413 for a template over ``limit_for(fmt)`` tasks (``count`` when known)."""
    limit = limit_for(fmt)
    what = f"{count} tasks" if count is not None else f"more than {limit} tasks"
    hint = " Use format xlsx, or" if fmt == "zip" else ""
    return TooLarge(
        f"A {fmt} template holds at most {limit} tasks; this one would hold {what}.{hint} "
        "Narrow the filter or split the task ids."
    )


async def _pages(
    sm: async_sessionmaker[AsyncSession], source: TemplateSource
) -> AsyncIterator[list[TaskData]]:
    """The tasks, ``PAGE`` ids at a time, each page in its own short transaction. A
    task decided since the request was resolved simply drops out."""
    query = (
        select(Task.id, ProcessInstance.title, ProcessInstance.department_id)
        .add_columns(ProcessInstance.form_data)
        .join(ProcessInstance, TASK_INSTANCE_JOIN)
        .where(*source.clauses())
        .order_by(Task.id)
    )
    for i in range(0, len(source.task_ids), PAGE):
        chunk = source.task_ids[i : i + PAGE]
        async with sm() as session:
            rows = (await session.execute(query.where(Task.id.in_(chunk)))).all()
        yield [TaskData(r[0], r[1], r[2], r[3] or {}) for r in rows]


# ----------------------------------------------------------------------------- values


def display(spec: dict[str, Any] | None, value: Any) -> Any:
    """A form value as the template shows it: dates as dates, bools as yes/no, a
    multiselect as comma-separated text (the import reads all three back)."""
    if value is None or value == "" or value == []:
        return None
    kind = (spec or {}).get("type", "text")
    if kind == "bool" and isinstance(value, bool):
        return YES if value else NO
    if kind == "multiselect" and isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if kind == "date":
        try:
            return date.fromisoformat(str(value).strip()[:10])
        except ValueError:
            return str(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return value if isinstance(value, str) else str(value)


def cell_value(column: Column, task: TaskData) -> Any:
    if column.kind == "task_id":
        return task.id
    if column.kind == "title":
        return task.title
    if column.kind == "department":
        return task.department_id
    if column.kind in ("read", "write"):
        return display(column.field, task.form_data.get(column.name))
    return None  # decision, comment: the person filling in decides


# ----------------------------------------------------------------------- validations


@dataclass(frozen=True)
class Lists:
    """Option lists on the hidden sheet: one column each (row 1 names it)."""

    columns: list[tuple[str, list[str]]]

    @classmethod
    def for_columns(cls, columns: Sequence[Column]) -> Lists:
        found: list[tuple[str, list[str]]] = [("Decision", list(DECISIONS))]
        for c in columns:
            if c.kind != "write" or c.field is None:
                continue
            kind = c.field.get("type", "text")
            if kind in ("select", "multiselect"):
                found.append((c.name, [str(o) for o in c.field.get("options") or []]))
            elif kind == "bool" and not any(name == "yes/no" for name, _ in found):
                found.append(("yes/no", [YES, NO]))
        return cls(found)

    def range_of(self, name: str) -> str:
        for i, (listed, options) in enumerate(self.columns, start=1):
            if listed == name:
                letter = get_column_letter(i)
                return f"{LISTS_SHEET}!${letter}$2:${letter}${max(len(options), 1) + 1}"
        raise KeyError(name)

    def write(self, wb: Workbook) -> None:
        ws = wb.create_sheet(LISTS_SHEET)
        ws.sheet_state = "hidden"
        ws.protection.sheet = True
        ws.append([text_cell(ws, name) for name, _ in self.columns])
        depth = max((len(options) for _, options in self.columns), default=0)
        for row in range(depth):
            ws.append(
                [
                    text_cell(ws, options[row] if row < len(options) else None)
                    for _, options in self.columns
                ]
            )


def validation_for(column: Column, lists: Lists) -> DataValidation | None:
    """The data validation of an editable column (None: free text)."""
    if column.kind == "decision":
        return _list_validation(lists.range_of("Decision"), "Choose approve or reject.")
    if column.kind == "comment":
        return _text_validation(COMMENT_MAX)
    if column.kind != "write" or column.field is None:
        return None
    spec = column.field
    kind = spec.get("type", "text")
    label = column.header
    if kind == "select":
        return _list_validation(lists.range_of(column.name), f"{label}: choose a listed value.")
    if kind == "multiselect":
        options = ", ".join(str(o) for o in spec.get("options") or [])
        dv = _list_validation(
            lists.range_of(column.name),
            f"{label}: one or more of {options}, separated by commas.",
        )
        # Excel cannot pick several list entries: "information" lets typed
        # comma-separated text through after a hint instead of refusing it.
        dv.errorStyle = "information"
        return dv
    if kind == "bool":
        return _list_validation(lists.range_of("yes/no"), f"{label}: choose yes or no.")
    if kind == "number":
        return validation(
            type="decimal",
            operator="between",
            formula1=str(-NUMBER_MAX),
            formula2=str(NUMBER_MAX),
            allow_blank=True,
            showErrorMessage=True,
            errorTitle="Not a number",
            error=f"{label} must be a number.",
        )
    if kind == "date":
        return validation(
            type="date",
            operator="between",
            formula1=str(EXCEL_DATE_MIN),
            formula2=str(EXCEL_DATE_MAX),
            allow_blank=True,
            showErrorMessage=True,
            errorTitle="Not a date",
            error=f"{label} must be a date (YYYY-MM-DD).",
        )
    return _text_validation(TEXT_MAX)


def _list_validation(formula: str, message: str) -> DataValidation:
    return validation(
        type="list",
        formula1=formula,
        allow_blank=True,
        showDropDown=False,  # (sic) False shows the in-cell dropdown arrow
        showErrorMessage=True,
        errorTitle="Not a listed value",
        error=message,
        showInputMessage=True,
        prompt=message,
    )


def _text_validation(longest: int) -> DataValidation:
    return validation(
        type="textLength",
        operator="lessThanOrEqual",
        formula1=str(longest),
        allow_blank=True,
        showErrorMessage=True,
        errorTitle="Too long",
        error=f"At most {longest} characters.",
    )


def header_comment(column: Column) -> str | None:
    """The hint a header carries (a multiselect cannot be multi-picked in Excel)."""
    if column.kind == "write" and column.field is not None:
        spec = column.field
        kind = spec.get("type", "text")
        parts = ["Required." if column.required else "Editable."]
        if kind == "multiselect":
            options = ", ".join(str(o) for o in spec.get("options") or [])
            parts.append(f"One or more of: {options} — separated by commas.")
        elif kind == "select":
            parts.append("Choose from the list.")
        elif kind == "bool":
            parts.append("yes or no.")
        elif kind == "date":
            parts.append("A date (YYYY-MM-DD).")
        elif kind == "number":
            parts.append("A number.")
        return " ".join(parts)
    if column.kind == "decision":
        return "approve or reject; a row left blank is skipped."
    if column.kind in ("task_id", "read"):
        return "Read only."
    if column.kind == "error":
        return "Why the row failed; the import ignores this column."
    return None


def column_width(column: Column) -> float:
    """Readable widths without measuring 50 000 rows (column widths are written before
    the first row in write-only mode)."""
    base = {
        "task_id": 10,
        "title": 40,
        "department": 12,
        "decision": 12,
        "comment": 40,
        "error": 60,
    }
    width = base.get(column.kind, 16)
    if column.field is not None and column.field.get("type") == "multiselect":
        width = 28
    return float(min(max(width, len(column.header) + 4), 60))


def _is_date(column: Column) -> bool:
    return column.field is not None and column.field.get("type") == "date"


def _style(ws: Sheet, *, editable: bool, is_date: bool) -> Any:
    """A style array to copy into each cell of a column (setting styles cell by cell
    would look them up 50 000 times)."""
    proto = WriteOnlyCell(ws)
    if editable:
        proto.protection = UNLOCKED
    if is_date:
        proto.number_format = DATE_FORMAT
    return proto._style


def _cell(ws: Sheet, value: Any, style: Any) -> WriteOnlyCell:
    cell = text_cell(ws, value)
    cell._style = copy(style)
    return cell


def _header_cell(ws: Sheet, column: Column, text: str) -> WriteOnlyCell:
    cell = text_cell(ws, text)
    cell.font = REQUIRED_FONT if column.required and column.kind == "write" else HEADER_FONT
    cell.fill = EDITABLE_FILL if column.editable else PROTECTED_FILL
    hint = header_comment(column)
    if hint:
        cell.comment = comment(hint, "batchd", width=260, height=90)
    return cell


def _protect(ws: Sheet, *, rows_deletable: bool = False) -> None:
    """Locked cells stay locked; people may still resize columns and rows, and on a
    sheet of tasks delete rows (``deleteRows="0"``: openpyxl's flags, like the XML's,
    say what is *protected*, so ``False`` allows). Excel and LibreOffice delete a row
    only when none of its cells is locked, so such a sheet unlocks every cell below the
    header (``SheetWriter``) and guards its read-only columns with a validation that
    refuses typing instead. Inserting stays refused: a new row has no task."""
    ws.protection.sheet = True
    ws.protection.formatColumns = False
    ws.protection.formatRows = False
    if rows_deletable:
        ws.protection.deleteRows = False


def read_only_validation(column: Column) -> DataValidation:
    """Refuses anything typed into a read-only column of a deletable-rows sheet (a
    formula that is never true): the guard its cells' lock would have been. Pasting
    still gets through, as with any validation; the import never applies these
    columns, and Task ID is checked against the caller's own pending tasks."""
    return validation(
        type="custom",
        formula1="FALSE",
        allow_blank=True,
        showErrorMessage=True,
        errorTitle="Read only",
        error=f"{column.header} is read only: batchd fills it in and does not import it.",
    )


def _unlock_columns(ws: Sheet, widths: Sequence[float]) -> None:
    """Every column of the sheet unlocked by default (its ``<col>`` style), the data
    columns with their widths: so a whole row — out to column XFD — holds no locked
    cell and may be deleted. The header's cells keep their own locked style."""
    unlocked = WriteOnlyCell(ws)
    unlocked.protection = UNLOCKED
    for i, width in enumerate(widths, start=1):
        dim = ws.column_dimensions[get_column_letter(i)]
        dim.width = width
        dim._style = copy(unlocked._style)
    rest = ColumnDimension(ws, index=get_column_letter(len(widths) + 1), width=DEFAULT_WIDTH)
    rest.min, rest.max = len(widths) + 1, EXCEL_MAX_COLUMN
    rest._style = copy(unlocked._style)
    ws.column_dimensions[get_column_letter(len(widths) + 1)] = rest


# --------------------------------------------------------------------------- writing


class SheetWriter:
    """A horizontal approval sheet, appended page by page: the template's "Tasks" sheet
    and the error file's "Errors" sheet alike — header row (fills, hints), frozen
    header, column widths, the protection (the header locked; rows deletable, so the
    cells below the header are unlocked and read-only columns refuse typing by
    validation), every editable column's validation and the hidden option sheet. One writer, so the
    error file is always a template one can fill in again."""

    def __init__(self, columns: list[Column], title: str = SHEET) -> None:
        self.columns = columns
        self.wb = Workbook(write_only=True)
        self.ws: WriteOnlyWorksheet = self.wb.create_sheet(title)
        self.lists = Lists.for_columns(columns)
        self.rows = 0
        ws = self.ws
        ws.freeze_panes = "A2"
        _protect(ws, rows_deletable=True)
        _unlock_columns(ws, [column_width(c) for c in columns])
        self.styles = [_style(ws, editable=True, is_date=_is_date(c)) for c in columns]
        ws.append([_header_cell(ws, c, c.header) for c in columns])

    def append(self, page: Sequence[TaskData]) -> None:
        """Tasks as the template shows them."""
        self.append_values([[cell_value(c, task) for c in self.columns] for task in page])

    def append_values(self, rows: Sequence[Sequence[Any]]) -> None:
        """Rows of values in column order (form values already as ``display`` gives them)."""
        ws, styles = self.ws, self.styles
        for values in rows:
            ws.append([_cell(ws, v, s) for v, s in zip(values, styles, strict=True)])
        self.rows += len(rows)

    def save(self, path: str) -> None:
        last = max(self.rows + 1, 2)
        for i, column in enumerate(self.columns, start=1):
            dv = (
                validation_for(column, self.lists)
                if column.editable
                else read_only_validation(column)
            )
            if dv is not None:
                letter = get_column_letter(i)
                dv.add(f"{letter}2:{letter}{last}")
                self.ws.data_validations.append(dv)
        self.lists.write(self.wb)
        self.wb.save(path)


def task_form(columns: list[Column], task: TaskData) -> bytes:
    """One task as a vertical form workbook: sheet "Task", ``Field | Value``, one row per
    column of the layout in the same order; write fields carry the same validations.

    A normal (not write-only) workbook: for a dozen cells, write-only mode's temporary
    file per sheet costs more than it saves."""
    wb = Workbook()
    ws = wb.active
    assert isinstance(ws, Worksheet)
    ws.title = FORM_SHEET
    lists = Lists.for_columns(columns)
    ws.freeze_panes = "A2"
    _protect(ws)
    longest = max((len(c.header) for c in columns), default=10)
    ws.column_dimensions["A"].width = float(min(longest + 4, 60))
    ws.column_dimensions["B"].width = 40.0
    ws.append([_plain_header(ws, h) for h in FORM_HEADERS])
    for row, column in enumerate(columns, start=2):
        name = _header_cell(ws, column, column.header)
        style = _style(ws, editable=column.editable, is_date=_is_date(column))
        ws.append([name, _cell(ws, cell_value(column, task), style)])
        dv = validation_for(column, lists) if column.editable else None
        if dv is not None:
            dv.add(f"B{row}")
            ws.data_validations.append(dv)
    lists.write(wb)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _plain_header(ws: Sheet, text: str) -> WriteOnlyCell:
    cell = text_cell(ws, text)
    cell.font = HEADER_FONT
    return cell


async def build(
    sm: async_sessionmaker[AsyncSession], source: TemplateSource, fmt: Format
) -> BuiltFile:
    """The template built whole (before the response starts): an xlsx, or a zip of one
    workbook per task."""
    if fmt == "zip":
        return await build_file(
            lambda path: _build_zip(sm, source, path), prefix="batchd-template-", suffix=".zip"
        )
    return await build_file(
        lambda path: _build_xlsx(sm, source, path), prefix="batchd-template-", suffix=".xlsx"
    )


async def _build_xlsx(
    sm: async_sessionmaker[AsyncSession], source: TemplateSource, path: str
) -> None:
    writer = SheetWriter(source.columns)
    async for page in _pages(sm, source):
        await asyncio.to_thread(writer.append, page)
    await asyncio.to_thread(writer.save, path)


async def _build_zip(
    sm: async_sessionmaker[AsyncSession], source: TemplateSource, path: str
) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        async for page in _pages(sm, source):
            await asyncio.to_thread(_zip_page, archive, source.columns, page)


def _zip_page(archive: zipfile.ZipFile, columns: list[Column], page: Sequence[TaskData]) -> None:
    for task in page:
        archive.writestr(f"task-{task.id}.xlsx", task_form(columns, task))
