"""A real ``batchd serve`` process for crash tests of the embedded default (SQLite + the
in-process runner): the API and its only worker in one process, killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from app.config import Settings
from tests.conftest import free_port
from tests.workers_proc import FORWARDED, ROOT, pause_process, resume_process


class ServeProcess:
    """``python -m app.cli serve`` (what ``batchd serve`` runs) on a free loopback port,
    with the test's settings as ``BATCH_*`` variables and no Redis."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        assert settings.redis_url is None, "batchd serve runs jobs in-process only without Redis"
        self.port = port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
        for name in FORWARDED:
            value = getattr(settings, name)
            if value is not None:
                env[f"BATCH_{name.upper()}"] = str(value)
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="batchd-serve-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    async def ready(self, limit_s: float = 30) -> None:
        """Wait until GET /health answers."""
        async with httpx.AsyncClient(base_url=self.url, timeout=1) as client:
            for _ in range(int(limit_s * 20)):
                if not self.alive:
                    break
                try:
                    if (await client.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"batchd serve did not start; log: {self.output()}")

    async def pause(self) -> None:
        await pause_process(self.proc)

    def resume(self) -> None:
        resume_process(self.proc)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


class RssWatch:
    """The largest resident set size of a process while the watch runs, from psutil
    samples every ``interval_s`` (a background task)."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = self.process.memory_info().rss
        self._task: asyncio.Task[None] | None = None

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    async def __aenter__(self) -> RssWatch:
        self.peak = self.rss()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, self.rss())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.rss())
            await asyncio.sleep(self.interval_s)
