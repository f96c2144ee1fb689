"""One statement for many rows, with one bind parameter however many rows.

``UPDATE … WHERE id = :id`` through ``executemany`` costs a statement execution per row,
and a multi-row INSERT or an ``IN (…)`` list makes SQLAlchemy render and bind one
parameter per value. On PostgreSQL we send the rows as one JSON array
(``… FROM jsonb_to_recordset(:rows) AS v(…)``) and id lists as one array
(``id = ANY(:ids)``): one statement, one cached plan, whatever the chunk size. SQLite
runs in-process, where ``executemany`` and ``IN`` are already cheap, so it keeps them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Select,
    Table,
    any_,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


SQLITE_IN_MAX = 500
"""Up to this many ids SQLite gets a plain ``IN (…)``; a longer list goes as one JSON
array (SQLite refuses more than 32 766 bound variables in a statement)."""


def id_in(session: AsyncSession, column: Any, ids: Sequence[int]) -> ColumnElement[bool]:
    """``column IN (ids)`` with one bind parameter however many ids: ``column =
    ANY(:array)`` on PostgreSQL (asyncpg binds at most 32 767 arguments), ``json_each``
    on SQLite for long lists."""
    if _is_postgres(session):
        array = bindparam(None, value=list(ids), type_=ARRAY(BigInteger()))
        clause: ColumnElement[bool] = column == any_(array)
        return clause
    if len(ids) > SQLITE_IN_MAX:
        listed: Select[Any] = select(literal_column("value")).select_from(
            func.json_each(bindparam(None, value=json.dumps(list(ids))))
        )
        json_clause: ColumnElement[bool] = column.in_(listed.scalar_subquery())
        return json_clause
    in_clause: ColumnElement[bool] = column.in_(list(ids))
    return in_clause


async def insert_rows(
    session: AsyncSession,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    constants: dict[str, Any] | None = None,
) -> None:
    """Insert rows (all with the same keys) in one statement; ``constants`` are columns
    with the same value in every row (bound once, not repeated per row)."""
    if not rows:
        return
    constants = constants or {}
    if not _is_postgres(session):
        if not _SQLITE_JSON_ROWS:
            await session.execute(insert(table), [{**r, **constants} for r in rows])
            return
        dialect = session.get_bind().dialect
        columns = list(rows[0])
        names = ", ".join([*columns, *constants])
        values = ", ".join([*(_sqlite_value(c) for c in columns), *(f":c_{c}" for c in constants)])
        stmt, params = _with_constants(
            f"INSERT INTO {table.name} ({names}) SELECT {values} FROM json_each(:rows)",
            table,
            constants,
        )
        await session.execute(stmt, {"rows": _sqlite_rows(table, rows, dialect), **params})
        return
    dialect = session.get_bind().dialect
    columns = list(rows[0])
    record = ", ".join(f"{c} {_pg_type(table, c, dialect)}" for c in columns)
    names = ", ".join([*columns, *constants])
    values = ", ".join([*columns, *(f":c_{c}" for c in constants)])
    stmt, params = _with_constants(
        f"INSERT INTO {table.name} ({names}) SELECT {values} "
        f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v({record})",
        table,
        constants,
    )
    await session.execute(stmt, {"rows": json.dumps(rows, default=_json_default), **params})


def _with_constants(
    sql: str, table: Table, constants: dict[str, Any]
) -> tuple[TextClause, dict[str, Any]]:
    """``sql`` with each constant bound once as ``:c_<column>``, typed by its column."""
    stmt = text(sql).bindparams(*(bindparam(f"c_{c}", type_=table.c[c].type) for c in constants))
    return stmt, {f"c_{c}": v for c, v in constants.items()}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


async def update_rows(
    session: AsyncSession,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    key: str = "id",
    constants: dict[str, Any] | None = None,
) -> None:
    """Set per-row values (every row has the same keys: ``key`` plus the columns to set)
    and the same ``constants`` on all of them, in one statement on PostgreSQL."""
    if not rows:
        return
    constants = constants or {}
    columns = [c for c in rows[0] if c != key]
    dialect = session.get_bind().dialect
    if dialect.name != "postgresql" and _SQLITE_JSON_ROWS:
        sets = [f"{c} = {_sqlite_value(c)}" for c in columns]
        sets += [f"{c} = :c_{c}" for c in constants]
        stmt, params = _with_constants(
            f"UPDATE {table.name} SET {', '.join(sets)} FROM json_each(:rows) "
            f"WHERE {table.name}.{key} = {_sqlite_value(key)}",
            table,
            constants,
        )
        await session.execute(stmt, {"rows": _sqlite_rows(table, rows, dialect), **params})
        return
    if dialect.name != "postgresql":
        values: dict[str, Any] = {c: bindparam(f"b_{c}", type_=table.c[c].type) for c in columns}
        values.update(constants)
        await session.execute(
            update(table).where(table.c[key] == bindparam("b_key")).values(**values),
            [{"b_key": r[key], **{f"b_{c}": r[c] for c in columns}} for r in rows],
        )
        return
    record = ", ".join(f"{name} {_pg_type(table, name, dialect)}" for name in [key, *columns])
    sets = [f"{c} = v.{c}" for c in columns] + [f"{c} = :c_{c}" for c in constants]
    # ``id = ANY(:ids)`` lets the planner find the rows by primary key; joined against
    # the JSON alone it cannot estimate the row count and may scan the whole table.
    stmt, params = _with_constants(
        f"UPDATE {table.name} SET {', '.join(sets)} "
        f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v({record}) "
        f"WHERE {table.name}.{key} = v.{key} "
        f"AND {table.name}.{key} = ANY(CAST(:ids AS BIGINT[]))",
        table,
        constants,
    )
    await session.execute(
        stmt,
        {
            "rows": json.dumps(rows, default=_json_default),
            "ids": [r[key] for r in rows],
            **params,
        },
    )


# SQLite: rows as one JSON document read back with json_each (UPDATE … FROM needs 3.33),
# instead of an executemany whose per-row parameter processing costs more than the SQL.
_SQLITE_JSON_ROWS = sqlite3.sqlite_version_info >= (3, 33, 0)


def _sqlite_value(column: str) -> str:
    return f"json_extract(json_each.value, '$.{column}')"


def _sqlite_rows(table: Table, rows: list[dict[str, Any]], dialect: Any) -> str:
    """One JSON array of the rows. Values go through their column type's bind processing
    (datetimes become SQLite's text form), except JSON columns, embedded as they are:
    ``json_extract`` hands an object or array back as JSON text, which is what the column
    stores (so a JSON column here must hold an object, an array or None)."""
    processors = {
        c: None
        if isinstance(table.c[c].type, JSON)
        else table.c[c].type.dialect_impl(dialect).bind_processor(dialect)
        for c in rows[0]
    }
    active = {c: p for c, p in processors.items() if p is not None}
    if active:
        rows = [
            {c: (active[c](v) if c in active and v is not None else v) for c, v in r.items()}
            for r in rows
        ]
    return json.dumps(rows)


def _pg_type(table: Table, name: str, dialect: Any) -> str:
    compiled: str = table.c[name].type.compile(dialect=dialect)
    return "jsonb" if "JSON" in compiled else compiled
