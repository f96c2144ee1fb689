"""The root ``batchd`` Typer app and what several command modules share.

Why a module of its own: every command module registers on this one ``cli`` object, and
``app.cli`` imports them all, so the root must live where none of them imports another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer

if TYPE_CHECKING:  # the server side loads only for the commands that use it (a fast CLI)
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from app.config import Settings

T = TypeVar("T")

cli = typer.Typer(
    name="batchd",
    help="batchd: async batch operations for an approval workflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` on stderr and return the Exit to raise (so mypy sees the raise)."""
    typer.echo(f"batchd: {message}", err=True)
    return typer.Exit(code)


def safe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


async def with_db(
    settings: Settings,
    work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]],
    *,
    migrate: bool,
) -> T:
    """Open an engine, optionally migrate to head, run ``work``, always dispose (inside
    the one ``asyncio.run`` of the command, so the engine dies on the loop that made it)."""
    from app.db.migrate import upgrade_to_head
    from app.db.session import create_engine, create_sessionmaker

    engine = create_engine(settings.database_url, pool_size=2)
    try:
        if migrate:
            await upgrade_to_head(engine)
        return await work(create_sessionmaker(engine))
    finally:
        await engine.dispose()


async def noop(_sm: async_sessionmaker[AsyncSession]) -> None:
    """A ``with_db`` job that does nothing: migrating is all the caller wants."""
    return None


async def seed(settings: Settings, *, migrate: bool) -> list[tuple[str, str, str]]:
    """The demo data (idempotent); the (name, role, token) of each demo user."""
    from app.demo import seed_demo

    return await with_db(settings, seed_demo, migrate=migrate)
