"""/api/v1/batches: create, list, read, details, retry, suspend/activate, cancel/purge.

Routers only parse, call the batch service and shape responses.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Response

from app.api.deps import CurrentUser, PageDep, SessionDep, SettingsDep
from app.batches import service
from app.errors import NotFound
from app.schemas.batch import BatchCreate, BatchOut, DetailOut, RetryOut, RetryRequest
from app.schemas.common import NO_NUL, IdPath, IntQuery, Page, error_responses

router = APIRouter(prefix="/api/v1", tags=["batches"])

BatchId = IdPath
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DETAIL_STATUSES = "^(pending|running|success|failed|ignored|cancelled)$"
BATCH_STATUSES = "^(created|seeding|running|suspended|completed|cancelled|aborted)$"


@router.post(
    "/batches",
    status_code=202,
    response_model=BatchOut,
    responses={200: {"model": BatchOut}, **error_responses(401, 413, 422)},
)
async def create_batch(
    body: BatchCreate,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> BatchOut:
    """Validate, write the batch and return at once (202); work happens in the background.
    A repeated ``Idempotency-Key`` returns the existing batch with 200."""
    batch, created = await service.create_batch(
        session, settings, user, body, idempotency_key=idempotency_key
    )
    if not created:
        response.status_code = 200
    return service.to_out(batch)


@router.get("/batches", response_model=Page[BatchOut], responses=error_responses(401, 422))
async def list_batches(
    session: SessionDep,
    user: CurrentUser,
    page: PageDep,
    type: Annotated[str | None, Query(max_length=50, pattern=NO_NUL)] = None,
    status: Annotated[str | None, Query(pattern=BATCH_STATUSES)] = None,
    creator_id: IntQuery = None,
) -> Page[BatchOut]:
    """Newest first; a user sees their own batches, an admin all."""
    items, total = await service.list_batches(
        session,
        user,
        offset=page.offset,
        limit=page.page_size,
        type=type,
        status=status,
        creator_id=creator_id,
    )
    return Page[BatchOut](items=items, total=total, page=page.page, page_size=page.page_size)


@router.get("/batches/{batch_id}", response_model=BatchOut, responses=error_responses(401, 404))
async def get_batch(batch_id: BatchId, session: SessionDep, user: CurrentUser) -> BatchOut:
    return service.to_out(await service.get_batch(session, user, batch_id))


@router.get(
    "/batches/{batch_id}/details",
    response_model=Page[DetailOut],
    responses=error_responses(401, 404, 422),
)
async def list_details(
    batch_id: BatchId,
    session: SessionDep,
    user: CurrentUser,
    page: PageDep,
    status: Annotated[str | None, Query(pattern=DETAIL_STATUSES)] = None,
) -> Page[DetailOut]:
    batch = await service.get_batch(session, user, batch_id)
    items, total = await service.list_details(
        session, batch, offset=page.offset, limit=page.page_size, status=status
    )
    return Page[DetailOut](items=items, total=total, page=page.page, page_size=page.page_size)


@router.post(
    "/batches/{batch_id}/retry",
    status_code=202,
    response_model=RetryOut,
    responses=error_responses(401, 404, 409, 422),
)
async def retry_batch(
    batch_id: BatchId,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    body: Annotated[RetryRequest | None, Body()] = None,
) -> RetryOut:
    """Failed, non-exhausted items go back to pending; exhausted ones release their lock."""
    result = await service.retry(session, settings, user, batch_id, body.item_ids if body else None)
    return RetryOut(
        batch=service.to_out(result.batch),
        requeued=result.requeued,
        exhausted=result.exhausted,
    )


@router.post(
    "/batches/{batch_id}/suspend", response_model=BatchOut, responses=error_responses(401, 404, 409)
)
async def suspend_batch(batch_id: BatchId, session: SessionDep, user: CurrentUser) -> BatchOut:
    """Pause: nothing new is claimed; chunks already running finish."""
    return service.to_out(await service.suspend(session, user, batch_id))


@router.post(
    "/batches/{batch_id}/activate",
    response_model=BatchOut,
    responses=error_responses(401, 404, 409),
)
async def activate_batch(
    batch_id: BatchId, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> BatchOut:
    return service.to_out(await service.activate(session, settings, user, batch_id))


@router.delete(
    "/batches/{batch_id}",
    response_model=BatchOut,
    responses={204: {"description": "purged (cascade=true)"}, **error_responses(401, 404)},
)
async def delete_batch(
    batch_id: BatchId,
    session: SessionDep,
    user: CurrentUser,
    cascade: bool = False,
) -> BatchOut | Response:
    """Cancel (pending items → cancelled) or, on a finished batch, give up its failed
    items; every lock is released. ``cascade=true`` also purges batch and details."""
    batch = await service.cancel(session, user, batch_id, cascade=cascade)
    if batch is None:
        return Response(status_code=204)
    return service.to_out(batch)


@router.get(
    "/batches/{batch_id}/error-file",
    response_class=Response,
    responses={
        200: {
            "description": "The failed items as an Excel workbook.",
            "content": {XLSX: {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(401, 404),
    },
)
async def error_file(batch_id: BatchId, session: SessionDep, user: CurrentUser) -> Response:
    """The xlsx of failed items (404 while there is none)."""
    batch = await service.get_batch(session, user, batch_id)
    raise NotFound(f"Batch {batch.id} has no error file.")
