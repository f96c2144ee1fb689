"""``python -m bench.excel_bombs``: 4 hostile Excel uploads at once against a real
``batchd serve`` (the embedded default: SQLite in a temporary directory, no Redis).

The uploads are the field test's: a styles.xml of 3 million cell formats (186 MB
unpacked from a ~0.5 MB file), two shared-strings bombs (10 million strings, 50 MB
unpacked, and 6 million, 30 MB — under the part size limit, so refused by their
count), and a row of 5 million cells. While they are read, ``/health`` is polled
back to back and the server's RSS sampled (50 ms samples and the kernel high-water
mark). Printed: each upload's answer and time, the server's RSS growth and CPU
seconds, and ``/health`` p50 / max latency. The goal: RSS growth under 300 MB and
``/health`` within 200 ms.

``BENCH_BOMBS_SET=limits`` sends instead 4 uploads just inside the limits (450 000
distinct shared strings each, the costliest thing a workbook may hold): they are read,
``BATCH_IMPORT_CONCURRENCY`` at a time, and become batches — what one upload may cost,
times the slots.

``BENCH_BOMBS_DATABASE_URL`` serves from an existing, migrated database instead (e.g.
PostgreSQL, where ``BATCH_IMPORT_CONCURRENCY`` uploads are read at once; SQLite reads
one at a time). ``BENCH_BOMBS_ROOT`` runs the server from another checkout (e.g. an
export of an older commit, to measure before a change); the bombs are built by this
one (tests/test_excel_hostile.py). Prints a table and, as the last line, one JSON
object.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.db.session import create_engine, create_sessionmaker, transaction
from app.workflow.users import create_user
from bench.config import ROOT
from bench.procs import RssSampler, _status_kb, cpu_seconds
from tests.conftest import free_port
from tests.test_excel_hostile import MAIN, XF, XLSX, columns, package, shared_strings, styles

IMPORT = "/api/v1/batches/import"
RSS_GROWTH_TARGET_MB = 300
HEALTH_TARGET_MS = 200
REQUEST_TIMEOUT_S = 600


def log(message: str) -> None:
    print(f"[excel-bombs {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bombs() -> dict[str, bytes]:
    return {
        "styles: 3M cell formats (186 MB)": styles(XF, 3_000_000),
        "shared strings: 10M (50 MB)": shared_strings(10_000_000),
        "shared strings: 6M (30 MB)": shared_strings(6_000_000),
        "columns: one row of 5M cells": columns(5_000_000),
    }


def at_the_limits() -> dict[str, bytes]:
    n = 450_000
    strings = b"".join(b"<si><t>Trip %d to Berlin, %d</t></si>" % (i, i * 7) for i in range(n))
    sst = f'<sst {MAIN} count="{n}" uniqueCount="{n}">'.encode() + strings + b"</sst>"
    data = package({"xl/sharedStrings.xml": sst}, shared_strings=True)
    return {f"{n} shared strings #{i}": data for i in range(1, 5)}


async def start_server(root: Path, database_url: str, log_path: Path) -> tuple[Any, str]:
    """``python -m app.cli serve`` (= ``batchd serve``) from ``root``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env.update(BATCH_DATABASE_URL=database_url, PYTHONPATH=str(root))
    with log_path.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        for _ in range(600):
            if proc.returncode is not None:
                raise RuntimeError(f"batchd serve exited: {tail(log_path)}")
            try:
                if (await client.get("/health")).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("batchd serve did not come up in 60 s")


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


async def stop_server(proc: Any) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def user_token(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            _user, token = await create_user(session, "bench-bomber", department_id=10)
    finally:
        await engine.dispose()
    return token


async def measure(url: str, pid: int, token: str, files: dict[str, bytes]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    idle: list[float] = []
    latencies: list[float] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:

        async def poll(into: list[float], until: asyncio.Event) -> None:
            while not until.is_set():
                t0 = time.perf_counter()
                r = await http.get("/health")
                into.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"/health answered {r.status_code}")
                await asyncio.sleep(0.01)

        quiet = asyncio.Event()
        asyncio.get_running_loop().call_later(2, quiet.set)
        await poll(idle, quiet)  # the same polls with nothing else to do: the noise floor
        before_mb = (_status_kb(pid, "VmRSS") or 0) / 1024
        cpu_before = cpu_seconds(pid) or 0.0
        sampler = RssSampler(pid)
        sampler.start()

        async def send(name: str, data: bytes) -> dict[str, Any]:
            t0 = time.perf_counter()
            r = await http.post(IMPORT, headers=headers, files={"file": ("b.xlsx", data, XLSX)})
            seconds = time.perf_counter() - t0
            detail = (
                r.json().get("detail", "")
                if r.headers.get("content-type", "").startswith("application/json")
                else r.text
            )
            log(f"{name}: {r.status_code} after {seconds:.1f}s: {str(detail)[:120]}")
            return {"upload": name, "bytes": len(data), "status": r.status_code,
                    "seconds": round(seconds, 2), "detail": str(detail)[:200]}  # fmt: skip

        poller = asyncio.create_task(poll(latencies, done))
        t0 = time.perf_counter()
        answers = await asyncio.gather(*(send(n, d) for n, d in files.items()))
        wall = time.perf_counter() - t0
        done.set()
        await poller
        peak_mb = await sampler.stop()
        cpu = (cpu_seconds(pid) or 0.0) - cpu_before
    return {
        "uploads": answers,
        "wall_s": round(wall, 2),
        "server_cpu_s": round(cpu, 2),
        "rss_before_mb": round(before_mb, 1),
        "rss_peak_mb": round(peak_mb, 1),
        "rss_growth_mb": round(peak_mb - before_mb, 1),
        "health_idle_p50_ms": round(statistics.median(idle), 1),
        "health_idle_max_ms": round(max(idle), 1),
        "health_polls": len(latencies),
        "health_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "health_max_ms": round(max(latencies), 1) if latencies else None,
    }


async def amain(root: Path) -> int:
    limits = os.environ.get("BENCH_BOMBS_SET", "").strip() == "limits"
    with tempfile.TemporaryDirectory(prefix="batchd-bench-bombs-") as tmp:
        database_url = (
            os.environ.get("BENCH_BOMBS_DATABASE_URL", "").strip()
            or f"sqlite+aiosqlite:///{tmp}/bombs.db"
        )
        t0 = time.perf_counter()
        files = at_the_limits() if limits else bombs()
        log(f"bombs built in {time.perf_counter() - t0:.1f}s: "
            + ", ".join(f"{len(d) >> 10} KB" for d in files.values()))  # fmt: skip
        proc, url = await start_server(root, database_url, Path(tmp) / "serve.log")
        try:
            token = await user_token(database_url)
            metrics = await measure(url, proc.pid, token, files)
            metrics["backend"] = database_url.split(":", 1)[0].split("+", 1)[0]
        finally:
            await stop_server(proc)
    flat = metrics["rss_growth_mb"] < RSS_GROWTH_TARGET_MB
    answering = (metrics["health_max_ms"] or 1e9) < HEALTH_TARGET_MS
    expected = (202,) if limits else (413, 422)
    answered = all(u["status"] in expected for u in metrics["uploads"])
    verdict = "PASS" if flat and answering and answered else "FAIL"
    lines = [
        f"  {u['upload']:<34} {u['status']}  {u['seconds']:>7.2f} s" for u in metrics["uploads"]
    ]
    print(
        f"\nbatchd Excel bombs — {os.cpu_count()} CPUs, batchd serve from {root} "
        f"({metrics['backend']})\n"
        + "\n".join(lines)
        + f"\nserver RSS {metrics['rss_before_mb']} MB before, peak {metrics['rss_peak_mb']} MB "
        f"(+{metrics['rss_growth_mb']} MB; target < {RSS_GROWTH_TARGET_MB}); "
        f"server CPU {metrics['server_cpu_s']} s in {metrics['wall_s']} s\n"
        f"/health: {metrics['health_polls']} polls, p50 {metrics['health_p50_ms']} ms, "
        f"max {metrics['health_max_ms']} ms (target < {HEALTH_TARGET_MS}; idle before: p50 "
        f"{metrics['health_idle_p50_ms']} ms, max {metrics['health_idle_max_ms']} ms) {verdict}"
    )
    print(json.dumps({"bench": "batchd-excel-bombs", "root": str(root), **metrics}))
    return 0 if verdict == "PASS" else 1


def main() -> None:
    root = Path(os.environ.get("BENCH_BOMBS_ROOT", "").strip() or ROOT).resolve()
    sys.exit(asyncio.run(amain(root)))


if __name__ == "__main__":
    main()
