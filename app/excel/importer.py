"""Importing a filled approval template: an .xlsx with one row per task, or a .zip of
vertical per-task workbooks, becomes the rows of a ``task.approve`` batch.

``import_batch`` streams: ``open_upload`` (blocking, run in a thread) checks the file —
a zip at all, then everything ``app.excel.guard`` limits (members, sizes, and what each
part holds, counted as it streams, before openpyxl reads any of it), the header row —
and then yields the rows from openpyxl's read-only mode a page at a time;
``RowChecker`` checks each page as an approval would be checked, with the engine's own
dry run, so a row's error is exactly the sentence the batch would have given, prefixed
with its row ("row 7: Category must be one of travel, meals, other"); the checked page
goes to a spool on disk (``app.batches.spool``), and the batch is created from the
spool. Nothing but one page and the duplicate index is in memory at a time, and
nothing is written to the database until the whole file has been read. At most
``BATCH_IMPORT_CONCURRENCY`` uploads are read at once per process (``ImportSlots``): the
limits bound one upload's memory and CPU, the slots bound their number.

One sheet is for one node: its columns (``app.excel.layout``) are those of the node of
the first row whose task the caller can see; a task at another node fails. A zip's
workbooks are one task each, so each is read against its own task's node.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import shutil
import tempfile
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import service
from app.batches.resolve import Listed, Resolved
from app.batches.spool import ListedSpool
from app.config import Settings
from app.db.bulk import id_in
from app.domain import DetailStatus, Outcome
from app.errors import AppError, TooLarge, Unavailable, ValidationFailed
from app.excel.guard import Budget, Package
from app.excel.layout import (
    DECISION,
    DECISIONS,
    ERROR,
    TASK_ID,
    Column,
    approval_columns,
    match_headers,
)
from app.models import Batch, ProcessDefinition, ProcessInstance, Task, User
from app.operations import get_operation
from app.schemas.batch import BatchCreate
from app.schemas.common import ID_MAX, unstorable
from app.workflow.approval import ApprovalInput, approve_tasks
from app.workflow.forms import find_node

MAX_COLUMNS = 1_000
"""A header row wider than this is not an approval template (a node has few fields)."""
COMMENT_MAX = 2_000
"""The longest comment ``task.approve`` accepts (``ApproveParams.comment``)."""
EXCEL_MAX_ROWS = 1_048_576
CHECK_PAGE = 500
"""Rows decided by one engine dry run (the event loop is never held long)."""
READ_PAGE = 2_000
"""Rows read by one call into the reading thread (the sheet is read, then checked, in
turn: reading while checking only made both wait for the GIL)."""
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
OLE_MAGIC = b"\xd0\xcf\x11\xe0"
"""An encrypted (password-protected) .xlsx, or an old .xls, is an OLE compound file."""
SPOOL_IN_MEMORY = 1024 * 1024
"""A workbook of a zip larger than this is copied to a temporary file to be read."""

_TASK_ID_COLUMN = Column("task_id", TASK_ID)
_DECISION_COLUMN = Column("decision", DECISION, required=True)


@dataclass
class Record:
    """One task row as read: its number (the sheet row, or the workbook's position in a
    zip), where it came from, and its (header, value) cells in sheet order."""

    row: int
    where: str
    cells: list[tuple[str, Any]]


@dataclass
class Upload:
    """An opened upload whose task records are read on demand — a page at a time, so a
    sheet of any length is never held whole. Blocking: call ``next_page`` in a thread.
    Close it when done (it holds the workbook or zip open)."""

    is_single: bool
    """The zip format (one vertical workbook per task)."""
    records: Iterator[Record]
    closing: Callable[[], None]

    def next_page(self, size: int) -> list[Record]:
        return list(itertools.islice(self.records, size))

    def close(self) -> None:
        self.closing()


@dataclass
class _Row:
    """A record on its way to a detail."""

    record: Record
    task_id: int | None = None
    error: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    decision_ok: bool = True
    duplicate: bool = False


# --------------------------------------------------------------------------- the flow


class Busy(Unavailable):
    """Every import slot stayed taken for ``BATCH_IMPORT_WAIT`` seconds (a 503 with
    Retry-After, like any other "try again shortly")."""

    retry_after_s = 10
    """About how long a turn takes to come free (an upload is read in seconds)."""


class ImportSlots:
    """How many uploads one process reads at once (``BATCH_IMPORT_CONCURRENCY``).

    Reading is CPU-bound Python in worker threads: every upload read at once adds its
    memory (openpyxl's shared strings and styles, within the ``app.excel.guard``
    limits) and takes its share of the GIL from the event loop. An upload waits for a
    slot; after ``BATCH_IMPORT_WAIT`` seconds it is answered 503 with Retry-After, so
    a burst of uploads neither piles up nor starves the rest of the API."""

    def __init__(self, size: int, wait_s: float) -> None:
        self._free = asyncio.Semaphore(size)
        self.wait_s = wait_s

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._free.acquire(), self.wait_s)
        except TimeoutError:
            raise Busy(
                "Too many uploads are being read right now; send the file again in a moment."
            ) from None
        try:
            yield
        finally:
            self._free.release()


async def import_batch(
    session: AsyncSession,
    settings: Settings,
    user: User,
    data: IO[bytes],
    priority: str,
    slots: ImportSlots,
) -> Batch:
    """The upload as a ``task.approve`` batch with one detail per task row (in the
    caller's transaction: a rejected upload writes nothing). The file is read, and its
    rows checked, in one of ``slots``; the batch is written after."""
    async with slots.hold():
        upload = await asyncio.to_thread(open_upload, data, settings)
        try:
            spool = await read_upload(session, user, upload)
        finally:
            upload.close()
    with spool:
        if not len(spool):
            raise ValidationFailed(
                "The file holds no task rows.", fields=[{"loc": ["file"], "msg": "no task rows"}]
            )
        resolved = Resolved(
            op=get_operation("task.approve"),
            params={},
            listed=spool,
            filter=None,
            total=len(spool),
            seed_until=0,
            source="excel",
            is_single=upload.is_single,
        )
        req = BatchCreate(type="task.approve", ids=[], priority=priority, params={})
        batch, _created = await service.create_batch(
            session, settings, user, req, resolved=resolved
        )
    return batch


# --------------------------------------------------------------------------- parsing


def _bad_file(detail: str) -> ValidationFailed:
    return ValidationFailed(detail, fields=[{"loc": ["file"], "msg": detail}])


def open_upload(data: IO[bytes], settings: Settings) -> Upload:
    """Open an uploaded .xlsx or .zip (blocking: call it in a thread). 422 for anything
    that is not one of them, 413 past the limits of ``app.excel.guard`` (checked before
    anything is extracted, then as each part streams); the header row (or the zip's
    list of workbooks) is checked here; the rows are read by ``Upload.next_page`` (413
    past the row limit while reading)."""
    data.seek(0)
    magic = data.read(4)
    data.seek(0)
    if not magic:
        raise _bad_file("The file is empty; upload an .xlsx workbook or a .zip of workbooks.")
    if magic == OLE_MAGIC:
        raise _bad_file(
            "The file is a password-protected workbook or an old .xls file; "
            "save it as an .xlsx without a password."
        )
    if magic not in (ZIP_MAGIC, EMPTY_ZIP_MAGIC):
        raise _bad_file("The file is not an .xlsx workbook or a .zip of workbooks.")
    budget = Budget.of(settings)
    try:
        package = Package(data, budget, "the upload")
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _bad_file("The file is not a readable .xlsx workbook or .zip.") from exc
    try:
        names = set(package.namelist())
        if "xl/workbook.xml" not in names and "[Content_Types].xml" not in names:
            members = _workbook_members(package, settings)
            return Upload(True, _zip_of_workbooks(package, members, budget), package.close)
        wb = _open_workbook(package, "The file is not a readable .xlsx workbook.")
    except BaseException:
        package.close()
        raise
    try:
        records = _horizontal(wb.worksheets[0], settings.max_import_rows)
    except BaseException:
        wb.close()
        raise
    return Upload(False, records, wb.close)


def _open_workbook(package: Package, unreadable: str) -> Any:
    """The package's workbook in read-only mode (rows are streamed from the zip, memory
    stays flat); closing it closes the package."""
    try:
        wb = package.workbook()
        if not wb.worksheets:
            raise ValueError("no worksheet")
    except AppError:
        raise
    except Exception as exc:  # openpyxl raises many kinds on a corrupt file
        raise _bad_file(unreadable) from exc
    return wb


def _rows(sheet: Any, *, first: int, last: int, width: int) -> Any:
    """Rows ``first``..``last``, ``width`` cells each. Explicit bounds: without them
    openpyxl reads the whole sheet once more just to learn its size when the file
    does not state it (a write-only openpyxl file does not)."""
    try:
        yield from sheet.iter_rows(
            min_row=first, max_row=last, max_col=max(width, 1), values_only=True
        )
    except (TooLarge, ValidationFailed):
        raise
    except Exception as exc:
        raise _bad_file("The workbook could not be read; it may be damaged.") from exc


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _header(value: Any) -> str | None:
    return None if _blank(value) else str(value).strip()


def _horizontal(sheet: Any, limit: int) -> Iterator[Record]:
    """One task per row; headers in row 1 (trailing blank ones dropped), checked now;
    the rows are read as the records are asked for."""
    first = next(_rows(sheet, first=1, last=1, width=MAX_COLUMNS + 1), None)
    headers = [_header(h) for h in first or ()]
    while headers and headers[-1] is None:
        headers.pop()
    if not headers:
        raise _bad_file("The sheet is empty: row 1 must hold the column headers.")
    if len(headers) > MAX_COLUMNS:
        raise _bad_file("The sheet has more columns than any template has.")
    _require_columns(headers, "The sheet")
    rows = _rows(sheet, first=2, last=EXCEL_MAX_ROWS, width=len(headers))
    return _horizontal_rows(rows, headers, limit)


def _horizontal_rows(rows: Any, headers: list[str | None], limit: int) -> Iterator[Record]:
    count = 0
    width = len(headers)
    for number, values in enumerate(rows, start=2):
        values = values[:width]
        if all(_blank(v) for v in values):
            continue
        if count >= limit:
            raise TooLarge(f"The sheet holds more than {limit} task rows (BATCH_MAX_IMPORT_ROWS).")
        count += 1
        cells = [
            (h, _plain(values[i] if i < len(values) else None))
            for i, h in enumerate(headers)
            if h is not None
        ]
        yield Record(number, f"row {number}", cells)


def _require_columns(headers: list[str | None], what: str) -> None:
    missing = [
        c.header for c in (_TASK_ID_COLUMN, _DECISION_COLUMN) if not any(map(c.matches, headers))
    ]
    if missing:
        names = " and ".join(missing)
        raise _bad_file(f"{what} has no {names} column; it is not an approval template.")


def _workbook_members(archive: zipfile.ZipFile, settings: Settings) -> list[zipfile.ZipInfo]:
    """The zip's workbooks, in zip order (folders, macOS resource forks and Excel's
    ``~$`` lock files skipped); 422 for none, 413 past the row limit. (``Package`` has
    held each of them to ``BATCH_MAX_PART_BYTES`` already.)"""
    members = [
        m
        for m in archive.infolist()
        if not m.is_dir()
        and m.filename.lower().endswith(".xlsx")
        and not m.filename.startswith("__MACOSX/")
        and not m.filename.rsplit("/", 1)[-1].startswith("~$")
    ]
    if not members:
        raise _bad_file("The zip holds no .xlsx workbooks.")
    if len(members) > settings.max_import_rows:
        raise TooLarge(
            f"The zip holds {len(members)} workbooks; the limit is "
            f"{settings.max_import_rows} task rows (BATCH_MAX_IMPORT_ROWS)."
        )
    return members


def _zip_of_workbooks(
    archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], budget: Budget
) -> Iterator[Record]:
    """One vertical workbook per task (Field | Value), read as the records are asked
    for; each is a package of its own, held to the same limits, within the upload's
    budget."""
    for position, member in enumerate(members, start=1):
        name = member.filename.rsplit("/", 1)[-1]
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as copy:
            try:
                with archive.open(member) as src:
                    shutil.copyfileobj(src, copy)
            except Exception as exc:
                raise _bad_file(f"{name} in the zip could not be read.") from exc
            try:
                inner = Package(copy, budget, name)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise _bad_file(f"{name} in the zip is not an .xlsx workbook.") from exc
            try:
                wb = _open_workbook(inner, f"{name} in the zip is not a readable .xlsx workbook.")
            except BaseException:
                inner.close()
                raise
            try:
                cells = _vertical_cells(wb.worksheets[0])
            finally:
                wb.close()
        _require_columns([h for h, _ in cells], name)
        yield Record(position, f"row {position} ({name})", cells)


def _vertical_cells(sheet: Any) -> list[tuple[str, Any]]:
    """Column A names the field, column B holds its value; a "Field | Value" header row
    and rows without a field name are skipped."""
    cells: list[tuple[str, Any]] = []
    for values in _rows(sheet, first=1, last=MAX_COLUMNS + 2, width=2):
        name = _header(values[0]) if values else None
        if name is None or (not cells and name.casefold() == "field"):
            continue
        cells.append((name, _plain(values[1] if len(values) > 1 else None)))
        if len(cells) > MAX_COLUMNS:
            raise _bad_file("A workbook in the zip has more rows than any template has fields.")
    return cells


def _plain(value: Any) -> Any:
    """A cell as JSON: dates ISO (a date without a time of day as YYYY-MM-DD), text
    stripped of surrounding blanks, and errors / NaN as their text."""
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) else value.isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if value is None:
        return None
    text = str(value).strip()
    return text or None


# --------------------------------------------------------------------------- validation


@dataclass
class _TaskInfo:
    definition_id: int
    node_id: str
    assignee_id: int | None


async def read_upload(session: AsyncSession, user: User, upload: Upload) -> ListedSpool:
    """Every record of ``upload`` checked (``RowChecker``), a page at a time, into a
    spool: memory stays flat whatever the number of rows. The caller closes the spool."""
    checker = RowChecker(session, user, upload.is_single)
    spool = ListedSpool()
    try:
        while records := await asyncio.to_thread(upload.next_page, READ_PAGE):
            for start in range(0, len(records), CHECK_PAGE):
                spool.append(await checker.check(records[start : start + CHECK_PAGE]))
    except BaseException:
        spool.close()
        raise
    return spool


class RowChecker:
    """Checks records as approvals, page by page in sheet order, remembering across
    pages what a row is compared with: the first row of each task (a later one is a
    duplicate) and the sheet's node (that of the first row whose task the caller can
    see)."""

    def __init__(self, session: AsyncSession, user: User, is_single: bool) -> None:
        self.session = session
        self.user = user
        self.is_single = is_single
        self.first_row: dict[int, int] = {}
        self.layouts = _Layouts(session)
        self.sheet_node: tuple[int, str] | None = None
        self.matched: dict[tuple[tuple[int, str] | None, tuple[str, ...]], dict[int, Column]] = {}

    async def check(self, records: list[Record]) -> Listed:
        """Valid records become pending items with their row payload, the others
        pre-failed items with "row N: <why>" — all with the row's original cells
        (``payload["cells"]``) so the error file can repeat them."""
        rows = [_Row(r) for r in records]
        for row in rows:
            _parse_task_id(row)
            if row.task_id is not None and row.error is None:
                earlier = self.first_row.setdefault(row.task_id, row.record.row)
                if earlier != row.record.row:
                    row.error = f"task {row.task_id} is already in row {earlier}"
                    row.duplicate = True
        session, user = self.session, self.user
        infos = await _task_infos(session, [r.task_id for r in rows if r.task_id is not None])
        visible = {
            tid: info
            for tid, info in infos.items()
            if user.is_admin or (info.assignee_id is not None and info.assignee_id == user.id)
        }
        if not self.is_single and self.sheet_node is None:
            self.sheet_node = next(
                (
                    (visible[r.task_id].definition_id, visible[r.task_id].node_id)
                    for r in rows
                    if r.task_id in visible
                ),
                None,
            )
        for row in rows:
            await self._read_row(row, visible)
        await _engine_check(session, user, rows)
        listed = Listed(item_ids=[], rows=[], payloads=[], errors=[])
        assert listed.rows is not None and listed.payloads is not None
        assert listed.errors is not None
        for row in rows:
            listed.item_ids.append(row.task_id or 0)
            listed.rows.append(row.record.row)
            row.payload["cells"] = [[h, v] for h, v in row.record.cells if h != ERROR]
            listed.payloads.append(row.payload)
            listed.errors.append(f"{row.record.where}: {row.error}" if row.error else None)
        return listed

    async def _columns_of(self, node: tuple[int, str] | None, record: Record) -> dict[int, Column]:
        """Position in the record → column of ``node``'s layout (the headers of a sheet
        are the same on every row: matched once)."""
        headers = tuple(h for h, _ in record.cells)
        key = (node, headers)
        if key not in self.matched:
            self.matched[key] = match_headers(list(headers), await self.layouts.columns(node))
        return self.matched[key]

    async def _read_row(self, row: _Row, visible: dict[int, _TaskInfo]) -> None:
        """The row's payload by its node's columns (the sheet's, or in a zip its own
        task's), and its error if its task is at another node than the sheet's."""
        tid = row.task_id
        own = visible.get(tid) if tid is not None else None
        here = (own.definition_id, own.node_id) if own else None
        node = here if self.is_single else self.sheet_node
        _read_payload(row, await self._columns_of(node, row.record))
        if row.error is None and here is not None and node is not None and here != node:
            layouts = self.layouts
            row.error = (
                f"Task {tid} is at step {await layouts.node_name(here)}, not at step "
                f"{await layouts.node_name(node)} like this sheet."
            )


def _parse_task_id(row: _Row) -> None:
    raw = next((v for h, v in row.record.cells if _TASK_ID_COLUMN.matches(h)), None)
    if _blank(raw):
        row.error = "Task ID is required"
        return
    value = _whole_number(raw)
    if value is None or not 1 <= value <= ID_MAX:
        row.error = f"Task ID must be a whole number, not {str(raw)[:50]!r}"
        return
    row.task_id = value


def _whole_number(raw: Any) -> int | None:
    """An integer cell, or text of ASCII digits only: ``str.isdigit`` also accepts "²"
    (which ``int`` refuses) and "٣" (which ``int`` reads as 3)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        if 0 < len(text) <= 19 and text.isascii() and text.isdigit():
            return int(text)
    return None


def _read_payload(row: _Row, found: dict[int, Column]) -> None:
    """The row's decision, comment and write-field values (``found``: the position of
    each known column; a blank cell leaves a field as it is); a bad decision or an
    unstorable value is the row's error."""
    cells = row.record.cells
    form_data: dict[str, Any] = {}
    decision: str | None = None
    comment: Any = None
    for index, column in found.items():
        value = cells[index][1]
        if column.kind == "decision":
            decision = None if _blank(value) else str(value).strip().casefold()
        elif column.kind == "comment":
            comment = None if _blank(value) else str(value)
        elif column.kind == "write" and not _blank(value):
            form_data[column.name] = value
    row.payload = {"decision": decision, "comment": comment, "form_data": form_data}
    if row.error is not None:
        return
    if decision is None:
        row.error, row.decision_ok = "Decision is required (approve or reject)", False
    elif decision not in DECISIONS:
        row.error, row.decision_ok = "Decision must be approve or reject", False
    elif comment is not None and len(comment) > COMMENT_MAX:
        row.error = f"Comment may be at most {COMMENT_MAX} characters"
    else:
        problem = unstorable(form_data)
        if problem:
            row.error = problem


async def _engine_check(session: AsyncSession, user: User, rows: list[_Row]) -> None:
    """The engine's own dry run for every row with a task (first occurrence): who may
    decide, pending, not locked, process active, and the form rules. The gate's answer
    ("does not exist", "already completed", "locked") comes before the sheet's own
    complaints, so a row never reveals anything about a task the caller cannot see."""
    checked = [r for r in rows if r.task_id is not None and not r.duplicate]
    for start in range(0, len(checked), CHECK_PAGE):
        page = checked[start : start + CHECK_PAGE]
        inputs = [
            ApprovalInput(
                task_id=r.task_id or 0,
                decision=r.payload["decision"] if r.decision_ok else "approve",
                comment=r.payload["comment"],
                form_data=r.payload["form_data"],
            )
            for r in page
        ]
        outcomes = await approve_tasks(session, user.id, inputs, dry_run=True)
        for row, outcome in zip(page, outcomes, strict=True):
            if outcome.status != DetailStatus.SUCCESS and (_gate(outcome) or row.error is None):
                row.error = outcome.error or "The task cannot be decided."


def _gate(outcome: Outcome) -> bool:
    return outcome.status == DetailStatus.IGNORED or outcome.error_code in (
        "not_found",
        "forbidden",
        "locked",
    )


async def _task_infos(session: AsyncSession, ids: list[int]) -> dict[int, _TaskInfo]:
    unique = sorted(set(ids))
    found: dict[int, _TaskInfo] = {}
    for start in range(0, len(unique), 5_000):
        page = unique[start : start + 5_000]
        result = await session.execute(
            select(Task.id, ProcessInstance.definition_id, Task.node_id, Task.assignee_id)
            .join(ProcessInstance, ProcessInstance.id == Task.instance_id)
            .where(id_in(session, Task.id, page))
        )
        for tid, def_id, node_id, assignee in result:
            found[tid] = _TaskInfo(def_id, node_id, assignee)
    return found


class _Layouts:
    """The columns and name of each (definition, node), loaded once."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.definitions: dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        self.cache: dict[tuple[int, str] | None, list[Column]] = {}

    async def _definition(self, def_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if def_id not in self.definitions:
            d = await self.session.get(ProcessDefinition, def_id)
            self.definitions[def_id] = (d.form or [], d.nodes or []) if d else ([], [])
        return self.definitions[def_id]

    async def _node(self, key: tuple[int, str]) -> dict[str, Any] | None:
        _form, nodes = await self._definition(key[0])
        found = find_node(nodes, key[1])
        return found[1] if found else None

    async def columns(self, key: tuple[int, str] | None) -> list[Column]:
        if key not in self.cache:
            node = await self._node(key) if key else None
            form = (await self._definition(key[0]))[0] if key and node else []
            self.cache[key] = approval_columns(form, node or {"fields": {}})
        return self.cache[key]

    async def node_name(self, key: tuple[int, str]) -> str:
        node = await self._node(key)
        return str((node or {}).get("name") or key[1])
