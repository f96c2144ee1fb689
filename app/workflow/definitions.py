"""Process definitions: validation, versioning (posting a key again makes version+1),
lookup of the latest version, and the per-node field view.

Pydantic (``app.schemas.engine.DefinitionCreate``) checks the shape of a definition;
this module checks what the shape cannot express — unique names, references from nodes
to form fields, existing assignees — and reports every problem at once with its
location, so an admin fixes a definition in one round trip.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.db.pages import total_of
from app.errors import Conflict, NotFound, ValidationFailed
from app.models import ProcessDefinition, User
from app.schemas.engine import DefinitionCreate
from app.workflow.forms import NodeRules, field_mode, find_node

CHOICE_TYPES = ("select", "multiselect")
VERSION_ATTEMPTS = 5


def definition_errors(payload: DefinitionCreate) -> list[dict[str, Any]]:
    """Cross-field problems of a definition (no database access), as ``fields`` entries."""
    errors: list[dict[str, Any]] = []

    def err(loc: list[str | int], msg: str) -> None:
        errors.append({"loc": loc, "msg": msg})

    names: set[str] = set()
    for i, f in enumerate(payload.form):
        if f.name in names:
            err(["form", i, "name"], f"duplicate field name '{f.name}'")
        names.add(f.name)
        if f.type in CHOICE_TYPES and not f.options:
            err(["form", i, "options"], f"a {f.type} field needs at least one option")
        if f.options and len(set(f.options)) != len(f.options):
            err(["form", i, "options"], "options must be unique")

    node_ids: set[str] = set()
    for i, node in enumerate(payload.nodes):
        if node.id in node_ids:
            err(["nodes", i, "id"], f"duplicate node id '{node.id}'")
        node_ids.add(node.id)
        for name in node.fields:
            if name not in names:
                err(["nodes", i, "fields", name], f"'{name}' is not a field of the form")
        for attr in ("required", "searchable"):
            listed: list[str] = getattr(node, attr)
            for j, name in enumerate(listed):
                if name not in names:
                    err(["nodes", i, attr, j], f"'{name}' is not a field of the form")
    return errors


async def create_definition(session: AsyncSession, payload: DefinitionCreate) -> ProcessDefinition:
    """Validate and store a definition as the next version of its key."""
    errors = definition_errors(payload)
    assignees = {n.assignee_id for n in payload.nodes}
    existing = set(await session.scalars(select(User.id).where(User.id.in_(assignees))))
    for i, node in enumerate(payload.nodes):
        if node.assignee_id not in existing:
            errors.append(
                {
                    "loc": ["nodes", i, "assignee_id"],
                    "msg": f"user {node.assignee_id} does not exist",
                }
            )
    if errors:
        raise ValidationFailed(
            f"The definition has {len(errors)} problem(s); see fields.", fields=errors
        )

    # Two admins posting the same key at once race for the same version. The unique
    # (key, version) constraint decides; the loser re-reads the latest version (READ
    # COMMITTED sees the winner's row) and tries the next number, so both succeed.
    for _attempt in range(VERSION_ATTEMPTS):
        current = await session.scalar(
            select(func.max(ProcessDefinition.version)).where(ProcessDefinition.key == payload.key)
        )
        definition = ProcessDefinition(
            key=payload.key,
            version=(current or 0) + 1,
            name=payload.name,
            form=[f.model_dump(exclude_none=True) for f in payload.form],
            nodes=[n.model_dump() for n in payload.nodes],
        )
        try:
            async with session.begin_nested():
                session.add(definition)
                await session.flush()
        except IntegrityError:
            continue
        return definition
    raise Conflict(f"Definition '{payload.key}' is being changed concurrently; try again.")


async def get_definition(session: AsyncSession, definition_id: int) -> ProcessDefinition:
    definition = await session.get(ProcessDefinition, definition_id)
    if definition is None:
        raise NotFound(f"Definition {definition_id} does not exist.")
    return definition


async def latest_definition(session: AsyncSession, key: str) -> ProcessDefinition | None:
    """The newest version of ``key`` (new instances always start on it)."""
    return await session.scalar(
        select(ProcessDefinition)
        .where(ProcessDefinition.key == key)
        .order_by(ProcessDefinition.version.desc())
        .limit(1)
    )


async def list_definitions(
    session: AsyncSession,
    *,
    key: str | None = None,
    all_versions: bool = False,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[ProcessDefinition], int]:
    """Definitions ordered by key, newest version first.

    By default only the latest version of each key is listed (what a user starts);
    ``all_versions`` lists every version (what migration needs to see).
    """
    conditions: list[ColumnElement[bool]] = []
    if key is not None:
        conditions.append(ProcessDefinition.key == key)
    if not all_versions:
        newer = aliased(ProcessDefinition)
        conditions.append(
            ~select(newer.id)
            .where(newer.key == ProcessDefinition.key, newer.version > ProcessDefinition.version)
            .exists()
        )
    stmt = select(ProcessDefinition).where(*conditions)
    rows = await session.scalars(
        stmt.order_by(ProcessDefinition.key, ProcessDefinition.version.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(rows), await total_of(session, stmt)


async def node_view(
    session: AsyncSession, key: str, node_id: str, *, version: int | None = None
) -> dict[str, Any]:
    """Every form field as one node sees it: visible, searchable, writable, required.

    ``required`` is the node's ``required`` plus form-level required
    fields that are ``write`` at the node. Uses the latest version unless ``version``.
    """
    if version is None:
        definition = await latest_definition(session, key)
    else:
        definition = await session.scalar(
            select(ProcessDefinition).where(
                ProcessDefinition.key == key, ProcessDefinition.version == version
            )
        )
    if definition is None:
        raise NotFound(
            f"Definition '{key}'"
            + (f" version {version}" if version is not None else "")
            + " does not exist."
        )
    found = find_node(definition.nodes, node_id)
    if found is None:
        raise NotFound(f"Definition '{key}' has no node '{node_id}'.")
    _, node = found
    rules = NodeRules.build(definition.form, node)
    searchable = set(node.get("searchable") or [])
    fields = []
    for spec in definition.form:
        name = spec["name"]
        mode = field_mode(node, name)
        fields.append(
            {
                "name": name,
                "label": spec.get("label") or name,
                "type": spec.get("type", "text"),
                "options": [str(o) for o in spec.get("options") or []],
                "visible": mode != "hidden",
                "searchable": name in searchable,
                "writable": name in rules.writable,
                "required": name in rules.required,
            }
        )
    return {
        "definition_key": definition.key,
        "version": definition.version,
        "node_id": node["id"],
        "node_name": node.get("name") or node["id"],
        "fields": fields,
    }
