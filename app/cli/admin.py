"""Admin commands that talk to the database directly: ``create-user``,
``rotate-token``, ``seed-demo``.

Why not over HTTP: they bootstrap (or recover) the very tokens the API needs.
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.base import cli, fail, seed, with_db

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class Role(enum.StrEnum):
    admin = "admin"
    user = "user"


@cli.command("create-user")
def create_user_cmd(
    name: Annotated[str, typer.Argument(help="Display name of the user.", metavar="NAME")],
    role: Annotated[Role, typer.Option(help="admin or user.", case_sensitive=False)] = Role.user,
    department: Annotated[
        int | None, typer.Option("--department", help="Department id.", metavar="N")
    ] = None,
) -> None:
    """Create a user and print only their bearer token (shown once, stored hashed)."""
    from app.workflow.users import create_user

    if not name.strip():
        raise fail("NAME must not be empty.")
    from app.config import get_settings

    settings = get_settings()

    async def work(sm: async_sessionmaker[AsyncSession]) -> str:
        async with sm() as session:
            _user, token = await create_user(
                session, name.strip(), role=role.value, department_id=department
            )
            await session.commit()
        return token

    token = asyncio.run(with_db(settings, work, migrate=settings.is_sqlite))
    typer.echo(token)


@cli.command("rotate-token")
def rotate_token_cmd(
    user_id: Annotated[
        int | None,
        typer.Option(
            "--user", help="The user's id (default: the only admin).", metavar="ID", min=1
        ),
    ] = None,
) -> None:
    """Give a user a new bearer token and print only it (shown once). Their old token and
    browser sessions stop working at once. Without --user: the only admin's (a lost
    admin token); with several admins, --user is required. A user who signs in through
    single sign-on gets none (as over the API)."""
    from sqlalchemy import select

    from app.config import get_settings
    from app.errors import Forbidden
    from app.models import User
    from app.workflow.users import refuse_local_token, rotate_token

    settings = get_settings()

    async def work(sm: async_sessionmaker[AsyncSession]) -> str:
        async with sm() as session:
            if user_id is not None:
                user = await session.get(User, user_id)
                if user is None:
                    raise fail(f"there is no user {user_id}.")
            else:
                admins = list(
                    await session.scalars(
                        select(User).where(User.role == "admin").order_by(User.id).limit(11)
                    )
                )
                if not admins:
                    raise fail("there is no admin yet: batchd create-user NAME --role admin.")
                if len(admins) > 1:
                    listed = ", ".join(f"{a.id} {a.name}" for a in admins[:10])
                    raise fail(f"there are several admins ({listed}): pass --user ID.")
                user = admins[0]
            try:
                refuse_local_token(user, own=False)
            except Forbidden as exc:
                raise fail(
                    f"{exc.detail} A break-glass admin of its own: batchd create-user NAME "
                    "--role admin."
                ) from None
            token = await rotate_token(session, user, actor_id=None)
            await session.commit()
        return token

    typer.echo(asyncio.run(with_db(settings, work, migrate=settings.is_sqlite)))


@cli.command("seed-demo")
def seed_demo_cmd() -> None:
    """Create the demo users, definitions, instances and tasks (idempotent); print tokens."""
    from app.config import get_settings

    settings = get_settings()
    users = asyncio.run(seed(settings, migrate=settings.is_sqlite))
    for name, role, token in users:
        typer.echo(f"{name:<9} {role:<6} {token}")
