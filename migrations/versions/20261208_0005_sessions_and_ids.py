"""browser sessions stored server-side (``sessions``), and ids never reused on SQLite
(every table with a generated id becomes AUTOINCREMENT)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08

SQLite can only add AUTOINCREMENT by rebuilding a table: batch mode copies each table
(rows, indexes, foreign keys, constraints) into a new one. Copying the rows sets the
table's ``sqlite_sequence`` entry to its largest id; ids that only survive as references
(the batch id in a purged batch's action log, the instance id of an archive) raise it
further, so a new batch or instance never takes the id of one deleted before the
upgrade. The rebuild must run with foreign keys off (dropping a parent table with them
on deletes its children through ON DELETE CASCADE): ``app.db.migrate.upgrade_to_head``
(``batchd migrate``, start-up) does that, and the upgrade refuses to run otherwise.
PostgreSQL ids come from sequences, which never go back: only ``sessions`` is new there.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

import app.db.base

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Every table of revision 0004 with a generated id (batch_seed_claims has a composite key).
ID_TABLES = (
    "users",
    "monitor_grants",
    "process_definitions",
    "process_instances",
    "tasks",
    "process_logs",
    "action_logs",
    "instance_archives",
    "batches",
    "batch_details",
)

# Columns that keep the id of a row after the row itself may have been deleted.
ID_REFERENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "batches": (
        ("action_logs", "batch_id"),
        ("process_logs", "batch_id"),
        ("instance_archives", "batch_id"),
        ("batch_details", "batch_id"),
        ("batch_seed_claims", "batch_id"),
        ("tasks", "locked_by_batch_id"),
    ),
    "process_instances": (("instance_archives", "instance_id"),),
    "users": (
        ("action_logs", "user_id"),
        ("process_logs", "actor_id"),
        ("instance_archives", "deleted_by"),
    ),
}


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("user_id", BIG_ID, nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", app.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", app.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_sessions_secret_hash")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_sessions_user_id"), "sessions", ["user_id"], unique=False)

    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    _require_foreign_keys_off(bind)
    for table in ID_TABLES:
        _rebuild(table, autoincrement=True)
    for table, references in ID_REFERENCES.items():
        _raise_sequence(bind, table, references)
    _check_foreign_keys(bind)


def downgrade() -> None:
    op.drop_index(op.f("ix_sessions_user_id"), table_name="sessions")
    op.drop_table("sessions")
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    _require_foreign_keys_off(bind)
    for table in ID_TABLES:
        _rebuild(table, autoincrement=False)
    _check_foreign_keys(bind)


def _rebuild(table: str, *, autoincrement: bool) -> None:
    """Copy ``table`` into a new one with or without AUTOINCREMENT (same columns,
    indexes, foreign keys and constraints, as reflected), keeping every row."""
    with op.batch_alter_table(
        table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass


def _require_foreign_keys_off(bind: Connection) -> None:
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "This upgrade rebuilds SQLite tables and must run with foreign keys off "
            "(dropping a parent table would delete its children): run `batchd migrate`."
        )


def _raise_sequence(bind: Connection, table: str, references: tuple[tuple[str, str], ...]) -> None:
    """Make the next id of ``table`` larger than any id its references still hold."""
    floor = 0
    for ref_table, column in references:
        value = bind.exec_driver_sql(f"SELECT max({column}) FROM {ref_table}").scalar()
        floor = max(floor, int(value or 0))
    current = bind.exec_driver_sql(
        "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)
    ).scalar()
    if current is None and floor > 0:
        bind.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, floor)
        )
    elif current is not None and floor > int(current):
        bind.exec_driver_sql("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (floor, table))


def _check_foreign_keys(bind: Connection) -> None:
    """Foreign keys were off while the tables were rebuilt: prove nothing dangles."""
    problems = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if problems:
        raise RuntimeError(f"Foreign key check failed after the rebuild: {problems[:10]}")
