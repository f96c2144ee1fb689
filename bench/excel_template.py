"""``python -m bench.excel_template``: the approval template export at its limit.

A real ``batchd serve`` subprocess (PostgreSQL + Redis) serves
``POST /api/v1/approval-templates`` for ``BENCH_EXCEL_ROWS`` (50 000, the xlsx limit)
pending manager tasks, while the server's RSS is sampled (50 ms samples and the kernel
high-water mark, as bench/controls.py does for the results export). Measured: time to
the first byte and to the last, file size, the server's peak RSS over its idle RSS;
then the file is opened with openpyxl (read-only) and its rows counted. The zip variant
is measured on ``BENCH_EXCEL_ZIP_TASKS`` (``ZIP_MAX_TASKS``, its limit) listed task ids.

Its own database (``BENCH_EXCEL_DATABASE_URL``, default ``batchd_bench_excel``, created
and dropped) and Redis db (``BENCH_EXCEL_REDIS_URL``, default db 13, flushed at start
and end). Prints a table and, as the last line, one JSON object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from openpyxl import load_workbook

from app.config import Settings
from app.db.migrate import upgrade_to_head
from app.db.session import create_engine, create_sessionmaker
from app.excel.template import ZIP_MAX_TASKS
from bench import data, infra
from bench.api import running_api
from bench.config import BenchConfig
from bench.controls import Server, code_version
from bench.procs import RssSampler, _status_kb

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/batchd_bench_excel"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
URL = "/api/v1/approval-templates"
RSS_TARGET_MB = 300.0


def log(message: str) -> None:
    print(f"[excel {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw.replace("_", "")) if raw else default


def config() -> BenchConfig:
    base = BenchConfig.from_env()
    return dataclasses.replace(
        base,
        database_url=os.environ.get("BENCH_EXCEL_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL,
        redis_url=os.environ.get("BENCH_EXCEL_REDIS_URL", "").strip() or DEFAULT_REDIS_URL,
    )


async def measure(
    http: httpx.AsyncClient, pid: int, body: dict[str, Any], headers: dict[str, str], path: Path
) -> dict[str, Any]:
    """One download to ``path`` while the server's RSS is sampled."""
    await asyncio.sleep(1)
    before_mb = (_status_kb(pid, "VmRSS") or 0) / 1024
    sampler = RssSampler(pid)
    sampler.start()
    size, first_byte = 0, None
    t0 = time.perf_counter()
    with path.open("wb") as sink:  # noqa: ASYNC230 - a local temp file
        async with http.stream("POST", URL, json=body, headers=headers) as r:
            if r.status_code != 200:
                raise RuntimeError(f"template: {r.status_code} {(await r.aread())[:500]!r}")
            async for chunk in r.aiter_raw(1 << 16):
                if first_byte is None:
                    first_byte = time.perf_counter() - t0
                size += len(chunk)
                sink.write(chunk)
            tasks = int(r.headers.get("x-batchd-tasks", "0"))
    seconds = time.perf_counter() - t0
    peak = await sampler.stop()
    after_mb = (_status_kb(pid, "VmRSS") or 0) / 1024
    return {
        "tasks": tasks,
        "seconds": round(seconds, 2),
        "first_byte_s": round(first_byte or 0.0, 2),
        "bytes": size,
        "rss_before_mb": round(before_mb, 1),
        "peak_rss_mb": round(peak, 1),
        "rss_after_mb": round(after_mb, 1),
    }


def xlsx_rows(path: Path) -> int:
    wb = load_workbook(path, read_only=True)
    try:
        return sum(1 for _ in wb["Tasks"].iter_rows(values_only=True)) - 1
    finally:
        wb.close()


def zip_members(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        load_workbook(io.BytesIO(archive.read(names[0])))  # one member opens
        return len(names)


async def amain() -> int:
    bench = config()
    rows = _int("BENCH_EXCEL_ROWS", 50_000)
    zip_tasks = _int("BENCH_EXCEL_ZIP_TASKS", ZIP_MAX_TASKS)
    code = code_version()
    settings = Settings(database_url=bench.database_url, redis_url=bench.redis_url)
    metrics: dict[str, Any] = {"bench": "batchd-excel-template", "rows": rows, "code": code}
    problems: list[str] = []
    await infra.create_database(bench)
    await infra.flush_redis(bench.redis_url)
    engine = create_engine(bench.database_url, pool_size=2)
    server: Server | None = None
    tmp = Path(tempfile.mkdtemp(prefix="batchd-bench-excel-"))
    try:
        await upgrade_to_head(engine)
        sm = create_sessionmaker(engine)
        async with running_api(settings) as api:
            world = await data.make_world(sm, api.client)
        t0 = time.perf_counter()
        await data.seed(engine, world, rows)
        log(f"seeded {rows} pending manager tasks in {time.perf_counter() - t0:.1f}s")
        ids = await data.pending_task_ids(engine, zip_tasks)
        server = Server(bench, bench.out_dir / "excel-serve.log")
        await server.start()
        assert server.proc is not None
        pid = server.proc.pid
        log(f"batchd serve up on port {server.port} (pid {pid})")
        headers = world.headers("manager")
        base = {"definition_key": data.DEFINITION_KEY, "node_id": "manager"}
        async with httpx.AsyncClient(base_url=server.url, timeout=None) as http:
            # A small template first: imports and the first connection are idle RSS.
            r = await http.post(URL, json={**base, "task_ids": ids[:1]}, headers=headers)
            r.raise_for_status()
            xlsx = await measure(http, pid, {**base, "format": "xlsx"}, headers, tmp / "t.xlsx")
            t0 = time.perf_counter()
            xlsx["rows_in_file"] = xlsx_rows(tmp / "t.xlsx")
            xlsx["open_s"] = round(time.perf_counter() - t0, 1)
            log(f"xlsx: {xlsx}")
            zipped = await measure(
                http, pid, {**base, "task_ids": ids, "format": "zip"}, headers, tmp / "t.zip"
            )
            zipped["members"] = zip_members(tmp / "t.zip")
            log(f"zip: {zipped}")
        metrics.update({f"xlsx_{k}": v for k, v in xlsx.items()})
        metrics.update({f"zip_{k}": v for k, v in zipped.items()})
        if xlsx["rows_in_file"] != rows:
            problems.append(f"xlsx has {xlsx['rows_in_file']} rows, expected {rows}")
        if zipped["members"] != len(ids):
            problems.append(f"zip has {zipped['members']} members, expected {len(ids)}")
        for key, m in (("xlsx", xlsx), ("zip", zipped)):
            if m["peak_rss_mb"] >= RSS_TARGET_MB:
                problems.append(f"{key}: peak RSS {m['peak_rss_mb']} MB ≥ {RSS_TARGET_MB}")
    finally:
        if server is not None:
            await server.stop()
        await engine.dispose()
        await infra.flush_redis(bench.redis_url)
        await infra.drop_database(bench)
        shutil.rmtree(tmp, ignore_errors=True)
        log("database dropped, Redis db flushed, files deleted")
    metrics["problems"] = problems
    print(
        f"\nbatchd approval template @ {code} — {os.cpu_count()} CPUs, PostgreSQL + Redis\n"
        f"xlsx, {rows:,} tasks: {metrics['xlsx_seconds']} s (first byte "
        f"{metrics['xlsx_first_byte_s']} s), {metrics['xlsx_bytes']:,} bytes; serve RSS "
        f"{metrics['xlsx_rss_before_mb']} → peak {metrics['xlsx_peak_rss_mb']} MB "
        f"(target < {RSS_TARGET_MB:.0f})\n"
        f"zip, {len(ids):,} tasks: {metrics['zip_seconds']} s, {metrics['zip_bytes']:,} "
        f"bytes; serve RSS {metrics['zip_rss_before_mb']} → peak {metrics['zip_peak_rss_mb']} MB"
    )
    print(json.dumps(metrics))
    return 1 if problems else 0


async def _main_with_signals() -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await amain()
    except asyncio.CancelledError:
        log("interrupted; cleaned up")
        return 130


def main() -> None:
    sys.exit(asyncio.run(_main_with_signals()))


if __name__ == "__main__":
    main()
