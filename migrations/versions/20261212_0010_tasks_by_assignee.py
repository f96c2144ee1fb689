"""the approver's task list: ``ix_tasks_assignee_id`` on tasks (assignee_id, id)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-12

A user's task list, newest first, reads that user's rows through this index and no
others (``app.db.pages.OrderedEquals``). Without it PostgreSQL walked the primary key
backwards past every newer task of other people — past every task a running approve
batch had just created for the next step — whenever its statistics said the user owned
most tasks: 35 ms a page after 300 000 approvals, growing with the batch.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # CONCURRENTLY on PostgreSQL: a deployment with millions of tasks keeps approving
    # while the index is built (outside the migration's transaction, as it must be).
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_tasks_assignee_id", "tasks", ["assignee_id", "id"], postgresql_concurrently=True
        )


def downgrade() -> None:
    op.drop_index("ix_tasks_assignee_id", table_name="tasks")
