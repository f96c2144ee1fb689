"""/api/v1/users: the caller, creating users (admin), monitor grants (admin) and
rotating bearer tokens (one's own, or anyone's as an admin — never a single-sign-on
user's: a permanent ``bd_`` token would outlive what the provider says about them)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AdminUser, CurrentUser, SessionDep
from app.schemas.common import IdPath, error_responses
from app.schemas.engine import GrantCreate, GrantOut, Me, NewToken, UserCreate, UserCreated
from app.workflow.users import (
    create_user,
    get_user,
    grant_monitor,
    granted_keys,
    refuse_local_token,
    rotate_token,
)

router = APIRouter(prefix="/api/v1", tags=["users"])


@router.get(
    "/users/me",
    operation_id="get_me",
    summary="The caller",
    response_model=Me,
    responses=error_responses(401),
)
async def me(user: CurrentUser, session: SessionDep) -> Me:
    """Who the token (or session) belongs to: name, role, department, and the process
    definitions the caller may run instance operations on."""
    keys = await granted_keys(session, user.id)
    return Me(
        id=user.id,
        name=user.name,
        role=user.role,
        department_id=user.department_id,
        monitor_keys=sorted(keys),
    )


@router.post(
    "/users/me/token",
    operation_id="rotate_my_token",
    summary="Rotate the caller's bearer token",
    status_code=201,
    response_model=NewToken,
    responses=error_responses(401, 403),
)
async def rotate_mine(user: CurrentUser, session: SessionDep) -> NewToken:
    """A new token for the caller, shown only this once. The old token and every
    browser session of the caller (this one too) are refused from now on. A
    single-sign-on user gets a 403: they sign in through the provider."""
    refuse_local_token(user, own=True)
    return NewToken(token=await rotate_token(session, user, actor_id=user.id))


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
    "/users/{user_id}/token",
    operation_id="rotate_user_token",
    summary="Rotate a user's bearer token (admin)",
    status_code=201,
    response_model=NewToken,
    responses=error_responses(401, 403, 404, 422),
)
async def rotate_theirs(user_id: IdPath, admin: AdminUser, session: SessionDep) -> NewToken:
    """A new token for any user (a leaked token, someone who left), shown only this
    once; their old token and browser sessions are refused from now on. Not for a
    single-sign-on user (403), the admin themselves included: the provider decides
    who they are."""
    user = await get_user(session, user_id)
    refuse_local_token(user, own=user.id == admin.id)
    return NewToken(token=await rotate_token(session, user, actor_id=admin.id))


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
