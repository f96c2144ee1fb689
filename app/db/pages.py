"""Pagination: every list endpoint returns one page and the total it was cut from."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    ClauseElement,
    ColumnElement,
    Executable,
    Select,
    bindparam,
    cast,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

EXACT_UP_TO = 10_000
"""A list of tasks or instances counts its matches exactly up to this many; beyond,
``total`` is PostgreSQL's estimate (``total_exact: false``). Counting a million tasks
joined with their processes took 1.5 s a page — and that much database time from the
batches running meanwhile."""


class OrderedEquals(ColumnElement[bool]):
    """``column = value`` for a page ordered by (``column``, id): one person's list.

    PostgreSQL treats ``column = constant`` as making ``ORDER BY column, id`` the same
    as ``ORDER BY id``, and then may walk the primary key backwards, skipping
    everybody else's rows, whenever its statistics (which may be minutes old) say the
    column's value is common. Written as ``column = ANY(ARRAY[value])`` the ordering
    stays (column, id), which only an index on (column, id) gives without sorting: the
    page reads its rows and no others, whatever the statistics say. Other databases
    get the plain equality."""

    type = Boolean()
    _is_implicitly_boolean = True  # a comparison: no "= 1" after it where booleans are ints
    inherit_cache = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("value", InternalTraversal.dp_clauseelement),
    ]

    def __init__(
        self, column: ColumnElement[Any] | InstrumentedAttribute[Any], value: object
    ) -> None:
        self.column: ColumnElement[Any] = (
            column.expression if isinstance(column, InstrumentedAttribute) else column
        )
        self.value = bindparam(None, value, type_=column.type)


@compiles(OrderedEquals)
def _compile_equals(element: OrderedEquals, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} = {compiler.process(element.value, **kw)}"


@compiles(OrderedEquals, "postgresql")
def _compile_equals_any(element: OrderedEquals, compiler: SQLCompiler, **kw: Any) -> str:
    value = compiler.process(cast(element.value, element.column.type), **kw)
    return f"{compiler.process(element.column, **kw)} = ANY(ARRAY[{value}])"


async def total_of(session: AsyncSession, stmt: Select[Any]) -> int:
    """How many rows ``stmt`` matches (its ORDER BY, OFFSET and LIMIT are ignored)."""
    counted = stmt.order_by(None).offset(None).limit(None).subquery()
    return int(await session.scalar(select(func.count()).select_from(counted)) or 0)


@dataclass(frozen=True)
class Total:
    """How many rows a list matches: exact, or (past ``EXACT_UP_TO``) the planner's
    estimate."""

    n: int
    exact: bool = True


async def count_matches(session: AsyncSession, stmt: Select[Any]) -> Total:
    """``total_of`` that stays cheap at any size on PostgreSQL: counts at most
    ``EXACT_UP_TO + 1`` rows, and past that takes the planner's estimate (never below
    what was counted). SQLite has no estimate: always exact."""
    if session.get_bind().dialect.name != "postgresql":
        return Total(await total_of(session, stmt))
    matching = stmt.order_by(None).offset(None).limit(None)
    bounded = matching.limit(EXACT_UP_TO + 1).subquery()
    n = int(await session.scalar(select(func.count()).select_from(bounded)) or 0)
    if n <= EXACT_UP_TO:
        return Total(n)
    return Total(max(n, await estimated_rows(session, matching)), exact=False)


class _Explain(Executable, ClauseElement):
    """``EXPLAIN (FORMAT JSON) <select>`` with the select's own bound parameters."""

    inherit_cache = False

    def __init__(self, stmt: Select[Any]) -> None:
        self.stmt = stmt


@compiles(_Explain, "postgresql")
def _compile_explain(element: _Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.stmt, **kw)


async def estimated_rows(session: AsyncSession, stmt: Select[Any]) -> int:
    """PostgreSQL's estimate of the rows ``stmt`` returns (no row is read)."""
    plan = await session.scalar(_Explain(stmt))
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


async def keyset_pages(
    sm: async_sessionmaker[AsyncSession], query: Select[Any], key: Any, page: int
) -> AsyncIterator[Sequence[Any]]:
    """The rows of ``query`` — whose first column is ``key`` — in ``key`` order, ``page``
    at a time, each page read in a short transaction of its own (keyset paging): an
    export of a million rows never holds a connection or a snapshot."""
    after = 0
    while True:
        async with sm() as session:
            rows = (await session.execute(query.where(key > after).order_by(key).limit(page))).all()
        if not rows:
            return
        yield rows
        after = rows[-1][0]
