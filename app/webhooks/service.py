"""Subscriptions (create, read, update, delete), the delivery log, manual redelivery and
ping, and the delivery job and cron the batch feature registers into the runtime.

A delivery is claimed with one guarded ``UPDATE … WHERE status = 'pending' AND
next_attempt_at <= now`` (atomic on PostgreSQL and SQLite alike: two workers never send
the same attempt at once); the claim moves ``next_attempt_at`` to the end of a lease, so
an attempt whose worker died is taken again once the lease is over. The HTTP call runs
outside any transaction; its result is written by a second short one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.config import Settings
from app.db.base import utcnow
from app.db.pages import total_of
from app.db.unit_of_work import request_wakeup
from app.domain import Wakeup
from app.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.models import Batch, User, WebhookDelivery, WebhookSubscription
from app.runtime.context import JobContext
from app.webhooks import outbox
from app.webhooks.delivery import Attempt, Refused, check_url, send, signed_headers
from app.webhooks.events import PING, DeliveryStatus, SubscriptionStatus
from app.webhooks.schemas import DeliveryOut, WebhookCreate, WebhookUpdate

log = logging.getLogger("batchd.webhooks")

BACKOFF_S: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600)
"""Delay before attempt 2, 3, …; after the last, every ``THEN_EVERY_S``."""
THEN_EVERY_S = 7200.0
GIVE_UP_AFTER_S = 24 * 3600.0
"""A delivery still failing this long after its first attempt is ``failed``."""
DISABLE_AFTER = 50
"""Deliveries given up in a row that disable their subscription."""
LEASE_GRACE_S = 5.0
"""An attempt in flight longer than the timeout plus this counts as lost."""
LOST_AFTER_S = 2.0
"""The cron re-sends a due delivery only this long after it fell due: its own wake-up
normally sends it sooner."""
CRON_BATCH = 1000
PURGE_BATCH = 10_000
"""Old deliveries deleted per purge pass (the cron runs hourly: a backlog goes in steps)."""


# --------------------------------------------------------------------------- subscriptions


async def _check(url: str, settings: Settings) -> None:
    try:
        await check_url(url, allow_private=settings.webhook_allow_private)
    except Refused as exc:
        raise ValidationFailed(
            str(exc), fields=[{"loc": ["body", "url"], "msg": str(exc)}]
        ) from None


async def create(
    session: AsyncSession, settings: Settings, user: User, req: WebhookCreate
) -> WebhookSubscription:
    if req.all_batches and not user.is_admin:
        raise Forbidden("Only an admin may subscribe to every batch (all_batches).")
    await _check(req.url, settings)
    now = utcnow()
    sub = WebhookSubscription(
        owner_id=user.id,
        url=req.url,
        events=None if req.events is None else [str(e) for e in req.events],
        all_batches=req.all_batches,
        status=SubscriptionStatus.ACTIVE,
        secret=outbox.new_secret(),
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )
    session.add(sub)
    await session.flush()
    return sub


async def get(session: AsyncSession, user: User, subscription_id: int) -> WebhookSubscription:
    """The caller's own subscription; anyone else's is a 404."""
    sub = await session.get(WebhookSubscription, subscription_id, populate_existing=True)
    if sub is None or sub.owner_id != user.id:
        raise NotFound(f"Webhook {subscription_id} does not exist.")
    return sub


async def list_(
    session: AsyncSession, user: User, *, offset: int, limit: int
) -> tuple[list[WebhookSubscription], int]:
    stmt = select(WebhookSubscription).where(WebhookSubscription.owner_id == user.id)
    rows = await session.scalars(stmt.order_by(WebhookSubscription.id).offset(offset).limit(limit))
    return list(rows), await total_of(session, stmt)


async def update_(
    session: AsyncSession, settings: Settings, user: User, subscription_id: int, req: WebhookUpdate
) -> WebhookSubscription:
    sub = await get(session, user, subscription_id)
    if req.url is not None:
        await _check(req.url, settings)
        sub.url = req.url
    if "events" in req.model_fields_set:  # sent as null: every event type again
        sub.events = None if req.events is None else [str(e) for e in req.events]
    if req.status == SubscriptionStatus.ACTIVE:
        sub.status = SubscriptionStatus.ACTIVE
        sub.disabled_reason = None
        sub.consecutive_failures = 0
    elif req.status == SubscriptionStatus.DISABLED and sub.status != SubscriptionStatus.DISABLED:
        sub.status = SubscriptionStatus.DISABLED
        sub.disabled_reason = "Disabled by its owner."
    sub.updated_at = utcnow()
    await session.flush()
    return sub


async def remove(session: AsyncSession, user: User, subscription_id: int) -> None:
    sub = await get(session, user, subscription_id)
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id))
    await session.delete(sub)
    await session.flush()


# --------------------------------------------------------------------------- delivery log


async def deliveries(
    session: AsyncSession,
    user: User,
    subscription_id: int,
    *,
    offset: int,
    limit: int,
    status: DeliveryStatus | None = None,
) -> tuple[list[DeliveryOut], int]:
    """A subscription's deliveries, newest first."""
    sub = await get(session, user, subscription_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    return await _page(session, stmt, offset, limit)


async def batch_deliveries(
    session: AsyncSession, user: User, batch_id: int, *, offset: int, limit: int
) -> tuple[list[DeliveryOut], int]:
    """A batch's deliveries the caller may see: to their own subscriptions (an admin:
    all). The caller checks that the batch is theirs to see first."""
    stmt = select(WebhookDelivery).where(WebhookDelivery.batch_id == batch_id)
    if not user.is_admin:
        mine = select(WebhookSubscription.id).where(WebhookSubscription.owner_id == user.id)
        stmt = stmt.where(WebhookDelivery.subscription_id.in_(mine))
    return await _page(session, stmt, offset, limit)


async def _page(
    session: AsyncSession, stmt: Any, offset: int, limit: int
) -> tuple[list[DeliveryOut], int]:
    rows = await session.scalars(
        stmt.order_by(WebhookDelivery.id.desc()).offset(offset).limit(limit)
    )
    return [DeliveryOut.model_validate(r) for r in rows], await total_of(session, stmt)


async def _delivery(
    session: AsyncSession, sub: WebhookSubscription, delivery_id: int
) -> WebhookDelivery:
    found = await session.get(WebhookDelivery, delivery_id, populate_existing=True)
    if found is None or found.subscription_id != sub.id:
        raise NotFound(f"Delivery {delivery_id} of webhook {sub.id} does not exist.")
    return found


def _require_active(sub: WebhookSubscription) -> None:
    if sub.status != SubscriptionStatus.ACTIVE:
        raise Conflict(
            f"Webhook {sub.id} is disabled ({sub.disabled_reason or 'no reason given'}); "
            'enable it first (PATCH {"status": "active"}).'
        )


async def redeliver(
    session: AsyncSession, user: User, subscription_id: int, delivery_id: int
) -> DeliveryOut:
    """A new attempt of the same delivery (same ``webhook-id`` and body), now, whatever
    its status; if it fails, it is retried on the usual schedule from now.

    ``next_attempt_at`` moves off the lease of any attempt still in flight, so that
    attempt's outcome no longer matches in ``_record`` and cannot overwrite this one."""
    sub = await get(session, user, subscription_id)
    _require_active(sub)
    found = await _delivery(session, sub, delivery_id)
    now = utcnow()
    found.status = DeliveryStatus.PENDING
    found.next_attempt_at = now
    found.first_attempt_at = None
    found.delivered_at = None
    await session.flush()
    outbox.wake(session.sync_session, [found.id])
    return DeliveryOut.model_validate(found)


async def ping(session: AsyncSession, user: User, subscription_id: int) -> DeliveryOut:
    """A ``webhook.ping`` delivery through the outbox like any event."""
    sub = await get(session, user, subscription_id)
    _require_active(sub)
    now = utcnow()
    data = {"subscription_id": sub.id, "message": "A test delivery from batchd."}
    row = WebhookDelivery(
        subscription_id=sub.id,
        batch_id=None,
        event=PING,
        msg_id=outbox.new_msg_id(),
        body=outbox.body_of(PING, now, data),
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    outbox.wake(session.sync_session, [row.id])
    return DeliveryOut.model_validate(row)


# --------------------------------------------------------------------------- the job


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt."""
    return BACKOFF_S[attempts - 1] if attempts <= len(BACKOFF_S) else THEN_EVERY_S


def retry_delay(attempts: int, first: datetime, now: datetime) -> float | None:
    """After the ``attempts``-th attempt failed at ``now``: seconds until the next one,
    or ``None`` — give up, because it would come more than ``GIVE_UP_AFTER_S`` after
    the first attempt."""
    delay = backoff(attempts)
    if (now + timedelta(seconds=delay) - first).total_seconds() > GIVE_UP_AFTER_S:
        return None
    return delay


async def deliver(ctx: JobContext, delivery_id: int) -> None:
    """Claim the delivery's next attempt (if it is due and nobody holds it), send it,
    record the outcome. Idempotent: a duplicate wake-up finds nothing to claim."""
    settings = ctx.settings
    now = utcnow()
    lease = now + timedelta(seconds=settings.webhook_timeout + LEASE_GRACE_S)
    async with ctx.unit() as session:
        claimed = (
            await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                    or_(
                        WebhookDelivery.next_attempt_at.is_(None),
                        WebhookDelivery.next_attempt_at <= now,
                    ),
                )
                .values(
                    attempts=WebhookDelivery.attempts + 1,
                    next_attempt_at=lease,
                    first_attempt_at=func.coalesce(WebhookDelivery.first_attempt_at, now),
                )
                .returning(
                    WebhookDelivery.attempts,
                    WebhookDelivery.subscription_id,
                    WebhookDelivery.batch_id,
                    WebhookDelivery.msg_id,
                    WebhookDelivery.body,
                    WebhookDelivery.first_attempt_at,
                )
                .execution_options(synchronize_session=False)
            )
        ).one_or_none()
        if claimed is None:
            return
        sub = await session.get(WebhookSubscription, claimed.subscription_id)
        refusal = await _refusal(session, sub, claimed.batch_id)
        if refusal is not None:
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(
                    status=DeliveryStatus.FAILED,
                    attempts=claimed.attempts - 1,
                    next_attempt_at=None,
                    last_error=f"Not sent: {refusal}",
                )
                .execution_options(synchronize_session=False)
            )
            return
        assert sub is not None
        url, secret = sub.url, sub.secret
    headers = signed_headers(secret, claimed.msg_id, utcnow(), claimed.body)
    result = await send(
        url,
        headers,
        claimed.body,
        limit_s=settings.webhook_timeout,
        allow_private=settings.webhook_allow_private,
    )
    await _record(
        ctx, delivery_id, claimed.attempts, lease, claimed.first_attempt_at or now, result
    )


async def _refusal(
    session: AsyncSession, sub: WebhookSubscription | None, batch_id: int | None
) -> str | None:
    """Why a claimed delivery must not go out, or ``None``: its subscription is gone or
    disabled, or it is another user's batch and the owner may no longer see every batch
    (demoted since the row was written: ``outbox.sees_every_batch``, asked again now)."""
    if sub is None or sub.status != SubscriptionStatus.ACTIVE:
        return "the subscription is disabled."
    if batch_id is None or not sub.all_batches:
        return None  # a ping, or the owner's own batch (record wrote no other)
    allowed = await session.scalar(
        select(or_(outbox.sees_every_batch(), Batch.creator_id == WebhookSubscription.owner_id))
        .select_from(WebhookSubscription)
        .join(User, User.id == WebhookSubscription.owner_id)
        .outerjoin(Batch, Batch.id == batch_id)
        .where(WebhookSubscription.id == sub.id)
    )
    if allowed:
        return None
    return (
        f"batch {batch_id} is another user's, and the subscription's owner is no longer "
        "an admin: it receives only their own batches now."
    )


async def _record(
    ctx: JobContext,
    delivery_id: int,
    attempt: int,
    lease: datetime,
    first: datetime,
    result: Attempt,
) -> None:
    """The attempt's outcome, unless someone took the delivery meanwhile: another worker
    after our lease ran out (``attempts`` moved on), or a redelivery (``next_attempt_at``
    is no longer our lease) — their attempt's outcome counts, not ours."""
    now = utcnow()
    values: dict[str, Any] = {"last_status_code": result.status_code, "last_error": result.error}
    delay = 0.0
    if result.delivered:
        outcome = "delivered"
        values.update(status=DeliveryStatus.DELIVERED, delivered_at=now, next_attempt_at=None)
    else:
        next_in = retry_delay(attempt, first, now)
        if next_in is None:
            outcome = "failed"
            values.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
        else:
            outcome = "retrying"
            delay = next_in
            values.update(next_attempt_at=now + timedelta(seconds=delay))
    async with ctx.unit() as session:
        row = (
            await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                    WebhookDelivery.attempts == attempt,
                    WebhookDelivery.next_attempt_at == lease,
                )
                .values(**values)
                .returning(WebhookDelivery.subscription_id)
                .execution_options(synchronize_session=False)
            )
        ).one_or_none()
        if row is None:
            return
        if outcome == "delivered":
            await session.execute(  # only a count to reset is written (no hot row lock)
                update(WebhookSubscription)
                .where(
                    WebhookSubscription.id == row.subscription_id,
                    WebhookSubscription.consecutive_failures != 0,
                )
                .values(consecutive_failures=0)
            )
        elif outcome == "failed":
            await _count_failure(session, row.subscription_id)
        else:
            key = f"webhook:{delivery_id}:{attempt}"
            request_wakeup(
                session, Wakeup(outbox.JOB, delivery_id, outbox.PRIORITY, defer=delay, key=key)
            )
    metrics.webhook_attempt(outcome)


async def _count_failure(session: AsyncSession, subscription_id: int) -> None:
    failures = await session.scalar(
        update(WebhookSubscription)
        .where(WebhookSubscription.id == subscription_id)
        .values(consecutive_failures=WebhookSubscription.consecutive_failures + 1)
        .returning(WebhookSubscription.consecutive_failures)
    )
    if failures is not None and failures >= DISABLE_AFTER:
        await session.execute(
            update(WebhookSubscription)
            .where(
                WebhookSubscription.id == subscription_id,
                WebhookSubscription.status == SubscriptionStatus.ACTIVE,
            )
            .values(
                status=SubscriptionStatus.DISABLED,
                disabled_reason=f"{failures} deliveries in a row failed; the last one "
                f"at {utcnow().isoformat(timespec='seconds')}.",
                updated_at=utcnow(),
            )
        )
        log.warning("webhook %s disabled after %s failed deliveries", subscription_id, failures)


async def deliver_due(ctx: JobContext) -> None:
    """The cron (also run at start-up): wake every pending delivery that fell due and
    was not sent — its wake-up was lost (a process killed between commit and send, a
    queue outage) or its attempt's lease ran out."""
    cutoff = utcnow() - timedelta(seconds=LOST_AFTER_S)
    async with ctx.unit() as session:
        rows = (
            await session.execute(
                select(WebhookDelivery.id, WebhookDelivery.attempts)
                .where(
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                    WebhookDelivery.next_attempt_at <= cutoff,
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(CRON_BATCH)
            )
        ).all()
        for r in rows:
            key = f"webhook:{r.id}:{r.attempts}"
            request_wakeup(session, Wakeup(outbox.JOB, r.id, outbox.PRIORITY, key=key))


async def purge_deliveries(session: AsyncSession, older_than: datetime) -> int:
    """Delete delivered and given-up deliveries created (and delivered, if they were)
    before ``older_than``, at most ``PURGE_BATCH`` per call; a pending one is never
    deleted. The purge cron calls it with ``BATCH_HISTORY_TTL``: each row holds a whole
    batch object, so the log must not grow for ever."""
    done = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status.in_([DeliveryStatus.DELIVERED, DeliveryStatus.FAILED]),
            WebhookDelivery.created_at < older_than,
            or_(WebhookDelivery.delivered_at.is_(None), WebhookDelivery.delivered_at < older_than),
        )
        .limit(PURGE_BATCH)
    )
    result = await session.execute(
        delete(WebhookDelivery)
        .where(WebhookDelivery.id.in_(done.scalar_subquery()))
        .execution_options(synchronize_session=False)
    )
    purged = int(getattr(result, "rowcount", 0) or 0)
    if purged:
        log.info("purged %s old webhook deliveries", purged)
    return purged


# --------------------------------------------------------------------------- metrics


async def gauges(session: AsyncSession) -> tuple[int, float, dict[str, int]]:
    """(pending deliveries, age in seconds of the oldest pending one, subscriptions by
    status) for the scrape-time gauges."""
    backlog, oldest = (
        await session.execute(
            select(func.count(), func.min(WebhookDelivery.created_at)).where(
                WebhookDelivery.status == DeliveryStatus.PENDING
            )
        )
    ).one()
    age = 0.0
    if oldest is not None:
        if isinstance(oldest, str):  # SQLite's MIN() loses the column type
            oldest = datetime.fromisoformat(oldest)
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        age = max(0.0, (utcnow() - oldest).total_seconds())
    rows = await session.execute(
        select(WebhookSubscription.status, func.count()).group_by(WebhookSubscription.status)
    )
    counts = {str(s): int(n) for s, n in rows}
    return int(backlog), age, counts


def subscription_statuses() -> Sequence[str]:
    return [s.value for s in SubscriptionStatus]
