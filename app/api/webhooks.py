"""/api/v1/webhooks: subscriptions to batch events, their delivery log, redelivery and
ping; and ``GET /batches/{id}/deliveries`` for a batch's page.

Routers only parse, call the webhook service and shape responses."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import CurrentUser, PageDep, SessionDep, SettingsDep
from app.batches import service as batches
from app.schemas.common import IdPath, Page, error_responses
from app.webhooks import service
from app.webhooks.events import DeliveryStatus
from app.webhooks.schemas import (
    DeliveryOut,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookUpdate,
)

router = APIRouter(prefix="/api/v1", tags=["webhooks"])

WebhookId = IdPath
DeliveryId = IdPath


@router.post(
    "/webhooks",
    operation_id="create_webhook",
    summary="Subscribe a URL to batch events",
    status_code=201,
    response_model=WebhookCreated,
    responses=error_responses(401, 403, 413, 422),
)
async def create_webhook(
    body: WebhookCreate, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> WebhookCreated:
    """Events of your batches (``all_batches``: every batch, admins only) are POSTed to
    ``url``, signed the Standard Webhooks way with the ``secret`` returned here — and
    only here: keep it. A URL whose host resolves to a loopback, private, link-local,
    multicast or reserved address is a 422."""
    sub = await service.create(session, settings, user, body)
    return WebhookCreated.model_validate(sub)


@router.get(
    "/webhooks",
    operation_id="list_webhooks",
    summary="List your webhook subscriptions",
    response_model=Page[WebhookOut],
    responses=error_responses(401, 422),
)
async def list_webhooks(session: SessionDep, user: CurrentUser, page: PageDep) -> Page[WebhookOut]:
    """Your own subscriptions, oldest first (secrets are never shown again)."""
    items, total = await service.list_(session, user, offset=page.offset, limit=page.page_size)
    return Page[WebhookOut](
        items=[WebhookOut.model_validate(s) for s in items],
        total=total,
        page=page.page,
        page_size=page.page_size,
    )


@router.get(
    "/webhooks/{webhook_id}",
    operation_id="get_webhook",
    summary="Get a webhook subscription",
    response_model=WebhookOut,
    responses=error_responses(401, 404, 422),
)
async def get_webhook(webhook_id: WebhookId, session: SessionDep, user: CurrentUser) -> WebhookOut:
    """Your subscription; anyone else's is a 404."""
    return WebhookOut.model_validate(await service.get(session, user, webhook_id))


@router.patch(
    "/webhooks/{webhook_id}",
    operation_id="update_webhook",
    summary="Change, disable or re-enable a webhook subscription",
    response_model=WebhookOut,
    responses=error_responses(401, 404, 413, 422),
)
async def update_webhook(
    webhook_id: WebhookId,
    body: WebhookUpdate,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
) -> WebhookOut:
    """``url`` and ``events`` replace the current ones (the URL is checked again);
    ``status: "active"`` re-enables a disabled subscription and starts its failure count
    over, ``"disabled"`` stops its deliveries."""
    return WebhookOut.model_validate(
        await service.update_(session, settings, user, webhook_id, body)
    )


@router.delete(
    "/webhooks/{webhook_id}",
    operation_id="delete_webhook",
    summary="Delete a webhook subscription and its delivery log",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 404, 422),
)
async def delete_webhook(webhook_id: WebhookId, session: SessionDep, user: CurrentUser) -> Response:
    """Nothing more is sent to it; its deliveries are deleted with it."""
    await service.remove(session, user, webhook_id)
    return Response(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    operation_id="list_webhook_deliveries",
    summary="A webhook subscription's delivery log, newest first",
    response_model=Page[DeliveryOut],
    responses=error_responses(401, 404, 422),
)
async def list_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    user: CurrentUser,
    page: PageDep,
    status: DeliveryStatus | None = None,
) -> Page[DeliveryOut]:
    """Each event sent (or being sent) to this subscription: status, attempts, the last
    attempt's HTTP status code and error, the next attempt's time."""
    items, total = await service.deliveries(
        session, user, webhook_id, offset=page.offset, limit=page.page_size, status=status
    )
    return Page[DeliveryOut](items=items, total=total, page=page.page, page_size=page.page_size)


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    operation_id="redeliver_webhook_delivery",
    summary="Send a delivery again",
    status_code=202,
    response_model=DeliveryOut,
    responses=error_responses(401, 404, 409, 422),
)
async def redeliver(
    webhook_id: WebhookId, delivery_id: DeliveryId, session: SessionDep, user: CurrentUser
) -> DeliveryOut:
    """A new attempt of the same delivery (same ``webhook-id``, same body), now, whatever
    its status; a disabled subscription is a 409."""
    return await service.redeliver(session, user, webhook_id, delivery_id)


@router.post(
    "/webhooks/{webhook_id}/ping",
    operation_id="ping_webhook",
    summary="Send a test event",
    status_code=202,
    response_model=DeliveryOut,
    responses=error_responses(401, 404, 409, 422),
)
async def ping_webhook(
    webhook_id: WebhookId, session: SessionDep, user: CurrentUser
) -> DeliveryOut:
    """A ``webhook.ping`` event, delivered (and logged) like any other."""
    return await service.ping(session, user, webhook_id)


@router.get(
    "/batches/{batch_id}/deliveries",
    operation_id="list_batch_deliveries",
    summary="A batch's webhook deliveries",
    response_model=Page[DeliveryOut],
    responses=error_responses(401, 404, 422),
)
async def list_batch_deliveries(
    batch_id: IdPath, session: SessionDep, user: CurrentUser, page: PageDep
) -> Page[DeliveryOut]:
    """The events of this batch sent to your subscriptions (an admin: to every
    subscription), newest first."""
    await batches.get_batch(session, user, batch_id)  # 404 for a batch you may not see
    items, total = await service.batch_deliveries(
        session, user, batch_id, offset=page.offset, limit=page.page_size
    )
    return Page[DeliveryOut](items=items, total=total, page=page.page, page_size=page.page_size)
