"""``GET /batches/{id}/results``: every detail of a batch as CSV or xlsx, streamed.

Rows are read in pages by detail id (keyset), each page in its own short transaction —
no transaction stays open for the length of a download (on SQLite every transaction
takes the write lock), and memory stays flat at any size: a CSV page is written and
sent; an xlsx is built with openpyxl's write-only mode (rows go to a temporary file, in
a thread so the event loop keeps serving), then streamed from disk and deleted.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from openpyxl import Workbook
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.excel.cells import csv_safe, text_cell
from app.models import Batch, BatchDetail
from app.operations import get_operation

COLUMNS = ("item_id", "row", "status", "error", "retry_count", "finished_at", "title")
PAGE = 5_000
FILE_CHUNK = 256 * 1024


async def _pages(
    sm: async_sessionmaker[AsyncSession], batch: Batch, status: str | None
) -> AsyncIterator[Sequence[Any]]:
    title = get_operation(batch.type).target.title_of(BatchDetail.item_id).label("title")
    query = select(
        BatchDetail.id,
        BatchDetail.item_id,
        BatchDetail.row,
        BatchDetail.status,
        BatchDetail.error,
        BatchDetail.retry_count,
        BatchDetail.finished_at,
        title,
    ).where(BatchDetail.batch_id == batch.id)
    if status:
        query = query.where(BatchDetail.status == status)
    after = 0
    while True:
        async with sm() as session:
            rows = (
                await session.execute(
                    query.where(BatchDetail.id > after).order_by(BatchDetail.id).limit(PAGE)
                )
            ).all()
        if not rows:
            return
        yield [r[1:] for r in rows]
        after = rows[-1][0]


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


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
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("Results")
    ws.append(list(COLUMNS))
    fd, path = tempfile.mkstemp(prefix="batchd-results-", suffix=".xlsx")
    os.close(fd)
    try:
        async for page in _pages(sm, batch, status):
            await asyncio.to_thread(_append, ws, page)
        await asyncio.to_thread(wb.save, path)
        with open(path, "rb") as f:  # noqa: ASYNC230 - local temp file, read in small chunks
            while chunk := f.read(FILE_CHUNK):
                yield chunk
    finally:
        os.unlink(path)


def _append(ws: Any, page: Sequence[Any]) -> None:
    for row in page:
        ws.append([text_cell(ws, _naive_utc(v)) for v in row])


def _naive_utc(value: Any) -> Any:
    """Excel has no time zones: datetimes go in as UTC wall-clock time."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value
