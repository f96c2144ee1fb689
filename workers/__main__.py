"""``python -m workers [--metrics-port N]``: the same as ``batchd worker``."""

from __future__ import annotations

import argparse
import asyncio
import logging

from app.config import get_settings
from workers.arq_worker import run_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on this port (default: BATCH_WORKER_METRICS_PORT)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.metrics_port is not None:
        settings = settings.model_copy(update={"worker_metrics_port": args.metrics_port})
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run_forever(settings))


if __name__ == "__main__":
    main()
