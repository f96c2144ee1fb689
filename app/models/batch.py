"""Batches and their per-item details."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, ForeignKey, Index, String, Text, UniqueConstraint, and_
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, BigId, JsonType, UTCDateTime, utcnow
from app.domain import DetailStatus, may_retry
from app.models.ids import NO_ID_REUSE


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("creator_id", "idempotency_key"),
        Index("ix_batches_creator_created", "creator_id", "created_at"),
        Index("ix_batches_status_updated", "status", "updated_at"),
        Index("ix_batches_finished_at", "finished_at"),
        Index("ix_batches_status_start_at", "status", "start_at"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(String(50), index=True)
    status: Mapped[str] = mapped_column(String(16), default="created")
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    creator_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    params: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    filter: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    source: Mapped[str] = mapped_column(String(8), default="api")
    is_single: Mapped[bool] = mapped_column(default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    """sha256 of the create request behind ``idempotency_key`` (same key, other request
    → 422 IdempotencyKeyReused)."""
    total: Mapped[int] = mapped_column(default=0)
    skipped_rows: Mapped[int] = mapped_column(default=0, server_default="0")
    """Rows of an imported template that nobody decided (blank Decision): not items."""
    success: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    ignored: Mapped[int] = mapped_column(default=0)
    cancelled: Mapped[int] = mapped_column(default=0)
    chunk_size: Mapped[int] = mapped_column(default=100)
    max_retries: Mapped[int] = mapped_column(default=3)
    failure_threshold: Mapped[float | None] = mapped_column(Float)
    history_ttl: Mapped[int | None]
    error_file: Mapped[str | None] = mapped_column(String(500))
    # Seeding (filter batches): details are created page by page in item-id order, up to
    # the highest id that matched when the batch was created (items created later, e.g.
    # the next task of an approved one, are not part of the batch).
    seed_cursor: Mapped[int] = mapped_column(default=0)
    seed_until: Mapped[int] = mapped_column(default=0)
    seeding_done: Mapped[bool] = mapped_column(default=False)
    # Operator controls: a scheduled start, and a rate limit shared by every worker
    # (``rate_next_at``: epoch seconds at which the next reserved slot begins).
    start_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    targets_resolved: Mapped[bool] = mapped_column(default=True)
    """False for a scheduled filter batch: the seed job resolves its filter at start."""
    max_items_per_second: Mapped[float | None] = mapped_column(Float)
    rate_next_at: Mapped[float | None] = mapped_column(Float)
    # Monotonic progress sequence: the SSE event id.
    progress_seq: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BatchDetail(Base):
    __tablename__ = "batch_details"
    __table_args__ = (
        Index("ix_batch_details_batch_status", "batch_id", "status", "id"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # No foreign key, on purpose: its check runs once per inserted detail and cost half
    # of seeding's time (measured: 92 → 50 ms per 5 000 rows). Details are written at
    # creation (same transaction as the batch) or by a seed page, which never overlaps a
    # cancel or purge of its batch (``seed_exclusion.exclude_seeding``) and only commits for a
    # batch that is not final; every delete path removes details before the batch.
    batch_id: Mapped[int]
    item_id: Mapped[int]
    row: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(32))
    """A failure's kind (``app.domain.ErrorCode``); null unless failed."""
    retryable: Mapped[bool | None]
    """Whether running the item again could change anything; null unless failed."""
    retry_count: Mapped[int] = mapped_column(default=0)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


def awaiting_auto_retry(max_retries: Any) -> ColumnElement[bool]:
    """A detail an automatic retry may still requeue: failed, ``retryable`` (transient,
    locked: nothing needs fixing) and not exhausted. The auto-retry cron picks by it, and
    a finished batch keeps exactly these items locked. (A manual retry takes any failed,
    non-exhausted one: the user says the cause is fixed.)"""
    return and_(
        BatchDetail.status == DetailStatus.FAILED,
        BatchDetail.retryable.is_(True),
        may_retry(BatchDetail.retry_count, max_retries),
    )


class SeedClaim(Base):
    """A page of a filter batch's items, (after_id, until_id], claimed by a seed lane and
    not yet seeded. Claiming (moving ``batches.seed_cursor`` past the page) and seeding
    (its details, and the operation applied where it may be) are separate short
    transactions, so several lanes seed one batch at once; the row is deleted in the
    transaction that seeds the page, and a claim whose lane died is taken by the next
    seed job (``app/batches/seeding.py``). No foreign key, as for details."""

    __tablename__ = "batch_seed_claims"

    batch_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    after_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    until_id: Mapped[int] = mapped_column(BigId)
