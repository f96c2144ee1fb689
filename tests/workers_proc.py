"""Real ``batchd worker`` processes for crash tests (PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
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
    "jobs_per_seed",
    "worker_metrics_port",
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
        return self.full_output()[-4000:]

    def full_output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    async def ready(self, limit_s: float = 30) -> None:
        """Wait until the worker serves its queues (its start-up log line)."""
        for _ in range(int(limit_s * 20)):
            if "batchd worker serving" in self.output():
                return
            if not self.alive:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"worker did not start; log: {self.output()}")

    async def logged(self, text: str, limit_s: float = 15) -> None:
        """Wait until the worker's log (all of it) shows ``text``: the signal that it
        noticed something, e.g. a lost connection."""
        for _ in range(int(limit_s * 20)):
            if text in self.full_output():
                return
            if not self.alive:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"worker never logged {text!r}; log: {self.output()}")

    async def pause(self) -> None:
        await pause_process(self.proc)

    def resume(self) -> None:
        resume_process(self.proc)

    def stop(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- freezing
# SIGSTOP / SIGCONT let a test stop a real process at a point it chose and look at the
# database while nothing moves, e.g. to SIGKILL it mid-batch knowing the batch is not done.


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone (or no procfs): nothing more to wait for
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


async def pause_process(proc: subprocess.Popen[bytes], limit_s: float = 5) -> None:
    """SIGSTOP the process and wait until the kernel reports it stopped."""
    proc.send_signal(signal.SIGSTOP)
    for _ in range(int(limit_s * 1000)):
        if _stopped(proc.pid):
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"process {proc.pid} did not stop on SIGSTOP")


def resume_process(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGCONT)


async def run_in_slices(
    proc: subprocess.Popen[bytes],
    until: Callable[[], Awaitable[bool]],
    *,
    slice_s: float = 0.02,
    limit_s: float = 60,
) -> None:
    """Let a paused process run in short slices (SIGCONT, ``slice_s``, SIGSTOP) until
    ``until()`` holds, checked only while it is stopped; returns with it stopped."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await until():
        if proc.poll() is not None:
            raise AssertionError(f"process {proc.pid} exited with {proc.returncode}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"process {proc.pid}: condition not reached in {limit_s}s")
        resume_process(proc)
        await asyncio.sleep(slice_s)
        await pause_process(proc)
