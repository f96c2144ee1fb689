"""/api/v1/batches: create, list, read, details, failures, retry, suspend/activate,
cancel/purge.

Routers only parse, call the batch service and shape responses.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Response
from fastapi.openapi.models import Example

from app.api.deps import CurrentUser, PageDep, SessionDep, SettingsDep
from app.batches import failures, service
from app.domain import BatchStatus, DetailStatus, ErrorCode
from app.errors import ValidationFailed
from app.schemas.batch import (
    BatchCreate,
    BatchOut,
    DetailOut,
    DryRunOut,
    FailureGroupsOut,
    GroupMessage,
    RetryOut,
    RetryRequest,
)
from app.schemas.common import NO_NUL, IdPath, IntQuery, Page, error_responses

router = APIRouter(prefix="/api/v1", tags=["batches"])

BatchId = IdPath
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CREATE_EXAMPLES: dict[str, Example] = {
    "approve_by_ids": {
        "summary": "Approve three tasks by id",
        "value": {
            "type": "task.approve",
            "ids": [11, 12, 13],
            "params": {"decision": "approve", "comment": "ok"},
        },
    },
    "approve_by_filter": {
        "summary": "Approve every matching pending task of the caller",
        "value": {
            "type": "task.approve",
            "filter": {"definition_key": "expense", "node_id": "manager", "keyword": "Berlin"},
            "params": {
                "decision": "approve",
                "comment": "Approved in bulk",
                "form_data": {"category": "travel"},
            },
            "priority": "normal",
            "chunk_size": 100,
            "max_retries": 3,
            "failure_threshold": 0.5,
        },
    },
    "suspend_instances": {
        "summary": "Suspend instances by filter, paused for review first",
        "value": {
            "type": "instance.suspend",
            "filter": {"definition_key": "leave", "status": "active"},
            "priority": "high",
            "start_suspended": True,
        },
    },
    "dry_run": {
        "summary": "Predict what a batch would do, writing nothing",
        "value": {"type": "instance.terminate", "ids": [1, 2], "params": {}, "dry_run": True},
    },
}
"""Named request examples (Swagger UI's drop-down; schemathesis sends them too)."""


@router.post(
    "/batches",
    operation_id="create_batch",
    summary="Create a batch (or dry-run one)",
    status_code=202,
    response_model=BatchOut | DryRunOut,
    responses={
        200: {
            "model": BatchOut | DryRunOut,
            "description": "the batch of a repeated Idempotency-Key, or a dry run's prediction",
        },
        **error_responses(401, 413, 422),
    },
)
async def create_batch(
    body: Annotated[BatchCreate, Body(openapi_examples=CREATE_EXAMPLES)],
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> BatchOut | DryRunOut:
    """Validate, write the batch and return at once (202); work happens in the background.
    A repeated ``Idempotency-Key`` returns the existing batch with 200. With
    ``"dry_run": true`` nothing is written: 200 with the predicted outcome."""
    key = service.idempotency_key_of(body, idempotency_key)  # a 422 even for a dry run
    if body.dry_run:
        response.status_code = 200
        return await service.dry_run(session, settings, user, body)
    batch, created = await service.create_batch(session, settings, user, body, idempotency_key=key)
    if not created:
        response.status_code = 200
    return await service.batch_out(session, batch, user)


@router.get(
    "/batches",
    operation_id="list_batches",
    summary="List batches, newest first",
    response_model=Page[BatchOut],
    responses=error_responses(401, 422),
)
async def list_batches(
    session: SessionDep,
    user: CurrentUser,
    page: PageDep,
    type: Annotated[
        str | None,
        Query(
            max_length=50,
            pattern=NO_NUL,
            description="An operation type (a built-in ``OperationType`` or a custom one).",
            examples=["task.approve"],
        ),
    ] = None,
    status: BatchStatus | None = None,
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


@router.get(
    "/batches/{batch_id}",
    operation_id="get_batch",
    summary="Get a batch with its counters",
    response_model=BatchOut,
    responses=error_responses(401, 404),
)
async def get_batch(batch_id: BatchId, session: SessionDep, user: CurrentUser) -> BatchOut:
    """The batch with its counters and progress; a batch of another user is a 404
    (admins see every batch)."""
    return await service.batch_out(session, await service.get_batch(session, user, batch_id), user)


@router.get(
    "/batches/{batch_id}/details",
    operation_id="list_batch_details",
    summary="List a batch's per-item results",
    response_model=Page[DetailOut],
    responses=error_responses(401, 404, 422),
)
async def list_details(
    batch_id: BatchId,
    session: SessionDep,
    user: CurrentUser,
    page: PageDep,
    status: DetailStatus | None = None,
    error_code: Annotated[
        ErrorCode | None,
        Query(description="Only the failed items of this code (a failure group)."),
    ] = None,
    message: Annotated[
        GroupMessage | None,
        Query(description="With ``error_code``: only that group's items (its ``message``)."),
    ] = None,
) -> Page[DetailOut]:
    """One row per item, in item order: its status, error sentence, retries and (for an
    Excel import) its row and payload; ``status`` narrows the list, ``error_code`` (and
    ``message``) narrow it to one failure group of ``GET /batches/{id}/failures``."""
    batch = await service.get_batch(session, user, batch_id)
    if error_code is None:
        if message is not None:
            raise ValidationFailed("message needs error_code: a group is (error_code, message)")
        items, total = await service.list_details(
            session, batch, offset=page.offset, limit=page.page_size, status=status
        )
    elif status not in (None, DetailStatus.FAILED):
        items, total = [], 0  # a failure group holds failed items only
    else:
        items, total = await failures.group_details(
            session, batch, error_code, message, offset=page.offset, limit=page.page_size
        )
    return Page[DetailOut](items=items, total=total, page=page.page, page_size=page.page_size)


@router.get(
    "/batches/{batch_id}/failures",
    operation_id="list_batch_failures",
    summary="A batch's failures in groups, largest first",
    response_model=FailureGroupsOut,
    responses=error_responses(401, 404, 422),
)
async def list_failures(
    batch_id: BatchId, session: SessionDep, user: CurrentUser
) -> FailureGroupsOut:
    """Failed items grouped by ``error_code``, ``message`` (the error sentence with the
    item's own id as ``N``) and ``retryable``: 97 alike failures are one group of 97.
    Largest group first (ties: by message), at most 50 groups (``groups_truncated``),
    each with its first ≤ 10 item ids. Retry a group with ``POST /batches/{id}/retry``
    ``{"error_code", "message"}``; list its items with ``/details?error_code=…&message=…``."""
    batch = await service.get_batch(session, user, batch_id)
    return await failures.failure_groups(session, batch)


@router.post(
    "/batches/{batch_id}/retry",
    operation_id="retry_batch",
    summary="Retry failed items",
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
    """Failed, non-exhausted items go back to pending; exhausted ones release their lock.
    All failed items, the listed ``item_ids``, or one failure group (``error_code``, and
    ``message`` as ``GET /batches/{id}/failures`` returned it). A manual retry takes any
    failed item, retryable or not: the caller may have fixed the cause."""
    item_ids = body.item_ids if body else None
    if body is not None and body.error_code is not None:
        batch = await service.get_batch(session, user, batch_id)  # 404 before anything
        item_ids = await failures.group_item_ids(session, batch, body.error_code, body.message)
    result = await service.retry(session, settings, user, batch_id, item_ids)
    return RetryOut(
        batch=await service.batch_out(session, result.batch, user),
        requeued=result.requeued,
        exhausted=result.exhausted,
    )


@router.post(
    "/batches/{batch_id}/suspend",
    operation_id="suspend_batch",
    summary="Pause a batch",
    response_model=BatchOut,
    responses=error_responses(401, 404, 409),
)
async def suspend_batch(batch_id: BatchId, session: SessionDep, user: CurrentUser) -> BatchOut:
    """Pause: nothing new is claimed; chunks already running finish."""
    return await service.batch_out(session, await service.suspend(session, user, batch_id), user)


@router.post(
    "/batches/{batch_id}/activate",
    operation_id="activate_batch",
    summary="Resume a suspended batch",
    response_model=BatchOut,
    responses=error_responses(401, 404, 409),
)
async def activate_batch(
    batch_id: BatchId, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> BatchOut:
    """Run a suspended batch again (or a batch created with ``start_suspended``); its
    items were kept locked while it waited."""
    return await service.batch_out(
        session, await service.activate(session, settings, user, batch_id), user
    )


@router.delete(
    "/batches/{batch_id}",
    operation_id="cancel_batch",
    summary="Cancel a batch (cascade=true also purges it)",
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
    return await service.batch_out(session, batch, user)
