"""Reading a filled approval template: an .xlsx with one row per task, or a .zip of
vertical per-task workbooks, becomes task records — workbook in, records out; what the
records become (a batch) is the batch feature's business (``app.batches.imports``).

``open_upload`` (blocking, run it in a thread) checks the file — a zip at all, then
everything ``app.excel.guard`` limits (members, sizes, and what each part holds,
counted as it streams, before openpyxl reads any of it), the header row — and returns
an ``Upload`` whose records openpyxl's read-only mode yields a page at a time, so a
sheet of any length is never held whole.
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import IO, Any

from app.config import Settings
from app.errors import AppError, TooLarge, ValidationFailed
from app.excel.guard import Budget, Package
from app.excel.layout import DECISION, TASK_ID, Column

MAX_COLUMNS = 1_000
"""A header row wider than this is not an approval template (a node has few fields)."""
EXCEL_MAX_ROWS = 1_048_576
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
OLE_MAGIC = b"\xd0\xcf\x11\xe0"
"""An encrypted (password-protected) .xlsx, or an old .xls, is an OLE compound file."""
SPOOL_IN_MEMORY = 1024 * 1024
"""A workbook of a zip larger than this is copied to a temporary file to be read."""

# The two columns without which a sheet is not an approval template.
TASK_ID_COLUMN = Column("task_id", TASK_ID)
DECISION_COLUMN = Column("decision", DECISION, required=True)


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


def is_blank(value: Any) -> bool:
    """An empty cell, or one holding only blanks."""
    return value is None or (isinstance(value, str) and not value.strip())


def _header(value: Any) -> str | None:
    return None if is_blank(value) else str(value).strip()


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
        if all(is_blank(v) for v in values):
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
        c.header for c in (TASK_ID_COLUMN, DECISION_COLUMN) if not any(map(c.matches, headers))
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
