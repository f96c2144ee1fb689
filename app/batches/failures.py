"""Failure groups: a batch's failed items grouped by (error code, message, retryable),
where the message is the error sentence with the item's own id taken out — so 97
"The process of task 4711 is suspended, not active." failures are one group
"The process of task N is suspended, not active." of 97 — and an imported row's
prefix too ("row 16: Category is required" → "row N: Category is required"), so 284
rows missing one value are one group, not 284.

Computed in the database with one GROUP BY (a million failed details are never loaded
into Python). The one dialect-specific piece is ``normalized_message``, one rule
(``app.db.session.ROW_PREFIX`` and the item id as a whole word) in two spellings:
PostgreSQL's ``regexp_replace``, SQLite's ``batchd_failure_message`` function.
A group is also a filter: ``group_clauses`` selects its details, for the details list and
for a retry of the group.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Text,
    case,
    cast,
    false,
    func,
    literal,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches.service import list_details
from app.db.session import FAILURE_MESSAGE, ROW_N, ROW_PREFIX
from app.domain import DetailStatus, ErrorCode
from app.models import Batch, BatchDetail
from app.schemas.batch import DetailOut, FailureGroup, FailureGroupsOut

MAX_GROUPS = 50
"""At most this many groups are returned (largest first); ``groups_truncated`` says
when there were more."""
SAMPLE_SIZE = 10
"""Item ids shown per group: the first ones, by detail id."""


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def normalized_message(dialect: str) -> ColumnElement[str]:
    """A detail's error sentence with an imported row's prefix as ``row N: `` and the
    first mention of its own item id (a whole word) as ``N``
    (``app.db.session.failure_message``); ``""`` for a failure without a sentence."""
    error = func.coalesce(BatchDetail.error, "")
    if dialect == "postgresql":
        unrowed = func.regexp_replace(error, literal(ROW_PREFIX, Text), ROW_N, type_=Text)
        word = literal("\\m", Text) + cast(BatchDetail.item_id, Text) + literal("\\M", Text)
        return func.regexp_replace(unrowed, word, "N", type_=Text)
    return getattr(func, FAILURE_MESSAGE)(error, BatchDetail.item_id, type_=Text)


def error_code_of() -> ColumnElement[str]:
    """A failure's code; a legacy row (no code, or a word no longer known) is ``internal``."""
    return case(
        (BatchDetail.error_code.in_([c.value for c in ErrorCode]), BatchDetail.error_code),
        else_=ErrorCode.INTERNAL.value,
    )


def group_clauses(
    session: AsyncSession, error_code: ErrorCode, message: str | None = None
) -> list[ColumnElement[bool]]:
    """The failed details of one group (``message`` None: every message of the code)."""
    clauses = [BatchDetail.status == DetailStatus.FAILED, error_code_of() == error_code.value]
    if message is not None:
        clauses.append(normalized_message(_dialect(session)) == message)
    return clauses


async def failure_groups(session: AsyncSession, batch: Batch) -> FailureGroupsOut:
    """The batch's failures in groups, largest first (ties: by message), at most
    ``MAX_GROUPS`` of them, each with its first ``SAMPLE_SIZE`` item ids."""
    dialect = _dialect(session)
    rows = (
        select(
            error_code_of().label("code"),
            normalized_message(dialect).label("message"),
            func.coalesce(BatchDetail.retryable, false()).label("retryable"),
            BatchDetail.item_id,
            BatchDetail.id,
        )
        .where(BatchDetail.batch_id == batch.id, BatchDetail.status == DetailStatus.FAILED)
        .subquery()
    )
    keys = (rows.c.code, rows.c.message, rows.c.retryable)
    count = func.count()
    columns: list[Any] = [*keys, count.label("n"), func.sum(count).over().label("total")]
    if dialect == "postgresql":
        samples = func.array_agg(aggregate_order_by(rows.c.item_id, rows.c.id))
        columns.append(samples[1:SAMPLE_SIZE].label("samples"))
    found = (
        await session.execute(
            select(*columns)
            .group_by(*keys)
            .order_by(count.desc(), rows.c.message, rows.c.code, rows.c.retryable)
            .limit(MAX_GROUPS + 1)
        )
    ).all()
    top = found[:MAX_GROUPS]
    if dialect == "postgresql":
        sampled = {(r.code, r.message, r.retryable): list(r.samples) for r in top}
    else:
        sampled = await _samples(session, rows, [(r.code, r.message, r.retryable) for r in top])
    return FailureGroupsOut(
        total_failed=int(found[0].total) if found else 0,
        groups=[
            FailureGroup(
                error_code=ErrorCode(r.code),
                message=r.message,
                count=r.n,
                retryable=bool(r.retryable),
                sample_item_ids=sampled.get((r.code, r.message, r.retryable), []),
            )
            for r in top
        ],
        groups_truncated=len(found) > MAX_GROUPS,
    )


async def _samples(
    session: AsyncSession, rows: Any, groups: list[tuple[str, str, bool]]
) -> dict[tuple[str, str, bool], list[int]]:
    """SQLite (no ordered ``array_agg`` before 3.44): one more statement, the first
    ``SAMPLE_SIZE`` item ids of each of the returned groups, by a window function."""
    if not groups:
        return {}
    keys = (rows.c.code, rows.c.message, rows.c.retryable)
    ranked = select(
        *keys,
        rows.c.item_id,
        func.row_number().over(partition_by=keys, order_by=rows.c.id).label("rank"),
    ).subquery()
    ranked_keys = (ranked.c.code, ranked.c.message, ranked.c.retryable)
    result = await session.execute(
        select(*ranked_keys, ranked.c.item_id)
        .where(ranked.c.rank <= SAMPLE_SIZE, tuple_(*ranked_keys).in_(groups))
        .order_by(ranked.c.rank)
    )
    out: dict[tuple[str, str, bool], list[int]] = defaultdict(list)
    for code, message, retryable, item_id in result:
        out[(code, message, bool(retryable))].append(item_id)
    return out


async def group_item_ids(
    session: AsyncSession, batch: Batch, error_code: ErrorCode, message: str | None
) -> list[int]:
    """The failed items of one group: what ``POST /retry`` with a group retries."""
    return list(
        await session.scalars(
            select(BatchDetail.item_id)
            .where(BatchDetail.batch_id == batch.id, *group_clauses(session, error_code, message))
            .order_by(BatchDetail.id)
        )
    )


async def group_details(
    session: AsyncSession,
    batch: Batch,
    error_code: ErrorCode,
    message: str | None,
    *,
    offset: int,
    limit: int,
) -> tuple[list[DetailOut], int]:
    """One page of a group's details, in detail order (the console's "Show items"),
    titled as ``list_details`` titles every page (one query builder)."""
    return await list_details(
        session,
        batch,
        offset=offset,
        limit=limit,
        where=group_clauses(session, error_code, message),
    )
