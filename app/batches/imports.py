"""Importing a filled approval template as a ``task.approve`` batch: the records
``app.excel.reader`` reads from the upload become the batch's rows.

``import_batch`` streams: the reader opens the upload in a thread and yields its
records a page at a time; ``RowChecker`` checks each page as an approval would be
checked, with the workflow's own dry run, so a row's error is exactly the sentence the
batch would have given, prefixed with its row ("row 7: Category must be one of travel,
meals, other"); the checked page goes to a spool on disk (``app.batches.spool``), and
the batch is created from the spool. Nothing but one page and the duplicate index is
in memory at a time, and nothing is written to the database until the whole file has
been read. At most ``BATCH_IMPORT_CONCURRENCY`` uploads are read at once per process
(``ImportSlots``): the upload limits bound one upload's memory and CPU, the slots bound
their number.

One sheet is for one node: its columns (``app.excel.layout``) are those of the node of
the first row whose task the caller can see; a task at another node fails (the same
node of another version of the definition with the same columns is the same node: a
template holds those tasks together). A zip's
workbooks are one task each, so each is read against its own task's node.

A template holds every pending task at its node, and a person decides a few of them:
a row (or a zip's workbook) whose Decision is blank is *skipped* — not an item, not a
failure, whatever else it holds — and only counted (``Batch.skipped_rows``). A file in
which no row has a Decision is refused (422) rather than made an empty batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import service
from app.batches.resolve import Listed, Resolved
from app.batches.spool import ListedSpool
from app.config import Settings
from app.db.bulk import id_in
from app.domain import DetailStatus, ErrorCode, Outcome
from app.errors import Unavailable, ValidationFailed
from app.excel.cells import xml_text
from app.excel.layout import DECISIONS, ERROR, TITLE, Column, approval_columns, match_headers
from app.excel.reader import (
    DECISION_COLUMN,
    TASK_ID_COLUMN,
    Record,
    Upload,
    is_blank,
    open_upload,
)
from app.models import Batch, ProcessDefinition, ProcessInstance, Task, User
from app.operations import get_operation
from app.schemas.batch import BatchCreate
from app.schemas.common import ID_MAX, unstorable
from app.workflow.approval import ApprovalInput, approve_tasks
from app.workflow.forms import find_node

COMMENT_MAX = 2_000
"""The longest comment ``task.approve`` accepts (``ApproveParams.comment``)."""
TITLE_COLUMN = Column("title", TITLE)
"""The read-only column that says which task a row is (checked against its Task ID)."""
CHECK_PAGE = 500
"""Rows decided by one workflow dry run (the event loop is never held long)."""
READ_PAGE = 2_000
"""Rows read by one call into the reading thread (the sheet is read, then checked, in
turn: reading while checking only made both wait for the GIL)."""


@dataclass
class _Row:
    """A record on its way to a detail."""

    record: Record
    task_id: int | None = None
    error: str | None = None
    code: ErrorCode | None = None
    """Why the row failed (set with ``error``)."""
    payload: dict[str, Any] = field(default_factory=dict)
    decision_ok: bool = True
    duplicate: bool = False


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
            spool, skipped = await read_upload(session, user, upload)
        finally:
            upload.close()
    with spool:
        if not len(spool):
            raise _nothing_decided(skipped)
        resolved = Resolved(
            op=get_operation("task.approve"),
            params={},
            listed=spool,
            filter=None,
            total=len(spool),
            seed_until=0,
            source="excel",
            is_single=upload.is_single,
            skipped_rows=skipped,
        )
        req = BatchCreate(type="task.approve", ids=[], priority=priority, params={})
        batch, _created = await service.create_batch(
            session, settings, user, req, resolved=resolved
        )
    return batch


def _nothing_decided(skipped: int) -> ValidationFailed:
    """The 422 for a file with no row to import: every row left undecided, or none."""
    if not skipped:
        return ValidationFailed(
            "The file holds no task rows.", fields=[{"loc": ["file"], "msg": "no task rows"}]
        )
    rows = "1 row was" if skipped == 1 else f"{skipped} rows were"
    return ValidationFailed(
        "No row has a Decision: fill in approve or reject for the tasks to decide "
        f"({rows} left blank).",
        fields=[{"loc": ["file"], "msg": "no row has a Decision"}],
    )


# --------------------------------------------------------------------------- checking


@dataclass
class _TaskInfo:
    definition_id: int
    node_id: str
    assignee_id: int | None
    title: str


async def read_upload(session: AsyncSession, user: User, upload: Upload) -> tuple[ListedSpool, int]:
    """Every decided record of ``upload`` checked (``RowChecker``), a page at a time,
    into a spool — memory stays flat whatever the number of rows — and the number of
    undecided records skipped. The caller closes the spool."""
    checker = RowChecker(session, user, upload.is_single)
    spool = ListedSpool()
    try:
        while records := await asyncio.to_thread(upload.next_page, READ_PAGE):
            decided = [r for r in records if is_decided(r)]
            checker.skipped += len(records) - len(decided)
            for start in range(0, len(decided), CHECK_PAGE):
                spool.append(await checker.check(decided[start : start + CHECK_PAGE]))
    except BaseException:
        spool.close()
        raise
    return spool, checker.skipped


def is_decided(record: Record) -> bool:
    """Whether the record's Decision cell holds anything (a bad word included: that is
    the row's error, not a row left undecided). The Decision header is the same at
    every node, so this needs no layout."""
    value = next((v for h, v in record.cells if DECISION_COLUMN.matches(h)), None)
    return not is_blank(value)


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
        self.skipped = 0
        """Undecided records left out (counted by ``read_upload``)."""

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
                    row.code = ErrorCode.CONFLICT
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
        listed = Listed(item_ids=[], rows=[], payloads=[], errors=[], error_codes=[])
        assert listed.rows is not None and listed.payloads is not None
        assert listed.errors is not None and listed.error_codes is not None
        for row in rows:
            listed.item_ids.append(row.task_id or 0)
            listed.rows.append(row.record.row)
            row.payload["cells"] = [[h, v] for h, v in row.record.cells if h != ERROR]
            listed.payloads.append(row.payload)
            listed.errors.append(f"{row.record.where}: {row.error}" if row.error else None)
            listed.error_codes.append((row.code or ErrorCode.VALIDATION) if row.error else None)
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
        task's), and its error if its Title is not its task's or its task is at another
        node than the sheet's."""
        tid = row.task_id
        own = visible.get(tid) if tid is not None else None
        here = (own.definition_id, own.node_id) if own else None
        node = here if self.is_single else self.sheet_node
        if row.error is None and own is not None and not _title_matches(row.record, own.title):
            row.error = (
                f"Task ID {tid} does not belong to this row's Title (was the Task ID "
                "changed?): put the row's own Task ID back, or copy the row from a new "
                "template"
            )
            row.code = ErrorCode.VALIDATION
        _read_payload(row, await self._columns_of(node, row.record))
        if (
            row.error is None
            and here is not None
            and node is not None
            and not await self.layouts.same_step(here, node)
        ):
            layouts = self.layouts
            row.error = (
                f"Task {tid} is at step {await layouts.node_name(here)}, not at step "
                f"{await layouts.node_name(node)} like this sheet."
            )
            row.code = ErrorCode.WRONG_NODE


def _title_matches(record: Record, title: str) -> bool:
    """Whether the row's Title cell, when it has one, is its task's title as the
    template wrote it (``app.excel.cells.xml_text``; blanks collapsed, as a spreadsheet
    program may re-wrap them). The Task ID column refuses typing only by a validation,
    which a paste or a fill-down passes: a changed Task ID would silently decide another
    of the caller's tasks, so the row's own Title must name the same task. A sheet
    without a Title column, or a blank Title, is not checked."""
    cell = next((v for h, v in record.cells if TITLE_COLUMN.matches(h)), None)
    if is_blank(cell):
        return True
    return " ".join(str(cell).split()) == " ".join(xml_text(title).split())


def _parse_task_id(row: _Row) -> None:
    raw = next((v for h, v in row.record.cells if TASK_ID_COLUMN.matches(h)), None)
    if is_blank(raw):
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
            decision = None if is_blank(value) else str(value).strip().casefold()
        elif column.kind == "comment":
            comment = None if is_blank(value) else str(value)
        elif column.kind == "write" and not is_blank(value):
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
                row.code = _code_of(outcome)


def _gate(outcome: Outcome) -> bool:
    return outcome.status == DetailStatus.IGNORED or outcome.error_code in (
        ErrorCode.NOT_FOUND,
        ErrorCode.FORBIDDEN,
        ErrorCode.LOCKED,
    )


def _code_of(outcome: Outcome) -> ErrorCode:
    """The dry run's answer as the row's ``ErrorCode``: an ignored task (already
    decided) is in the wrong state."""
    if outcome.status == DetailStatus.IGNORED:
        return ErrorCode.WRONG_STATE
    return outcome.error_code or ErrorCode.INTERNAL


async def _task_infos(session: AsyncSession, ids: list[int]) -> dict[int, _TaskInfo]:
    unique = sorted(set(ids))
    found: dict[int, _TaskInfo] = {}
    for start in range(0, len(unique), 5_000):
        page = unique[start : start + 5_000]
        result = await session.execute(
            select(
                Task.id,
                ProcessInstance.definition_id,
                Task.node_id,
                Task.assignee_id,
                ProcessInstance.title,
            )
            .join(ProcessInstance, ProcessInstance.id == Task.instance_id)
            .where(id_in(session, Task.id, page))
        )
        for tid, def_id, node_id, assignee, title in result:
            found[tid] = _TaskInfo(def_id, node_id, assignee, title)
    return found


class _Layouts:
    """The columns and name of each (definition, node), loaded once."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.definitions: dict[int, tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = {}
        self.cache: dict[tuple[int, str] | None, list[Column]] = {}

    async def _definition(
        self, def_id: int
    ) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
        """(key, form, nodes) of a definition version."""
        if def_id not in self.definitions:
            d = await self.session.get(ProcessDefinition, def_id)
            self.definitions[def_id] = (d.key, d.form or [], d.nodes or []) if d else ("", [], [])
        return self.definitions[def_id]

    async def _node(self, key: tuple[int, str]) -> dict[str, Any] | None:
        _key, _form, nodes = await self._definition(key[0])
        found = find_node(nodes, key[1])
        return found[1] if found else None

    async def columns(self, key: tuple[int, str] | None) -> list[Column]:
        if key not in self.cache:
            node = await self._node(key) if key else None
            form = (await self._definition(key[0]))[1] if key and node else []
            self.cache[key] = approval_columns(form, node or {"fields": {}})
        return self.cache[key]

    async def same_step(self, a: tuple[int, str], b: tuple[int, str]) -> bool:
        """Whether tasks at ``a`` and ``b`` belong on one sheet: the same node, or the
        same node id of two versions of one definition with the same columns (a
        template holds both: ``app.excel.template``)."""
        if a == b:
            return True
        if a[1] != b[1] or (await self._definition(a[0]))[0] != (await self._definition(b[0]))[0]:
            return False
        return await self.columns(a) == await self.columns(b)

    async def node_name(self, key: tuple[int, str]) -> str:
        node = await self._node(key)
        return str((node or {}).get("name") or key[1])
