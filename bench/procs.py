"""The worker subprocess, and what we measure about processes: RSS (sampled, plus the
kernel's own high-water mark ``VmHWM``, reset per measurement through ``clear_refs``),
CPU seconds of the worker, of this process and of the PostgreSQL server, and an
optional py-spy recorder attached to the worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import ROOT

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
READY_LINE = "batchd worker serving"
DISTURBANCES = (
    ("terminating connection due to administrator command", "DB connections terminated"),
    ("connection lost", "executor lost its DB connection"),
    ("recovering batch", "recovery cron had to restart the batch"),
    (" failed, ", "job failed"),
)


def _status_kb(pid: int, key: str) -> int | None:
    """A numeric line of /proc/PID/status (``VmRSS``/``VmHWM`` in kB, context switch
    counts); None if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    if not key.startswith("Vm"):
        return None
    try:  # not Linux: psutil (a dev dependency) if present
        import psutil

        info = psutil.Process(pid).memory_info()
        return int(info.rss // 1024)
    except Exception:
        return None


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float | None:
    """User + system CPU seconds of one process (plus, optionally, of its children that
    have exited and been waited for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        if reaped_children:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / _TICKS
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy (not idle / iowait), machine-wide."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICKS


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


POSTGRES_AUX = ("checkpointer", "walwriter", "background writer", "autovacuum", "stats")
_postgres_db: str | None = None


def count_postgres_database(name: str | None) -> None:
    """Count only backends of this database (plus the server's own background
    processes) as "postgres" CPU, so other databases' load on the same server (e.g.
    somebody's test suite) shows up as noise instead."""
    global _postgres_db
    _postgres_db = name


def postgres_cpu_seconds() -> float | None:
    """CPU seconds of the PostgreSQL server: live backends of the bench database and
    the background processes (checkpointer, WAL writer, autovacuum, …). Backends that
    exit during a measurement take their CPU time with them (a lower bound then).
    Without a database set: every ``postgres`` process plus reaped children."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total = 0.0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if _postgres_db is None:
            total += cpu_seconds(int(entry.name), reaped_children=True) or 0.0
        elif f" {_postgres_db} " in f"{title} " or any(a in title for a in POSTGRES_AUX):
            total += cpu_seconds(int(entry.name)) or 0.0
    return total


@dataclass
class CpuMark:
    wall: float
    worker: float | None
    bench: float
    postgres: float | None
    worker_sys: float | None = None
    worker_preempted: int | None = None
    machine: float | None = None


@dataclass
class CpuUse:
    """CPU seconds used during a measurement, and as a share of wall time (1.0 = one
    core busy)."""

    wall: float
    worker: float | None
    bench: float
    postgres: float | None
    worker_sys: float | None = None
    worker_preempted: int | None = None
    """Involuntary context switches of the worker (preempted, e.g. by PostgreSQL)."""
    machine: float | None = None
    """All cores, machine-wide: what is left after worker + postgres + bench is noise
    from other processes."""

    @property
    def others(self) -> float | None:
        if self.machine is None:
            return None
        return max(self.machine - (self.worker or 0) - (self.postgres or 0) - self.bench, 0.0)

    def share(self, value: float | None) -> str:
        return "-" if value is None or self.wall <= 0 else f"{value / self.wall:.2f}"


def sys_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[12]) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


def cpu_mark(worker_pid: int | None) -> CpuMark:
    return CpuMark(
        wall=time.perf_counter(),
        worker=cpu_seconds(worker_pid) if worker_pid else None,
        bench=self_cpu_seconds(),
        postgres=postgres_cpu_seconds(),
        worker_sys=sys_seconds(worker_pid) if worker_pid else None,
        worker_preempted=_status_kb(worker_pid, "nonvoluntary_ctxt_switches")
        if worker_pid
        else None,
        machine=machine_busy_seconds(),
    )


def cpu_since(mark: CpuMark, worker_pid: int | None) -> CpuUse:
    now = cpu_mark(worker_pid)

    def delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else max(b - a, 0.0)

    pre = (
        None
        if mark.worker_preempted is None or now.worker_preempted is None
        else now.worker_preempted - mark.worker_preempted
    )
    return CpuUse(
        wall=now.wall - mark.wall,
        worker=delta(mark.worker, now.worker),
        bench=now.bench - mark.bench,
        postgres=delta(mark.postgres, now.postgres),
        worker_sys=delta(mark.worker_sys, now.worker_sys),
        worker_preempted=pre,
        machine=delta(mark.machine, now.machine),
    )


@dataclass
class RssSampler:
    """Peak RSS of one process during a measurement: the larger of a 50 ms sample and
    the kernel high-water mark (reset at ``start``)."""

    pid: int
    interval: float = 0.05
    peak_kb: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> None:
        with contextlib.suppress(OSError):  # "5" resets VmHWM to the current RSS
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.peak_kb = _status_kb(self.pid, "VmRSS") or 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS") or 0)
            await asyncio.sleep(self.interval)

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        hwm = _status_kb(self.pid, "VmHWM") or 0
        self.peak_kb = max(self.peak_kb, hwm)
        return self.peak_kb / 1024


class Worker:
    """One ``python -m workers`` (= ``batchd worker``) with the bench's database and
    Redis, every other ``BATCH_*`` variable passed through (plus ``overrides``)."""

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        log_path: Path,
        overrides: dict[str, str] | None = None,
        *,
        trace_sql: Path | None = None,
    ) -> None:
        self.env = dict(os.environ)
        self.env.update(
            {"BATCH_DATABASE_URL": database_url, "BATCH_REDIS_URL": redis_url, **(overrides or {})}
        )
        self.log_path = log_path
        self.trace_sql = trace_sql
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, ready_within: float = 60) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        module = "workers"
        if self.trace_sql is not None:
            module = "bench.sqltrace"
            self.env["BENCH_SQLTRACE_OUT"] = str(self.trace_sql)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + ready_within
        while READY_LINE not in self.log_tail(200_000):
            if self.proc.returncode is not None:
                raise RuntimeError(f"worker exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after {ready_within}s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def disturbances(self, since: int) -> list[str]:
        """What in the worker log since byte ``since`` means a measurement was disturbed
        from outside (e.g. another test suite terminating every PostgreSQL backend)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        found = []
        for needle, label in DISTURBANCES:
            n = text.count(needle)
            if n:
                found.append(f"{label} ×{n}")
        return found

    def log_tail(self, chars: int = 3000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:]

    async def stop(self, grace: float = 30) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if the bench dies without stopping it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def find_py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    """``py-spy record --format raw`` (collapsed stacks) attached to a pid."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> bool:
        exe = find_py_spy()
        if exe is None:
            return False
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            exe,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--output",
            str(self.out),
            "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(0.5)  # let it attach
        return self.proc.returncode is None

    async def stop(self) -> Path | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.out if self.out.exists() else None
