"""Batch events for webhooks, written in the transaction of the change they report.

``note`` remembers an event on the session (``state.move`` notes every status change,
``details.bump_counters`` a run's first failure, ``service.create_batch`` the
creation). When that session commits, the ``before_commit`` hook below — the one place
events reach the outbox — writes a delivery row per interested subscription, with the
batch object as ``GET /batches/{id}`` shows it at that moment, *inside the same
transaction*; a rolled-back session writes nothing. With no active subscription at all
the cost is one indexed ``EXISTS``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from app.db.base import utcnow
from app.domain import FINAL, RUNNABLE, BatchStatus
from app.models import Batch, User
from app.schemas.batch import BatchOut
from app.webhooks import outbox
from app.webhooks.events import WebhookEvent

_EVENTS = "batchd.batch_events"
S = BatchStatus
_FINAL_EVENTS = {
    S.COMPLETED: WebhookEvent.BATCH_COMPLETED,
    S.ABORTED: WebhookEvent.BATCH_ABORTED,
    S.CANCELLED: WebhookEvent.BATCH_CANCELLED,
}


def note(session: Any, batch_id: int, kind: WebhookEvent) -> None:
    """Report ``kind`` for ``batch_id`` when ``session`` (sync or async) commits."""
    session.info.setdefault(_EVENTS, []).append((batch_id, str(kind), utcnow()))


def move_events(source: str, target: BatchStatus, *, first_start: bool) -> list[WebhookEvent]:
    """What a status change means to a subscriber. A retry (a final batch running
    again) reports nothing until it finishes again."""
    found: list[WebhookEvent] = []
    if target == S.SUSPENDED:
        found.append(WebhookEvent.BATCH_SUSPENDED)
    elif source == S.SUSPENDED and target != S.CANCELLED:
        found.append(WebhookEvent.BATCH_RESUMED)
    if first_start and target in RUNNABLE:
        found.append(WebhookEvent.BATCH_STARTED)
    if target in FINAL:
        found.append(_FINAL_EVENTS[target])
    return found


@event.listens_for(Session, "before_commit")
def _write_outbox(session: Session) -> None:
    if session.in_nested_transaction():
        return
    events = session.info.pop(_EVENTS, None)
    if not events or not outbox.any_active(session):
        return
    session.flush()
    ids = {batch_id for batch_id, _, _ in events}
    batches = {
        b.id: b
        for b in session.scalars(
            select(Batch).where(Batch.id.in_(ids)).execution_options(populate_existing=True)
        )
    }
    creators = {b.creator_id for b in batches.values()}
    rows = session.execute(select(User.id, User.name).where(User.id.in_(creators))).all()
    names = {user_id: name for user_id, name in rows}
    data = {
        b.id: BatchOut.model_validate(b)
        .model_copy(update={"creator_name": names.get(b.creator_id)})
        .model_dump(mode="json")
        for b in batches.values()
    }
    outbox.record(
        session,
        [
            outbox.OutboxEvent(batch_id, batches[batch_id].creator_id, kind, data[batch_id], at)
            for batch_id, kind, at in events
            if batch_id in batches
        ],
    )


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    """A rolled-back (or finished) outermost transaction reports nothing more."""
    if transaction.parent is None:
        session.info.pop(_EVENTS, None)
