"""The outbox: delivery rows written in the transaction of the change they report.

``record`` runs inside that transaction's commit (``app/batches/notify.py`` calls it
from the session's ``before_commit``), so it is synchronous SQLAlchemy on the sync
session: a committed state change always has its delivery rows, and a rolled-back one
has none. The wake-up that sends each row goes out after the commit; the ``deliver_due``
cron sends whatever wake-up was lost."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.ext.asyncio import async_session
from sqlalchemy.orm import Session

from app.db.unit_of_work import request_wakeup
from app.domain import Wakeup
from app.models import User, WebhookDelivery, WebhookSubscription
from app.webhooks.events import DeliveryStatus, SubscriptionStatus

JOB = "webhook"
"""The job name of a delivery wake-up (``Wakeup.batch_id`` carries the delivery id)."""
PRIORITY = "high"
"""Notifications are small and late ones are useless: they jump the batch work."""


@dataclass(frozen=True)
class OutboxEvent:
    batch_id: int
    owner_id: int
    type: str
    data: dict[str, Any]
    at: datetime


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_msg_id() -> str:
    """The ``webhook-id`` of a delivery, the same on every attempt of it."""
    return f"msg_{uuid.uuid4().hex}"


def body_of(event_type: str, at: datetime, data: dict[str, Any]) -> str:
    """The exact JSON sent (and signed) on every attempt of a delivery."""
    payload = {"type": event_type, "timestamp": at.isoformat(), "data": data}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def wants(subscription: WebhookSubscription, event_type: str) -> bool:
    return subscription.events is None or event_type in subscription.events


def any_active(session: Session) -> bool:
    """One indexed probe: most commits of a batch change find nobody subscribed."""
    return bool(
        session.scalar(
            select(exists().where(WebhookSubscription.status == SubscriptionStatus.ACTIVE))
        )
    )


def sees_every_batch() -> ColumnElement[bool]:
    """SQL: the subscription may receive other users' batches — it asked for every
    batch and its owner is an admin *now* (a demoted owner keeps only their own). The
    caller joins ``User`` on the owner. ``service`` asks it again just before sending."""
    return and_(WebhookSubscription.all_batches.is_(True), User.is_admin)


def record(session: Session, events: Sequence[OutboxEvent]) -> list[int]:
    """Write one delivery per (event, interested active subscription) and ask for its
    wake-up after the commit. Returns the new delivery ids.

    A subscription gets the events of its owner's batches, and of every batch only while
    ``sees_every_batch`` holds (checked here, in the committing transaction)."""
    owners = {e.owner_id for e in events}
    found = session.execute(
        select(WebhookSubscription, sees_every_batch())
        .join(User, User.id == WebhookSubscription.owner_id)
        .where(
            WebhookSubscription.status == SubscriptionStatus.ACTIVE,
            or_(WebhookSubscription.owner_id.in_(owners), sees_every_batch()),
        )
    ).all()
    subscriptions = [(sub, bool(everything)) for sub, everything in found]
    rows: list[WebhookDelivery] = []
    for e in events:
        body = body_of(e.type, e.at, e.data)
        for sub, everything in subscriptions:
            if (everything or sub.owner_id == e.owner_id) and wants(sub, e.type):
                rows.append(
                    WebhookDelivery(
                        subscription_id=sub.id,
                        batch_id=e.batch_id,
                        event=e.type,
                        msg_id=new_msg_id(),
                        body=body,
                        status=DeliveryStatus.PENDING,
                        attempts=0,
                        next_attempt_at=e.at,
                        created_at=e.at,
                    )
                )
    if not rows:
        return []
    session.add_all(rows)
    session.flush()
    wake(session, [r.id for r in rows])
    return [r.id for r in rows]


def wake(session: Session, delivery_ids: Sequence[int], *, defer: float | None = None) -> None:
    """Send these deliveries once the session's unit of work has committed."""
    proxy = async_session(session)
    if proxy is None:  # a plain sync session: the deliver_due cron sends them
        return
    for delivery_id in delivery_ids:
        request_wakeup(proxy, Wakeup(JOB, delivery_id, PRIORITY, defer=defer))
