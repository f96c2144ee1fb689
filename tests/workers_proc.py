"""Real ``batchd worker`` processes for crash tests (PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
FORWARDED = (
    "database_url",
    "redis_url",
    "stuck_after",
    "start_timeout",
    "recover_interval",
    "slice_seconds",
    "poll_time",
    "auto_retry_window",
    "auto_retry_delay",
    "chunk_size",
)


class WorkerProcess:
    """``python -m workers`` (what ``batchd worker`` runs) with the test's settings."""

    def __init__(self, settings: Settings) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
        for name in FORWARDED:
            value = getattr(settings, name)
            if value is not None:
                env[f"BATCH_{name.upper()}"] = str(value)
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="batchd-worker-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, limit_s: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        for _ in range(int(limit_s * 20)):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"worker did not stop on SIGTERM; log: {self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
