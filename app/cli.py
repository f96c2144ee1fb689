"""The ``batchd`` command (DESIGN.md §5): serve, worker, migrate, create-user, seed-demo
and watch. Settings always come from the environment (``BATCH_*``, ``get_settings``).

Why one module: every command is a thin shell around the app's own async functions,
each run inside a single ``asyncio.run`` so the engine it creates is disposed on the
loop that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches.state import FINAL
from app.config import Settings, get_settings

T = TypeVar("T")

cli = typer.Typer(
    name="batchd",
    help="batchd: async batch operations for an approval workflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEMO_BANNER_WIDTH = 78


class Role(enum.StrEnum):
    admin = "admin"
    user = "user"


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` on stderr and return the Exit to raise (so mypy sees the raise)."""
    typer.echo(f"batchd: {message}", err=True)
    return typer.Exit(code)


def _safe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


async def _with_db(
    settings: Settings,
    work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]],
    *,
    migrate: bool,
) -> T:
    """Open an engine, optionally migrate to head, run ``work``, always dispose."""
    from app.db.migrate import upgrade_to_head
    from app.db.session import create_engine, create_sessionmaker

    engine = create_engine(settings.database_url, pool_size=2)
    try:
        if migrate:
            await upgrade_to_head(engine)
        return await work(create_sessionmaker(engine))
    finally:
        await engine.dispose()


async def _seed(settings: Settings, *, migrate: bool) -> list[tuple[str, str, str]]:
    from app.demo import seed_demo

    return await _with_db(settings, seed_demo, migrate=migrate)


# --------------------------------------------------------------------------- serve


def demo_banner(base_url: str, users: list[tuple[str, str, str]]) -> str:
    """What ``serve --demo`` prints once the server is up: where to go, who to be."""
    manager = next((tok for name, _role, tok in users if name == "manager"), users[0][2])
    lines = [
        "=" * DEMO_BANNER_WIDTH,
        f"batchd demo is running at {base_url}",
        f"API docs: {base_url}/docs",
        "",
        "Demo users (tokens are re-issued on every start):",
    ]
    lines += [f"  {name:<9} {role:<6} {token}" for name, role, token in users]
    lines += [
        "",
        "Try the manager's pending tasks:",
        f'  curl -H "Authorization: Bearer {manager}" "{base_url}/api/v1/tasks?status=pending"',
        "=" * DEMO_BANNER_WIDTH,
    ]
    return "\n".join(lines)


async def _serve(settings: Settings, host: str, port: int, demo: bool) -> None:
    import uvicorn

    from app.main import create_app
    from app.queue.gc_tuning import tune_for_batches

    users = await _seed(settings, migrate=True) if demo else []
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=host, port=port, log_level="info")
    )

    async def started() -> None:
        # The banner is printed after start-up so it is not lost above uvicorn's own
        # start-up lines, and never printed when the port is taken.
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        tune_for_batches()
        if demo:
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            shown = f"[{shown}]" if ":" in shown else shown  # IPv6 literal in a URL
            print(demo_banner(f"http://{shown}:{port}", users), flush=True)

    banner = asyncio.create_task(started())
    try:
        await server.serve()
    finally:
        banner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await banner


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    demo: Annotated[
        bool, typer.Option("--demo", help="Migrate, seed demo data and print demo tokens first.")
    ] = False,
) -> None:
    """Run the API (one process; runs jobs in-process when BATCH_REDIS_URL is unset)."""
    settings = get_settings()
    # uvicorn re-raises the Ctrl+C it has already handled gracefully.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, host, port, demo))


# --------------------------------------------------------------------------- worker


@cli.command()
def worker() -> None:
    """Run an arq worker on all three priority queues, plus the crons (needs Redis)."""
    settings = get_settings()
    if not settings.redis_url:
        raise _fail(
            "`batchd worker` needs Redis: set BATCH_REDIS_URL (e.g. redis://127.0.0.1:6379/0). "
            "Without Redis, `batchd serve` runs the jobs in-process."
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from workers.arq_worker import run_forever

    async def run() -> None:
        if settings.is_sqlite:  # embedded database: keep the schema current like serve does
            await _with_db(settings, _noop, migrate=True)
        await run_forever(settings)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


async def _noop(_sm: async_sessionmaker[AsyncSession]) -> None:
    return None


# --------------------------------------------------------------------------- migrate


@cli.command()
def migrate() -> None:
    """Upgrade the database at BATCH_DATABASE_URL to the latest schema (alembic head)."""
    settings = get_settings()
    asyncio.run(_with_db(settings, _noop, migrate=True))
    typer.echo(f"Database {_safe_url(settings.database_url)} is at the latest schema.")


# --------------------------------------------------------------------------- users


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
        raise _fail("NAME must not be empty.")
    settings = get_settings()

    async def work(sm: async_sessionmaker[AsyncSession]) -> str:
        async with sm() as session:
            _user, token = await create_user(
                session, name.strip(), role=role.value, department_id=department
            )
            await session.commit()
        return token

    token = asyncio.run(_with_db(settings, work, migrate=settings.is_sqlite))
    typer.echo(token)


@cli.command("seed-demo")
def seed_demo_cmd() -> None:
    """Create the demo users, definitions, instances and tasks (idempotent); print tokens."""
    settings = get_settings()
    users = asyncio.run(_seed(settings, migrate=settings.is_sqlite))
    for name, role, token in users:
        typer.echo(f"{name:<9} {role:<6} {token}")


# --------------------------------------------------------------------------- watch


@dataclass
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass
class _SSEBuffer:
    event: str | None = None
    data: list[str] = field(default_factory=list)
    id: str | None = None


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """Server-sent events from a line stream: ``event:``/``data:``/``id:`` lines
    accumulate until a blank line; ``:`` lines are comments (pings)."""
    buf = _SSEBuffer()
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if buf.data or buf.event:
                yield SSEEvent(event=buf.event or "message", data="\n".join(buf.data), id=buf.id)
            buf = _SSEBuffer()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            buf.event = value
        elif name == "data":
            buf.data.append(value)
        elif name == "id":
            buf.id = value


class WatchError(Exception):
    """A problem that reconnecting cannot fix (bad token, unknown batch, …)."""


def _describe(batch: dict[str, Any]) -> str:
    return (
        f"batch {batch.get('id')} {escape(str(batch.get('type', '')))} "
        f"[bold]{escape(str(batch.get('status', '?')))}[/] "
        f"[green]✓ {batch.get('success', 0)}[/] [red]✗ {batch.get('failed', 0)}[/] "
        f"[yellow]↷ {batch.get('ignored', 0)}[/]"
    )


async def watch_batch(
    batch_id: int,
    url: str,
    token: str,
    *,
    console: Console | None = None,
    err_console: Console | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    max_failures: int = 20,
    backoff_cap: float = 5.0,
) -> int:
    """Follow a batch's SSE stream until its ``end`` event; return the exit code.

    0 = completed, 1 = aborted/cancelled (or the stream could not be resumed), 2 = a
    request the server refuses. A dropped connection is resumed with ``Last-Event-ID``;
    before each reconnect a plain GET of the batch tells a refusal (404/401/403) or an
    already finished batch apart from a network blip.
    """
    console = console or Console()
    err_console = err_console or Console(stderr=True)
    headers = {"Authorization": f"Bearer {token}"}
    last_id: str | None = None
    failures = 0
    timeout = httpx.Timeout(10.0, read=60.0)  # the server pings every 15 s
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), timeout=timeout, transport=transport
    ) as client:
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task(_describe({"id": batch_id}), total=None)

            def show(b: dict[str, Any]) -> None:
                total = int(b.get("total") or 0)
                done = sum(
                    int(b.get(k) or 0) for k in ("success", "failed", "ignored", "cancelled")
                )
                final = b.get("status") in FINAL
                progress.update(
                    bar,
                    description=_describe(b),
                    total=total or 1,
                    completed=done if total else int(final),
                )

            def finish(b: dict[str, Any]) -> int:
                show(b)
                progress.stop()
                return _finish(console, b)

            while True:
                try:
                    stream_headers = {**headers, "Accept": "text/event-stream"}
                    if last_id is not None:
                        stream_headers["Last-Event-ID"] = last_id
                    async with client.stream(
                        "GET", f"/api/v1/batches/{batch_id}/events", headers=stream_headers
                    ) as response:
                        await _raise_for_status(response)
                        async for ev in iter_sse(response.aiter_lines()):
                            failures = 0  # the stream works: a later drop starts afresh
                            if ev.id is not None:
                                last_id = ev.id
                            if ev.event not in ("progress", "end") or not ev.data:
                                continue
                            batch = json.loads(ev.data)
                            if ev.event == "end":
                                return finish(batch)
                            show(batch)
                    reason = "the server closed the stream before the end event"
                    current = await _probe(client, batch_id, headers)
                    if current is not None and current.get("status") in FINAL:
                        return finish(current)
                except WatchError as exc:
                    progress.stop()
                    err_console.print(f"[red]batchd watch: {escape(str(exc))}[/]")
                    return 2
                except (httpx.TransportError, json.JSONDecodeError) as exc:
                    reason = str(exc) or exc.__class__.__name__
                failures += 1
                if failures > max_failures:
                    progress.stop()
                    err_console.print(
                        f"[red]batchd watch: giving up after {max_failures} retries: "
                        f"{escape(reason)}[/]"
                    )
                    return 1
                delay = min(backoff_cap, 0.25 * 2**failures)
                progress.console.log(
                    f"connection lost ({escape(reason)}); reconnecting in {delay:.1f}s"
                )
                await asyncio.sleep(delay)


async def _raise_for_status(response: httpx.Response) -> None:
    """4xx → WatchError (reconnecting will not help); 5xx → retry like a dropped line."""
    if response.status_code < 400:
        return
    await response.aread()
    if response.status_code < 500:
        raise WatchError(_error_text(response))
    raise httpx.TransportError(_error_text(response))


async def _probe(
    client: httpx.AsyncClient, batch_id: int, headers: dict[str, str]
) -> dict[str, Any] | None:
    """The batch by plain GET after a stream ended early (None if that fails too).

    Tried twice: a stream that ended abruptly can leave a dead keep-alive connection in
    the pool, which fails the first request on it.
    """
    for attempt in range(2):
        try:
            response = await client.get(f"/api/v1/batches/{batch_id}", headers=headers)
            break
        except httpx.TransportError:
            if attempt:
                return None
    await _raise_for_status(response)
    body = response.json() if response.status_code == 200 else None
    return body if isinstance(body, dict) else None


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail") if isinstance(body, dict) else None
    except ValueError:
        detail = None
    return (
        f"HTTP {response.status_code}: {detail or response.text.strip() or response.reason_phrase}"
    )


def _finish(console: Console, batch: dict[str, Any]) -> int:
    status = batch.get("status")
    console.print(
        f"Batch {batch.get('id')} {status}: {batch.get('success', 0)} success, "
        f"{batch.get('failed', 0)} failed, {batch.get('ignored', 0)} ignored, "
        f"{batch.get('cancelled', 0)} cancelled (of {batch.get('total', 0)})."
    )
    return 0 if status == "completed" else 1


@cli.command()
def watch(
    batch_id: Annotated[int, typer.Argument(help="The batch to follow.", metavar="BATCH_ID")],
    url: Annotated[
        str, typer.Option(help="Base URL of the API.", envvar="BATCH_API_URL")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None,
        typer.Option(help="Bearer token (or set BATCH_TOKEN).", envvar="BATCH_TOKEN"),
    ] = None,
) -> None:
    """Show a live progress bar for a batch; exit 0 if it completes, 1 if it does not."""
    if not token:
        raise _fail("pass --token or set BATCH_TOKEN.")
    try:
        code = asyncio.run(watch_batch(batch_id, url, token))
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point (``batchd``) and ``python -m app.cli``."""
    cli(prog_name="batchd")


if __name__ == "__main__":
    main()
