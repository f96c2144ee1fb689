"""The ``batchd`` command.

- ``server``: serve, worker, migrate (settings from ``BATCH_*``)
- ``admin``: create-user, rotate-token, seed-demo (straight to the database)
- ``watch``: a live progress bar for one batch; ``sse`` is its SSE client
- ``client``: ``batchd batch …`` and ``batchd token rotate`` over the HTTP API
  (``BATCHD_URL``/``BATCHD_TOKEN``)
- ``ui``: the rich tables and progress bar the client prints

Importing this package registers every command on ``cli``.
"""

from __future__ import annotations

# Registration order is the order of `batchd --help`.
# isort: off
from app.cli import server, admin, watch, client

# isort: on
from app.cli.base import cli
from app.cli.server import demo_banner
from app.cli.sse import SSEEvent, WatchError, follow_batch, iter_sse, watch_batch

__all__ = [
    "SSEEvent",
    "WatchError",
    "admin",
    "cli",
    "client",
    "demo_banner",
    "follow_batch",
    "iter_sse",
    "main",
    "server",
    "watch",
    "watch_batch",
]


def main() -> None:
    """Console-script entry point (``batchd``) and ``python -m app.cli``."""
    cli(prog_name="batchd")
