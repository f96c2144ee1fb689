"""``GET /batches/{id}/error-file``: the failed items of a batch as an xlsx that can be
fixed and imported again.

Built on demand from the failed details, so it is always the current one (also after
a retry finishes):

- an Excel batch: each failed row's original cells (``payload["cells"]``) in the
  original column order, then ``Error``;
- an API ``task.approve`` batch: the failed tasks in the layout of their node
  (``app.excel.layout``; the node of the first failed task the creator can see), their
  current values with the batch's form data, decision and comment, then ``Error`` — a
  task the creator cannot see shows only its id and its error;
- any other type: item_id, title, Error.

An approval error file *is* a template (``app.excel.template.SheetWriter`` writes
both): the node's dropdowns and number / date / length validations, the hidden option
sheet, the frozen header row, real date cells, the same protection (header locked,
rows deletable, read-only columns refusing typing) — plus the read-only ``Error``
column. The node is that of the first failed task the creator can see; an imported
row's own headers are kept in their own order, and a column the layout does not know
is repeated as it was.

The import ignores the ``Error`` column, so a fixed file imports as it is. Details are
read page by page in short transactions and written with openpyxl's write-only mode
to a temporary file (in a thread), built whole before the response starts
(``app.excel.built``: a failure is an error response, never a truncated 200). Every
value goes through ``app.excel.cells.text_cell``: formula-looking text is written as
text, characters XML cannot hold as U+FFFD.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from openpyxl import Workbook
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.pages import keyset_pages
from app.domain import DetailStatus
from app.excel.built import BuiltFile, build_file
from app.excel.cells import text_cell
from app.excel.layout import ERROR, Column, approval_columns, sheet_columns
from app.excel.template import SheetWriter, display
from app.models import Batch, BatchDetail, ProcessDefinition, ProcessInstance, Task, User
from app.operations import get_operation
from app.workflow.forms import find_node

PAGE = 2_000
SHEET = "Errors"


async def has_failed(session: AsyncSession, batch: Batch) -> bool:
    return bool(
        await session.scalar(
            select(
                exists().where(
                    BatchDetail.batch_id == batch.id, BatchDetail.status == DetailStatus.FAILED
                )
            )
        )
    )


async def _failed_pages(
    sm: async_sessionmaker[AsyncSession], batch: Batch, columns: Sequence[Any]
) -> AsyncIterator[Sequence[Any]]:
    """Failed details in detail-id order, a page per short transaction; each row is
    (detail id, *columns)."""
    query = select(BatchDetail.id, *columns).where(
        BatchDetail.batch_id == batch.id, BatchDetail.status == DetailStatus.FAILED
    )
    async for rows in keyset_pages(sm, query, BatchDetail.id, PAGE):
        yield rows


def _error_of(row: int | None, error: str | None) -> str:
    """The detail's error, with its row when the sentence does not already say it."""
    text = error or "Failed."
    return text if row is None or text.startswith("row ") else f"row {row}: {text}"


async def build(sm: async_sessionmaker[AsyncSession], batch: Batch) -> BuiltFile:
    """The workbook, built whole in a temporary file. Values are shown as the batch's
    creator may see them (like the results export): an error file never shows more
    than the item errors do."""
    async with sm() as session:
        creator = await session.get(User, batch.creator_id)
    assert creator is not None  # users are never deleted

    async def write(path: str) -> None:
        if batch.source == "excel":
            await _excel_rows(sm, batch, creator, path)
        elif batch.type == "task.approve":
            await _approval_rows(sm, batch, creator, path)
        else:
            await _plain_rows(sm, batch, creator, path)

    return await build_file(write, prefix="batchd-errors-", suffix=".xlsx")


def _append(ws: Any, rows: list[list[Any]]) -> None:
    for values in rows:
        ws.append([text_cell(ws, v) for v in values])


def _cells(payload: dict[str, Any] | None) -> list[tuple[str, Any]]:
    raw = (payload or {}).get("cells") or []
    return [(str(c[0]), c[1]) for c in raw if isinstance(c, list) and len(c) == 2]


def _visible(creator: User, r: Any) -> bool:
    """Whether the creator may see the failed row's task (and so its node's layout)."""
    return r.definition_id is not None and (creator.is_admin or r.assignee_id == creator.id)


_NODE_OF = (Task.assignee_id, Task.node_id, ProcessInstance.definition_id)


async def _excel_rows(
    sm: async_sessionmaker[AsyncSession], batch: Batch, creator: User, path: str
) -> None:
    """Original cells in the original order (the union of every failed row's headers:
    one list for a sheet, the workbooks' fields for a zip) laid out as the node's
    template, then Error."""
    headers: dict[str, None] = {}
    first: Any = None
    async for page in _failed_pages_joined(sm, batch, (BatchDetail.payload, *_NODE_OF)):
        for r in page:
            headers.update(dict.fromkeys(h for h, _ in _cells(r.payload) if h != ERROR))
            if first is None and _visible(creator, r):
                first = r
    names = list(headers) or ["Task ID"]
    columns = [*sheet_columns(names, await _node_columns(sm, first)), Column("error", ERROR)]
    id_header = next((c.header for c in columns if c.kind == "task_id"), names[0])
    writer = SheetWriter(columns, SHEET)
    cols = (BatchDetail.item_id, BatchDetail.row, BatchDetail.error, BatchDetail.payload)
    async for page in _failed_pages(sm, batch, cols):
        out = []
        for _id, item_id, row, error, payload in page:
            cells = dict(_cells(payload)) or {id_header: item_id}
            values = [_shown(c, cells.get(c.header)) for c in columns[:-1]]
            out.append([*values, _error_of(row, error)])
        await asyncio.to_thread(writer.append_values, out)
    await asyncio.to_thread(writer.save, path)


def _shown(column: Column, value: Any) -> Any:
    """A stored value as the template shows it (a date field as a date cell)."""
    return display(column.field, value) if column.kind in ("read", "write") else value


async def _approval_rows(
    sm: async_sessionmaker[AsyncSession], batch: Batch, creator: User, path: str
) -> None:
    params = batch.params or {}
    cols = (
        BatchDetail.item_id,
        BatchDetail.row,
        BatchDetail.error,
        *_NODE_OF,
        ProcessInstance.title,
        ProcessInstance.department_id,
        ProcessInstance.form_data,
    )
    writer: SheetWriter | None = None
    columns: list[Column] = []
    async for page in _failed_pages_joined(sm, batch, cols):
        if writer is None:
            first = next((r for r in page if _visible(creator, r)), None)
            columns = await _node_columns(sm, first)
            writer = SheetWriter([*columns, Column("error", ERROR)], SHEET)
        rows = [
            [
                *_approval_values(columns, r if _visible(creator, r) else None, r.item_id, params),
                _error_of(None, r.error),
            ]
            for r in page
        ]
        await asyncio.to_thread(writer.append_values, rows)
    if writer is None:  # the failures were retried away meanwhile: the bare layout
        writer = SheetWriter([*await _node_columns(sm, None), Column("error", ERROR)], SHEET)
    await asyncio.to_thread(writer.save, path)


async def _failed_pages_joined(
    sm: async_sessionmaker[AsyncSession], batch: Batch, columns: Sequence[Any]
) -> AsyncIterator[Sequence[Any]]:
    query = (
        select(BatchDetail.id, *columns)
        .outerjoin(Task, Task.id == BatchDetail.item_id)
        .outerjoin(ProcessInstance, ProcessInstance.id == Task.instance_id)
        .where(BatchDetail.batch_id == batch.id, BatchDetail.status == DetailStatus.FAILED)
    )
    async for rows in keyset_pages(sm, query, BatchDetail.id, PAGE):
        yield rows


async def _node_columns(sm: async_sessionmaker[AsyncSession], first: Any) -> list[Column]:
    if first is None:
        return approval_columns([], {"fields": {}})
    async with sm() as session:
        definition = await session.get(ProcessDefinition, first.definition_id)
    form = (definition.form if definition else None) or []
    found = find_node((definition.nodes if definition else None) or [], first.node_id)
    return approval_columns(form, found[1] if found else {"fields": {}})


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return None
    return value


def _approval_values(
    columns: list[Column], r: Any | None, item_id: int, params: dict[str, Any]
) -> list[Any]:
    """One task's row: current values (the batch's form data over them), the batch's
    decision and comment; only the id for a task the creator cannot see."""
    form_data = {**((r.form_data if r is not None else None) or {})}
    if r is not None:
        form_data.update(params.get("form_data") or {})
    values: list[Any] = []
    for c in columns:
        if c.kind == "task_id":
            values.append(item_id)
        elif c.kind == "decision":
            values.append(params.get("decision") or "approve")
        elif c.kind == "comment":
            values.append(params.get("comment"))
        elif r is None:
            values.append(None)
        elif c.kind == "title":
            values.append(r.title)
        elif c.kind == "department":
            values.append(r.department_id)
        else:
            values.append(_shown(c, _cell(form_data.get(c.name))))
    return values


async def _plain_rows(
    sm: async_sessionmaker[AsyncSession], batch: Batch, creator: User, path: str
) -> None:
    """item_id, title, Error: nothing here is imported again."""
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(SHEET)
    ws.freeze_panes = "A2"
    target = get_operation(batch.type).target
    title = target.title_of(BatchDetail.item_id, creator).label("title")
    await asyncio.to_thread(_append, ws, [["item_id", "title", ERROR]])
    cols = (BatchDetail.item_id, BatchDetail.row, BatchDetail.error, title)
    async for page in _failed_pages(sm, batch, cols):
        rows = [[item_id, t, _error_of(row, error)] for _id, item_id, row, error, t in page]
        await asyncio.to_thread(_append, ws, rows)
    await asyncio.to_thread(wb.save, path)
