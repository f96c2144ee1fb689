"""The operation-type registry: a new type is one module with one ``Operation`` subclass."""

from __future__ import annotations

import abc
import builtins
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain import BatchRun, Outcome, WorkItem
from app.errors import ValidationFailed
from app.operations.item_locks import ItemLock
from app.operations.targets import Target
from app.schemas.common import StrictModel, validate_part


class NoParams(StrictModel):
    """Operations without parameters still reject unknown keys."""


@dataclass(frozen=True)
class BulkSql:
    """An operation's PostgreSQL fast path, for the executor to fuse with its claim.

    ``ctes`` are common table expressions that apply the operation to the items of the
    executor's ``claimed`` CTE (columns ``id``, ``item_id``) — every item that can be
    applied without a decision in Python — and include one named ``applied`` returning
    the ``id`` of each item applied. Items not applied are handed to ``apply`` in the
    same transaction, which says why (ignored, failed) or applies them after all.
    """

    ctes: str
    params: dict[str, Any]


class Operation(abc.ABC):
    """Everything about one batch type: its name, params, target, lock and effect."""

    type: ClassVar[str]
    target: ClassVar[Target]
    """Which table item ids point into, which filter selects them, how they are paged."""
    Params: ClassVar[builtins.type[BaseModel]] = NoParams
    admin_only: ClassVar[bool] = False
    """Only an admin may create (or dry-run) a batch of this type: a 403 for anyone
    else, before anything is read or written."""
    supports_dry_run: ClassVar[bool] = False
    """``apply`` honours ``run.dry_run`` (decides without writing). Otherwise a dry run
    applies for real inside a savepoint that is rolled back: correct, but slower."""
    fuse_at_seed: ClassVar[bool] = False
    """A lock-free type whose ``bulk_sql`` reads only ``claimed.item_id``: a seed page may
    apply it while inserting the details (``details.create_details_from``)."""
    lock: ClassVar[ItemLock | None] = None
    """The lock details hold on their items while the batch runs, if any. Such an
    operation clears the lock of every item it applies successfully (in the same
    statement that changes the item); the batch engine releases the others."""

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """422 with field errors before anything is written."""
        model = validate_part(
            self.Params, params, part="params", what=f"Invalid params for {self.type}"
        )
        return model.model_dump(mode="json", exclude_none=True)

    async def check_params(  # noqa: B027 - optional hook
        self, session: AsyncSession, params: dict[str, Any]
    ) -> None:
        """Checks of the validated params that need the database (a target version that
        must exist, say): raise ``ValidationFailed``. Runs at creation, before anything
        is written."""

    @abc.abstractmethod
    async def apply(
        self, session: AsyncSession, run: BatchRun, items: list[WorkItem]
    ) -> list[Outcome]:
        """Apply the operation to a chunk with a handful of bulk statements; one outcome per
        item, in order. Must be idempotent: an item already in the target state is
        ``ignored``. May raise on a database error: the executor then isolates items."""

    async def apply_at_seed(
        self, session: AsyncSession, run: BatchRun, page: Select[Any]
    ) -> tuple[list[int], set[int]]:
        """A locking type's seed-page fast path (offered by overriding it): read the
        page (its target's ``page_after``: item ids, ascending; an override may read
        more columns of the same rows), apply what certainly passes; return the page's
        ids and those applied. The rest is locked and left pending for ``apply``."""
        return list(await session.scalars(page)), set()

    @property
    def applies_at_seed(self) -> bool:
        return type(self).apply_at_seed is not Operation.apply_at_seed

    @property
    def executes_fused(self) -> bool:
        """Offers ``bulk_sql`` (``pipeline.Strategy.EXECUTE_FUSED``)."""
        return type(self).bulk_sql is not Operation.bulk_sql

    @property
    def seeds_fused(self) -> bool:
        """A seed page may apply it (``pipeline.Strategy.SEED_FUSED``): a lock-free
        ``fuse_at_seed`` type through ``bulk_sql``, a locking one through
        ``apply_at_seed``."""
        if self.lock is None:
            return self.fuse_at_seed and self.executes_fused
        return self.applies_at_seed

    async def bulk_sql(self, session: AsyncSession, run: BatchRun) -> BulkSql | None:
        """The PostgreSQL fast path (see ``BulkSql``), or None to claim and ``apply``."""
        return None


OPERATIONS: dict[str, Operation] = {}


def register(op: Operation) -> Operation:
    OPERATIONS[op.type] = op
    return op


def get_operation(op_type: str) -> Operation:
    try:
        return OPERATIONS[op_type]
    except KeyError:
        raise ValidationFailed(
            f"Unknown batch type {op_type!r}; known types: {', '.join(sorted(OPERATIONS))}.",
            fields=[{"loc": ["type"], "msg": "unknown batch type"}],
        ) from None
