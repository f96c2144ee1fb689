"""GET /api/v1/batches/{id}/results: every detail of a batch as a file, streamed."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.api.deps import CurrentUser, SessionDep
from app.batches import results, service
from app.schemas.common import IdPath, error_responses

router = APIRouter(prefix="/api/v1", tags=["batches"])

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DETAIL_STATUSES = "^(pending|running|success|failed|ignored|cancelled)$"


@router.get(
    "/batches/{batch_id}/results",
    operation_id="get_batch_results",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": (
                "item_id, row, status, error, retry_count, finished_at, title. finished_at "
                "is UTC: ISO 8601 with Z in the CSV, a date-time cell in the xlsx (header "
                "`finished_at (UTC)`)."
            ),
            "content": {"text/csv": {}, XLSX: {}},
        },
        **error_responses(401, 404, 422),
    },
)
async def batch_results(
    request: Request,
    batch_id: IdPath,
    session: SessionDep,
    user: CurrentUser,
    format: Literal["csv", "xlsx"] = "csv",
    status: Annotated[str | None, Query(pattern=DETAIL_STATUSES)] = None,
) -> StreamingResponse:
    """Every detail of the batch (or those with ``status``), streamed with flat memory.
    Formula-looking text is written as text."""
    batch = await service.get_batch(session, user, batch_id)
    sm = request.app.state.sessionmaker
    name = f"batch-{batch.id}-results.{format}"
    if format == "xlsx":
        body, media = results.xlsx_stream(sm, batch, status), XLSX
    else:
        body, media = results.csv_stream(sm, batch, status), "text/csv; charset=utf-8"
    return StreamingResponse(
        body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )
