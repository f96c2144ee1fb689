"""``GET /batches/{id}/results``: every detail of a batch as CSV or xlsx, streamed.

Rows are read in pages by detail id (keyset), each page in its own short transaction —
no transaction stays open for the length of a download (on SQLite every transaction
takes the write lock), and memory stays flat at any size. Each page is sent as soon as
it is written: CSV directly, xlsx through ``app.excel.stream.XlsxStream`` (the sheet
XML compressed as it is produced, in a thread so the event loop keeps serving).

Every value goes through ``app.excel.cells`` (``csv_safe``, or ``xml_text`` inside the
xlsx writer), so no text a user typed can stop a download halfway. Unlike the template
and the error file, the export cannot be built before its first byte (a million rows
would take minutes): should a page fail anyway (the database gone), the chunked body
is never terminated — the server drops the connection and every HTTP client reports
an incomplete response, never a complete-looking file.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.pages import keyset_pages
from app.excel.cells import csv_safe
from app.excel.stream import XlsxStream
from app.models import Batch, BatchDetail, User
from app.operations import get_operation

COLUMNS = (
    "item_id",
    "row",
    "status",
    "error",
    "error_code",
    "retryable",
    "retry_count",
    "finished_at",
    "title",
)
"""``error_code`` and ``retryable`` next to the sentence, so a spreadsheet can filter
failures by cause (both empty unless failed, as on the detail)."""
XLSX_COLUMNS = tuple("finished_at (UTC)" if c == "finished_at" else c for c in COLUMNS)
"""The xlsx header: a date-time cell holds no time zone, so the header names it."""
PAGE = 5_000


async def _pages(
    sm: async_sessionmaker[AsyncSession], batch: Batch, status: str | None
) -> AsyncIterator[Sequence[Any]]:
    async with sm() as session:
        creator = await session.get(User, batch.creator_id)
    assert creator is not None  # users are never deleted
    target = get_operation(batch.type).target
    title = target.title_of(BatchDetail.item_id, creator).label("title")
    query = select(
        BatchDetail.id,
        BatchDetail.item_id,
        BatchDetail.row,
        BatchDetail.status,
        BatchDetail.error,
        BatchDetail.error_code,
        BatchDetail.retryable,
        BatchDetail.retry_count,
        BatchDetail.finished_at,
        title,
    ).where(BatchDetail.batch_id == batch.id)
    if status:
        query = query.where(BatchDetail.status == status)
    async for rows in keyset_pages(sm, query, BatchDetail.id, PAGE):
        yield [r[1:] for r in rows]


def _plain(value: Any) -> Any:
    """CSV text as the JSON API writes it: a datetime as ISO 8601 in UTC with ``Z``, a
    boolean as ``true``/``false`` (Python's ``True`` is no word a program expects)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        utc = value.astimezone(UTC) if value.tzinfo is not None else value
        return utc.replace(tzinfo=None).isoformat() + "Z"
    return value


async def csv_stream(
    sm: async_sessionmaker[AsyncSession], batch: Batch, status: str | None
) -> AsyncIterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    async for page in _pages(sm, batch, status):
        writer.writerows([csv_safe(_plain(v)) for v in row] for row in page)
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


async def xlsx_stream(
    sm: async_sessionmaker[AsyncSession], batch: Batch, status: str | None
) -> AsyncIterator[bytes]:
    """Page by page through ``XlsxStream``: the first bytes leave with the first page."""
    book = XlsxStream("Results", XLSX_COLUMNS)
    async for page in _pages(sm, batch, status):
        chunk = await asyncio.to_thread(book.rows, page)
        if chunk:
            yield chunk
    yield book.close()
