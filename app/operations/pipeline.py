"""How an item gets applied: the one place that picks the strategy.

Every strategy is the same flow — decide each item, change what passes, record one
outcome per item (``app.batches.details.record_outcomes``) — with a different number
of statements and round trips. ``tests/test_strategies.py`` runs every built-in type
through every strategy its backend offers and checks they leave equal rows.

``SEED_FUSED`` (filter batches)
    The seed page applies the operation while it inserts the details. PostgreSQL: a
    lock-free ``fuse_at_seed`` type through its ``bulk_sql``
    (``pipeline_sql.SEED_AND_APPLY``), a locking type through ``apply_at_seed``
    (``task.approve``: ``approve_at_seed``). SQLite: a lock-free type's
    ``Operation.apply`` on the page (``details._seed_applied``), ``task.approve``'s
    ``apply_at_seed`` — both in the page's transaction, which holds SQLite's one writer
    throughout, so nothing needs locking first. Each applied item's detail is
    written once, already ``success``; nothing is claimed or locked. Why: it removes a
    write, a lock and a claim per item — approve reaches 0.54× and suspend 0.78× of
    their raw-SQL ceilings this way on PostgreSQL. Cost: only what passes is applied;
    the rest is seeded pending for the executor, which decides it and says why.
``EXECUTE_FUSED`` (PostgreSQL, types with ``bulk_sql``)
    The executor's claim (``FOR UPDATE SKIP LOCKED``), the operation's CTEs and the
    ``success`` of every applied detail are one statement
    (``pipeline_sql.CLAIM_AND_APPLY``); what the CTEs leave goes through ``apply`` in
    the same transaction. Why: one round trip per chunk for the common case (id-list
    batches, seed-page stragglers). Cost: a type must express its effect as CTEs. If
    the statement itself fails, the chunk is claimed again plainly.
``CLAIM_AND_APPLY`` (every backend, every type)
    Claim a chunk, call ``Operation.apply`` (a handful of bulk statements), record.
    The portable reference path, and SQLite's executor path besides isolation. On
    PostgreSQL an instance type's ``apply`` first takes what it can in one statement
    (``shortcuts_apply``: the stragglers of a fused chunk, a fallback chunk).
``ISOLATED`` (every backend)
    One transaction per item, so a bad item fails alone. Chosen automatically only when
    a chunk's bulk apply raised; slow (a transaction per item), never a first choice.

The engine's PostgreSQL statements are in ``pipeline_sql``; SQLite needs none of its
own. Batch-level conditions (a paused or rate-limited batch never seeds fused) are the
callers'; this module knows only the operation and the dialect. Tests force one
strategy with ``forced``: an impossible one raises instead of running as another.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator

from app.operations.registry import Operation

POSTGRESQL = "postgresql"


class Strategy(enum.StrEnum):
    SEED_FUSED = "seed_fused"
    EXECUTE_FUSED = "execute_fused"
    CLAIM_AND_APPLY = "claim_and_apply"
    ISOLATED = "isolated"


class Stage(enum.Enum):
    """Who asks: the seed page (may it apply?) or the executor (how to run a chunk?)."""

    SEED = "seed"
    EXECUTE = "execute"


_forced: Strategy | None = None
"""Set only by ``forced`` (tests): a process-wide override, so that jobs the runner
started before the test body see it too (a context variable would not reach them)."""


def strategies_for(op: Operation, dialect: str) -> tuple[Strategy, ...]:
    """Every strategy that can run ``op`` on ``dialect``."""
    valid = [Strategy.CLAIM_AND_APPLY, Strategy.ISOLATED]
    if dialect == POSTGRESQL and op.executes_fused:
        valid.insert(0, Strategy.EXECUTE_FUSED)
    if op.seeds_fused:
        valid.insert(0, Strategy.SEED_FUSED)
    return tuple(valid)


def strategy_for(op: Operation, dialect: str, stage: Stage) -> Strategy:
    """The strategy for ``stage``: the fastest valid one, or the forced one. A forced
    strategy of the other stage means this stage takes the plain path, so the forced
    one alone does the fast work (forcing ``SEED_FUSED`` leaves stragglers to
    ``CLAIM_AND_APPLY``)."""
    valid = strategies_for(op, dialect)
    if _forced is not None:
        if _forced not in valid:
            raise ValueError(f"{_forced} cannot run {op.type} on {dialect}")
        if stage is Stage.SEED:
            return _forced if _forced is Strategy.SEED_FUSED else Strategy.CLAIM_AND_APPLY
        return _forced if _forced is not Strategy.SEED_FUSED else Strategy.CLAIM_AND_APPLY
    if stage is Stage.SEED:
        return Strategy.SEED_FUSED if Strategy.SEED_FUSED in valid else Strategy.CLAIM_AND_APPLY
    return valid[1] if valid[0] is Strategy.SEED_FUSED else valid[0]


def shortcuts_apply(dialect: str) -> bool:
    """Whether ``apply`` may start with its own one-statement PostgreSQL shortcut
    (``InstanceOperation.fast_path``) for the items it can take without a decision. Not
    when a test forced ``CLAIM_AND_APPLY`` or ``ISOLATED``: then the portable
    decide-and-write path runs on PostgreSQL too, the reference the fused paths are
    compared with."""
    plain = _forced in (Strategy.CLAIM_AND_APPLY, Strategy.ISOLATED)
    return dialect == POSTGRESQL and not plain


@contextlib.contextmanager
def forced(strategy: Strategy) -> Iterator[None]:
    """Run every batch with ``strategy`` (tests only: the equivalence of strategies)."""
    global _forced
    previous, _forced = _forced, strategy
    try:
        yield
    finally:
        _forced = previous
