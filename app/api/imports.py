"""POST /api/v1/batches/import: a filled approval template becomes a ``task.approve``
batch with one detail per row.

The flow is ``app.batches.imports.import_batch``: the file is checked against the upload
limits (``app.excel.guard``) as it streams, then read a page of rows at a time in a
thread (openpyxl read-only; the event loop keeps serving), each page checked as
approvals would be and spooled to disk, then the batch is written — memory stays flat
whatever the number of rows, and a rejected upload writes nothing (one transaction). At
most ``BATCH_IMPORT_CONCURRENCY`` uploads are read at once; one that waits longer than
``BATCH_IMPORT_WAIT`` seconds for its turn is a 503 with Retry-After."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from app.api.deps import CurrentUser, SessionDep, SettingsDep
from app.batches import imports, service
from app.config import Settings
from app.errors import AppError, NotFound, TooLarge
from app.excel import error_file
from app.schemas.batch import BatchOut, Priority
from app.schemas.common import IdPath, error_responses

router = APIRouter(prefix="/api/v1", tags=["batches"])

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "UnsupportedMediaType"


def multipart_only(request: Request) -> None:
    """A body that is not multipart/form-data is a 415 (not a confusing missing field)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            "Send the workbook as multipart/form-data with a 'file' part.",
            fields=[{"loc": ["file"], "msg": "multipart/form-data expected"}],
        )


IMPORT_DESCRIPTION = """\
Upload a filled approval template: an **.xlsx** (first sheet, headers in row 1, one row
per task; headers match by label or field name in any order, unknown columns such as
an error file's `Error` are ignored) or a **.zip** of vertical per-task workbooks
(`Field | Value`). Every row is checked as an approval would be: valid rows become
pending items carrying their row's decision, comment and values; invalid rows become
`failed` items at once with `row N: <why>` (and never lock their task). A row whose
Decision is blank is skipped — not an item, whatever else it holds (its comment and
values are ignored) — and counted in the batch's `skipped_rows`, so a template of every
pending task imports with only the rows decided; rows may be deleted too (error
messages keep the sheet's own row numbers). A file with no decided row is a 422. A
blank field cell leaves the field as it is.

413 past `BATCH_MAX_UPLOAD_BYTES`, `BATCH_MAX_IMPORT_ROWS`, `BATCH_MAX_ZIP_MEMBERS`,
`BATCH_MAX_UNCOMPRESSED_BYTES`, or what one workbook may hold — checked as each part
streams, before it is read: `BATCH_MAX_SHEET_BYTES` / `BATCH_MAX_PART_BYTES` (unpacked
size of a worksheet / of any other member), `BATCH_MAX_SHEET_ROWS`,
`BATCH_MAX_ROW_CELLS`, `BATCH_MAX_SHEET_CELLS`, `BATCH_MAX_SHARED_STRINGS`,
`BATCH_MAX_STYLE_ENTRIES`, `BATCH_MAX_SHEETS`, `BATCH_MAX_PART_ELEMENTS`,
`BATCH_MAX_XML_ELEMENTS`; the `detail` names the limit. 422 for a file that is not a
readable workbook / zip (an XML part declaring a DTD included) or has no Task ID or
Decision column. 503 with `Retry-After` when `BATCH_IMPORT_CONCURRENCY` uploads are
being read and this one waited `BATCH_IMPORT_WAIT` seconds. Nothing is written for a
rejected upload."""


@router.post(
    "/batches/import",
    operation_id="import_batch",
    summary="Import a filled approval template as a task.approve batch",
    description=IMPORT_DESCRIPTION,
    status_code=202,
    response_model=BatchOut,
    responses=error_responses(400, 401, 413, 415, 422, 503),
    dependencies=[Depends(multipart_only)],
)
async def import_batch(
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    file: Annotated[UploadFile, File(description="The .xlsx workbook or .zip of workbooks.")],
    request: Request,
    priority: Annotated[Priority, Form()] = Priority.NORMAL,
) -> BatchOut:
    """Check the size, then read, check and write the rows page by page."""
    size = file.size if file.size is not None else await asyncio.to_thread(_size_of, file)
    if size > settings.max_upload_bytes:
        raise TooLarge(
            f"The file is larger than the upload limit of {settings.max_upload_bytes} bytes."
        )
    # No transaction is held while waiting for a turn (on SQLite one holds the write
    # lock, which the upload being read needs): the import begins its own.
    await session.commit()
    batch = await imports.import_batch(
        session, settings, user, file.file, priority, _slots(request, settings)
    )
    return await service.batch_out(session, batch, user)


def _slots(request: Request, settings: Settings) -> imports.ImportSlots:
    """This app's import slots, made on first use: one on SQLite, where an import holds
    the database's write lock while it reads its rows (a second one would wait for the
    lock, not for a slot, and fail with "database is locked" instead of a 503)."""
    state = request.app.state
    slots: imports.ImportSlots | None = getattr(state, "import_slots", None)
    if slots is None:
        size = 1 if settings.is_sqlite else settings.import_concurrency
        slots = state.import_slots = imports.ImportSlots(size, settings.import_wait)
    return slots


def _size_of(file: UploadFile) -> int:
    file.file.seek(0, 2)
    size = file.file.tell()
    file.file.seek(0)
    return size


@router.get(
    "/batches/{batch_id}/error-file",
    operation_id="get_batch_error_file",
    summary="Download the failed items as xlsx (fix and import again)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": (
                "The failed items as an Excel workbook: an imported batch's rows with "
                "their original values, an API task.approve batch's tasks in their "
                "node's layout — both laid out as the node's template (dropdowns, "
                "checks, protection) — other types item_id and title; each with an "
                "Error column."
            ),
            "content": {XLSX: {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(401, 404, 422),
    },
)
async def get_batch_error_file(
    request: Request, batch_id: IdPath, session: SessionDep, user: CurrentUser
) -> StreamingResponse:
    """Built from the failed details when asked (404 while there are none), whole
    before the response starts, then streamed."""
    batch = await service.get_batch(session, user, batch_id)
    if not await error_file.has_failed(session, batch):
        raise NotFound(f"Batch {batch.id} has no failed items, so no error file.")
    # Done with the request's own transaction (on SQLite it holds the write lock): the
    # build reads each page in a short transaction of its own.
    await session.commit()
    built = await error_file.build(request.app.state.sessionmaker, batch)
    name = f"batch-{batch.id}-errors.xlsx"
    return StreamingResponse(
        built.chunks(),
        media_type=XLSX,
        headers={**built.headers, "Content-Disposition": f'attachment; filename="{name}"'},
    )
