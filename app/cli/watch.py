"""``batchd watch BATCH_ID``: a live progress bar from the SSE stream.

Exit codes as for every client command: 0 completed, 1 aborted or cancelled, 2 usage,
3 a server or network error (refused, or the stream could not be resumed).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from app.cli.base import cli, fail
from app.cli.sse import watch_batch

DEFAULT_URL = "http://127.0.0.1:8000"


@cli.command()
def watch(
    batch_id: Annotated[int, typer.Argument(help="The batch to follow.", metavar="BATCH_ID")],
    url: Annotated[
        str,
        typer.Option(
            help="Base URL of the API (or set BATCHD_URL).", envvar=["BATCHD_URL", "BATCH_API_URL"]
        ),
    ] = DEFAULT_URL,
    token: Annotated[
        str | None,
        typer.Option(
            help="Bearer token (or set BATCHD_TOKEN).", envvar=["BATCHD_TOKEN", "BATCH_TOKEN"]
        ),
    ] = None,
) -> None:
    """Show a live progress bar for a batch; exit 0 if it completes, 1 if it does not,
    3 on a server or network error."""
    if not token:
        raise fail("pass --token or set BATCHD_TOKEN (or BATCH_TOKEN).")
    try:
        code = asyncio.run(watch_batch(batch_id, url, token))
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)
