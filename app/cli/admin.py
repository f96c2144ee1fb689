"""Admin commands that talk to the database directly: ``create-user``, ``seed-demo``.

Why not over HTTP: they bootstrap the very tokens the API needs.
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
    from app.engine.users import create_user

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


@cli.command("seed-demo")
def seed_demo_cmd() -> None:
    """Create the demo users, definitions, instances and tasks (idempotent); print tokens."""
    from app.config import get_settings

    settings = get_settings()
    users = asyncio.run(seed(settings, migrate=settings.is_sqlite))
    for name, role, token in users:
        typer.echo(f"{name:<9} {role:<6} {token}")
