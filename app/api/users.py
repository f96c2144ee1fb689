"""/api/v1/users: the caller, creating users (admin) and monitor grants (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AdminUser, CurrentUser, SessionDep
from app.engine.users import create_user, grant_monitor, granted_keys
from app.schemas.common import IdPath, error_responses
from app.schemas.engine import GrantCreate, GrantOut, Me, UserCreate, UserCreated

router = APIRouter(prefix="/api/v1", tags=["users"])


@router.get(
    "/users/me",
    operation_id="get_me",
    summary="The caller",
    response_model=Me,
    responses=error_responses(401),
)
async def me(user: CurrentUser, session: SessionDep) -> Me:
    keys = await granted_keys(session, user.id)
    return Me(
        id=user.id,
        name=user.name,
        role=user.role,
        department_id=user.department_id,
        monitor_keys=sorted(keys),
    )


@router.post(
    "/users",
    operation_id="create_user",
    summary="Create a user (admin)",
    status_code=201,
    response_model=UserCreated,
    responses=error_responses(401, 403, 422),
)
async def create(body: UserCreate, _admin: AdminUser, session: SessionDep) -> UserCreated:
    """Create a user; the response carries its bearer token, shown only this once."""
    user, token = await create_user(
        session, body.name, role=body.role, department_id=body.department_id
    )
    return UserCreated(
        id=user.id, name=user.name, role=user.role, department_id=user.department_id, token=token
    )


@router.post(
    "/users/{user_id}/grants",
    operation_id="grant_monitor",
    summary="Grant a monitor role on a definition key (admin)",
    status_code=201,
    response_model=GrantOut,
    responses=error_responses(401, 403, 404, 422),
)
async def grant(
    user_id: IdPath, body: GrantCreate, _admin: AdminUser, session: SessionDep
) -> GrantOut:
    """Let a user run instance operations on a definition key (idempotent)."""
    row = await grant_monitor(session, user_id, body.definition_key)
    return GrantOut.model_validate(row)
