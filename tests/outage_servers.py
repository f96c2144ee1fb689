"""Throwaway Redis and PostgreSQL servers on free loopback ports, for tests that stop and
start them again (never the shared servers the rest of the suite uses)."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.conftest import free_port


async def _run(*cmd: str) -> None:
    """Run a short command off the event loop; fail with its output if it fails."""
    done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")


class RedisServer:
    """``redis-server`` without persistence: a restart loses every key, like the
    production setup (``--save "" --appendonly no``)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="batchd-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def or_skip(cls) -> RedisServer:
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                pytest.skip(f"{binary} is not installed")
        return cls()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", self.dir, "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def log(self) -> Path:
        return Path(self.dir, "redis.log")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def start(self, limit_s: float = 10) -> None:
        """Start on this server's port and wait until it answers PING."""
        self.proc = self._spawn()
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            for _ in range(int(limit_s * 20)):
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        raise AssertionError(f"redis-server did not start: {self.output()}")

    async def shutdown(self) -> None:
        """``SHUTDOWN NOSAVE`` (every key is lost), then wait for the process to exit."""
        await _run("redis-cli", "-p", str(self.port), "shutdown", "nosave")
        assert self.proc is not None
        await asyncio.to_thread(self.proc.wait, 10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PostgresServer:
    """A PostgreSQL cluster of its own in a temporary directory (trust auth, no fsync:
    it is thrown away). PostgreSQL refuses to run as root, so as root its commands run
    as the ``postgres`` OS user."""

    def __init__(self, bin_dir: Path, user: str | None) -> None:
        self.bin = bin_dir
        self.user = user
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="batchd-pg-"))
        self.data = self.dir / "data"
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.running = False

    @classmethod
    def or_skip(cls) -> PostgresServer:
        bin_dir = _postgres_bin()
        if bin_dir is None or not (bin_dir / "pg_ctl").exists():
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        user = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres OS user to run initdb")
            user = "postgres"
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser to switch to the postgres user")
        return cls(bin_dir, user)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    async def _pg(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        await _run(*cmd)

    async def init(self) -> None:
        options = ["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]
        await self._pg("initdb", "-D", str(self.data), *options)

    async def start(self) -> None:
        """Start and wait until it accepts connections (``pg_ctl -w``)."""
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = str(self.dir / "log")
        await self._pg("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")
        self.running = True

    async def stop(self) -> None:
        """Fast shutdown: open sessions are terminated, as in a real restart."""
        await self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.running = False

    async def close(self) -> None:
        if self.running:
            with contextlib.suppress(AssertionError):
                await self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
