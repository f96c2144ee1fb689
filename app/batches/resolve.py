"""Checking a create request before anything is written: shared by create and dry run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db.base import utcnow
from app.domain import ErrorCode
from app.errors import Forbidden, TooLarge, ValidationFailed
from app.models import User
from app.operations import Operation, get_operation
from app.schemas.batch import BatchCreate

MAX_START_DELAY = timedelta(days=30)


@dataclass
class Listed:
    """Targets listed one by one — an id list, or the rows of an Excel import with each
    row's number and payload. ``errors[i]`` set makes item ``i`` a pre-failed row (it
    did not validate): recorded ``failed`` with that sentence and ``error_codes[i]``
    (``validation`` when unset), never locked, never run.
    Columns, not objects: a million ids stay a list of ints."""

    item_ids: list[int]
    rows: list[int | None] | None = None
    payloads: list[dict[str, Any] | None] | None = None
    errors: list[str | None] | None = None
    error_codes: list[ErrorCode | None] | None = None

    def __len__(self) -> int:
        return len(self.item_ids)

    def pages(self, size: int) -> Iterator[Listed]:
        """The items ``size`` at a time, in order."""
        for start in range(0, len(self), size):
            window = slice(start, start + size)
            yield Listed(
                self.item_ids[window],
                self.rows[window] if self.rows is not None else None,
                self.payloads[window] if self.payloads is not None else None,
                self.errors[window] if self.errors is not None else None,
                self.error_codes[window] if self.error_codes is not None else None,
            )


class ListedSource(Protocol):
    """Listed targets however they are held: a ``Listed`` in memory, or a spool on disk
    (``app.batches.spool``) for sources too big to hold, such as an Excel import."""

    def __len__(self) -> int: ...

    def pages(self, size: int) -> Iterator[Listed]: ...


@dataclass
class Resolved:
    """A validated create request: its operation, params and its source — exactly one
    of ``listed`` (resolved now) or ``filter`` (resolved page by page while seeding)."""

    op: Operation
    params: dict[str, Any]
    listed: ListedSource | None
    filter: dict[str, Any] | None
    total: int
    seed_until: int
    source: str = "api"
    is_single: bool = False
    skipped_rows: int = 0
    """An imported template's undecided rows (not items)."""


async def resolve(
    session: AsyncSession, settings: Settings, user: User, req: BatchCreate
) -> Resolved:
    """Everything a create request is checked against before anything is written (422 /
    413): type, params (also against the database), exactly one of ids / filter, the
    item limit, ``start_at``. Shared by create and dry run."""
    op = get_operation(req.type)
    if op.admin_only and not user.is_admin:
        raise Forbidden(f"Only an admin may run {op.type} batches.")
    params = op.validate_params(req.params)
    await op.check_params(session, params)
    if (req.ids is None) == (req.filter is None):
        raise ValidationFailed(
            "Give exactly one of ids or filter.",
            fields=[{"loc": ["ids"], "msg": "exactly one of ids / filter is required"}],
        )
    if req.start_at is not None:
        now = utcnow()
        if not now < req.start_at <= now + MAX_START_DELAY:
            raise ValidationFailed(
                "start_at must be in the future and at most 30 days ahead.",
                fields=[{"loc": ["start_at"], "msg": "must be in the next 30 days"}],
            )
    flt: dict[str, Any] | None = None
    listed: ListedSource | None = None
    seed_until = 0
    exact = True
    if req.ids is not None:
        listed = Listed(list(dict.fromkeys(req.ids)))
        total = len(listed)
    else:
        assert req.filter is not None
        flt = op.target.parse_filter(req.filter)
        if req.dry_run:  # it evaluates every item anyway: the exact count costs little
            total, seed_until = await op.target.count(session, user, flt)
        else:  # quick at any size: an estimate at scale, counted exactly by the seed job
            limit = settings.max_items
            counted = await op.target.count_for_create(session, user, flt, max_items=limit)
            total, seed_until, exact = counted.total, counted.seed_until, counted.exact
    if total > settings.max_items:
        size = f"{total}" if exact else f"more than {settings.max_items}"
        raise TooLarge(f"This batch would hold {size} items; the limit is {settings.max_items}.")
    return Resolved(op, params, listed, flt, total, seed_until)
