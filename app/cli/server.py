"""Server commands: ``serve``, ``worker``, ``migrate``.

Each is a thin shell around the app's own async functions, run inside a single
``asyncio.run``. Settings always come from the environment (``BATCH_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.base import cli, fail, noop, safe_url, seed, with_db

if TYPE_CHECKING:
    from app.config import Settings

DEMO_BANNER_WIDTH = 78


def demo_banner(base_url: str, users: list[tuple[str, str, str]]) -> str:
    """What ``serve --demo`` prints once the server is up: where to go, who to be."""
    manager = next((tok for name, _role, tok in users if name == "manager"), users[0][2])
    lines = [
        "=" * DEMO_BANNER_WIDTH,
        f"batchd demo is running at {base_url}",
        f"Web console: {base_url}/  (sign in with a token below)",
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
    from app.runtime.gc_tuning import tune_for_batches

    users = await seed(settings, migrate=True) if demo else []
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
    from app.config import get_settings

    settings = get_settings()
    # uvicorn re-raises the Ctrl+C it has already handled gracefully.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, host, port, demo))


@cli.command()
def worker(
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve this worker's Prometheus metrics on this port "
            "(or set BATCH_WORKER_METRICS_PORT).",
            min=1,
            max=65535,
        ),
    ] = None,
) -> None:
    """Run an arq worker on all three priority queues, plus the crons (needs Redis)."""
    from app.config import get_settings

    settings = get_settings()
    if metrics_port is not None:
        settings = settings.model_copy(update={"worker_metrics_port": metrics_port})
    if not settings.redis_url:
        raise fail(
            "`batchd worker` needs Redis: set BATCH_REDIS_URL (e.g. redis://127.0.0.1:6379/0). "
            "Without Redis, `batchd serve` runs the jobs in-process."
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from workers.arq_worker import run_forever

    async def run() -> None:
        if settings.is_sqlite:  # embedded database: keep the schema current like serve does
            await with_db(settings, noop, migrate=True)
        await run_forever(settings)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@cli.command()
def migrate() -> None:
    """Upgrade the database at BATCH_DATABASE_URL to the latest schema (alembic head)."""
    from app.config import get_settings

    settings = get_settings()
    asyncio.run(with_db(settings, noop, migrate=True))
    typer.echo(f"Database {safe_url(settings.database_url)} is at the latest schema.")
