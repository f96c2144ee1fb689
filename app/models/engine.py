"""The local approval engine's tables: what batches act on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, BigId, JsonType, UTCDateTime, utcnow
from app.models.ids import NO_ID_REUSE


class User(Base):
    """A caller. ``oidc_issuer``/``oidc_subject`` name the single-sign-on identity of a
    user the provider's tokens created (both null for users made with a ``bd_`` token);
    such a user's ``token_hash`` is of a secret nobody was given, and no ``bd_`` token is
    ever made for it. ``oidc_claims_iat`` is the ``iat`` of the newest token whose claims
    were applied: an older token's claims never overwrite newer ones."""

    __tablename__ = "users"
    __table_args__ = (
        Index("uq_users_oidc_identity", "oidc_issuer", "oidc_subject", unique=True),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    department_id: Mapped[int | None] = mapped_column(index=True)
    role: Mapped[str] = mapped_column(String(16), default="user")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    oidc_issuer: Mapped[str | None] = mapped_column(String(500))
    oidc_subject: Mapped[str | None] = mapped_column(String(255))
    oidc_claims_iat: Mapped[int | None] = mapped_column()

    @hybrid_property
    def is_admin(self) -> bool:
        """On a user, whether it is an admin; on the class, the same as SQL."""
        return self.role == "admin"


class BrowserSession(Base):
    """A signed-in browser. The ``batchd_session`` cookie holds a random secret and this
    row only its SHA-256, so signing out or rotating the user's token (which deletes the
    rows) ends the session on the server, and a copied cookie is refused from then on.
    The CSRF token is tied to the session the same way. Expiry (idle and absolute) is
    computed from ``last_seen_at``/``created_at`` and the settings, so a changed
    ``BATCH_SESSION_*`` applies to sessions already open; ``expires_at`` (the ID token's
    ``exp`` of a single-sign-on session, else null) ends it earlier."""

    __tablename__ = "sessions"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MonitorGrant(Base):
    """Who may run instance operations on a definition (admins may on all)."""

    __tablename__ = "monitor_grants"
    __table_args__ = (UniqueConstraint("user_id", "definition_key"), NO_ID_REUSE)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    definition_key: Mapped[str] = mapped_column(String(100), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProcessDefinition(Base):
    __tablename__ = "process_definitions"
    __table_args__ = (UniqueConstraint("key", "version"), NO_ID_REUSE)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(default=1)
    name: Mapped[str] = mapped_column(String(200))
    form: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    nodes: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProcessInstance(Base):
    __tablename__ = "process_instances"
    __table_args__ = (
        Index("ix_process_instances_definition_status", "definition_key", "status", "id"),
        Index("ix_process_instances_definition_id", "definition_id"),
        Index("ix_process_instances_initiator_id", "initiator_id"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    definition_id: Mapped[int] = mapped_column(ForeignKey("process_definitions.id"))
    # Denormalised from the definition so filters on a definition key need no join.
    definition_key: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(String(500))
    business_key: Mapped[str | None] = mapped_column(String(200))
    department_id: Mapped[int | None]
    initiator_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), default="active")
    current_node_id: Mapped[str | None] = mapped_column(String(100))
    form_data: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    variables: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_assignee_status_node", "assignee_id", "status", "node_id", "id"),
        # A user's task list, newest first (app.workflow.queries.task_list).
        Index("ix_tasks_assignee_id", "assignee_id", "id"),
        Index("ix_tasks_status_node", "status", "node_id"),
        Index("ix_tasks_instance_id", "instance_id"),
        # Partial: almost every task is unlocked, and an index of NULLs would cost an
        # entry on every task insert and every approval that clears a lock.
        Index(
            "ix_tasks_locked_by_batch_id",
            "locked_by_batch_id",
            postgresql_where=text("locked_by_batch_id IS NOT NULL"),
            sqlite_where=text("locked_by_batch_id IS NOT NULL"),
        ),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("process_instances.id", ondelete="CASCADE"))
    node_id: Mapped[str] = mapped_column(String(100))
    assignee_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    decision: Mapped[str | None] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    locked_by_batch_id: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ProcessLog(Base):
    """Instance-level event log: who did what to which instance, from which batch."""

    __tablename__ = "process_logs"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("process_instances.id", ondelete="CASCADE"), index=True
    )
    task_id: Mapped[int | None]
    actor_id: Mapped[int | None]
    batch_id: Mapped[int | None] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(String(50))
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ActionLog(Base):
    """User operation log: batch created / suspended / deleted / retried, …"""

    __tablename__ = "action_logs"
    __table_args__ = (Index("ix_action_logs_user_created", "user_id", "created_at"), NO_ID_REUSE)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int | None]
    action: Mapped[str] = mapped_column(String(50))
    batch_id: Mapped[int | None] = mapped_column(index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InstanceArchive(Base):
    """A full snapshot (instance + tasks + logs) taken before an instance is deleted."""

    __tablename__ = "instance_archives"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    instance_id: Mapped[int] = mapped_column(index=True)
    definition_key: Mapped[str] = mapped_column(String(100))
    snapshot: Mapped[dict[str, Any]] = mapped_column(JsonType)
    deleted_by: Mapped[int | None]
    batch_id: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
