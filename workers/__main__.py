"""``python -m workers``: the same as ``batchd worker``."""

from __future__ import annotations

import asyncio
import logging

from app.config import get_settings
from workers.arq_worker import run_forever

if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run_forever(get_settings()))
