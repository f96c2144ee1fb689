"""``python -m bench.partial_import``: the approver's round trip of issue 21, timed.

The demo's data (``batchd seed-demo``: 300 expense claims at the manager step), six of
them decided by hand so 294 are pending; the manager downloads the expense/manager
template (294 rows) from a real ``batchd serve``, decides 10 rows (approve, with a
category), leaves 284 blank and uploads it. Reported per run, and as medians: the
template's rows, the rows skipped, the items created, the upload until its 202, the
upload until the batch is ``completed`` (polled every ``POLL_S``) and the server's own
``finished_at − created_at``; the batch must end with 10 successes.

Each run starts from a fresh database and a fresh server (the first request of a
server is not what a user meets: the template download warms it). SQLite always (a
temporary file, the embedded runner: ``batchd serve`` alone); PostgreSQL too when
``BENCH_PARTIAL_DATABASE_URL`` names a database (created and dropped each run; its name
must contain ``bench``), with the same in-process runner (no Redis), so the two differ
only in the database. Prints a table and, as the last line, one JSON object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
from openpyxl import load_workbook
from sqlalchemy import text

from app.db.migrate import upgrade_to_head
from app.db.session import create_engine, create_sessionmaker
from app.demo import seed_demo
from bench import infra
from bench.config import ROOT, BenchConfig
from bench.controls import Server

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DECIDED_BY_HAND = 6
"""Demo tasks approved one by one first: 300 − 6 = 294, the issue's template."""
DECIDED_ROWS = 10
"""Rows of the template given a Decision; the rest are left blank (skipped)."""
POLL_S = 0.005
"""How often the batch is looked at after the 202 (the completion time's resolution)."""
FINAL = ("completed", "cancelled", "aborted")


def log(message: str) -> None:
    print(f"[partial-import {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Run:
    """One round trip: what the template held, what the import made of it, how long."""

    backend: str
    template_rows: int
    template_s: float
    skipped_rows: int
    items: int
    success: int
    failed: int
    status: str
    to_202_s: float
    to_completed_s: float
    server_s: float
    """The batch's own ``finished_at − created_at`` (no polling in it)."""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fill(template: bytes, rows: int) -> bytes:
    """The template as the manager sends it back: the first ``rows`` rows approved with
    a category (some demo claims have none, and the step requires it), the rest blank."""
    wb = load_workbook(io.BytesIO(template))
    ws = wb["Tasks"]
    col = {str(c.value): c.column for c in ws[1]}
    for r in range(2, 2 + rows):
        ws.cell(r, col["Decision"]).value = "approve"
        ws.cell(r, col["Category *"]).value = "travel"
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


async def round_trip(backend: str, url: str, cfg: BenchConfig, log_path: Path) -> Run:
    """Seed the demo into the (empty) database at ``url``, serve it, and time one
    partial import."""
    engine = create_engine(url, pool_size=2)
    try:
        await upgrade_to_head(engine)
        tokens = {
            name: token for name, _role, token in await seed_demo(create_sessionmaker(engine))
        }
    finally:
        await engine.dispose()
    server = Server(dataclasses.replace(cfg, database_url=url, redis_url=""), log_path)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            manager = bearer(tokens["manager"])
            r = await http.get(
                "/api/v1/tasks",
                params={
                    "definition_key": "expense",
                    "node_id": "manager",
                    "status": "pending",
                    "page_size": DECIDED_BY_HAND,
                },
                headers=manager,
            )
            r.raise_for_status()
            for task in r.json()["items"]:
                done = await http.post(
                    f"/api/v1/tasks/{task['id']}/approve",
                    json={"decision": "approve", "form_data": {"category": "travel"}},
                    headers=manager,
                )
                done.raise_for_status()
            t0 = time.perf_counter()
            r = await http.post(
                "/api/v1/approval-templates",
                json={"definition_key": "expense", "node_id": "manager", "format": "xlsx"},
                headers=manager,
            )
            template_s = time.perf_counter() - t0
            r.raise_for_status()
            rows = int(r.headers["X-Batchd-Tasks"])
            body = fill(r.content, DECIDED_ROWS)

            t0 = time.perf_counter()
            r = await http.post(
                "/api/v1/batches/import",
                files={"file": ("expense-manager.xlsx", body, XLSX)},
                headers=manager,
            )
            to_202 = time.perf_counter() - t0
            if r.status_code != 202:
                raise RuntimeError(f"import: {r.status_code} {r.text[:2000]}")
            batch: dict[str, Any] = r.json()
            while batch["status"] not in FINAL:
                await asyncio.sleep(POLL_S)
                got = await http.get(f"/api/v1/batches/{batch['id']}", headers=manager)
                batch = got.json()
            to_completed = time.perf_counter() - t0
    finally:
        await server.stop()
    created = datetime.fromisoformat(batch["created_at"])
    finished = datetime.fromisoformat(batch["finished_at"])
    return Run(
        backend=backend,
        template_rows=rows,
        template_s=template_s,
        skipped_rows=batch["skipped_rows"],
        items=batch["total"],
        success=batch["success"],
        failed=batch["failed"],
        status=batch["status"],
        to_202_s=to_202,
        to_completed_s=to_completed,
        server_s=(finished - created).total_seconds(),
    )


async def sqlite_run(cfg: BenchConfig, n: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="batchd-partial-") as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/batchd.db"
        return await round_trip("sqlite", url, cfg, cfg.out_dir / f"partial-sqlite-{n}.log")


async def postgres_run(cfg: BenchConfig, n: int) -> Run:
    """A fresh bench database (``infra`` refuses a name without ``bench``), dropped after."""
    await infra.create_database(cfg)
    try:
        log_path = cfg.out_dir / f"partial-postgresql-{n}.log"
        return await round_trip("postgresql", cfg.database_url, cfg, log_path)
    finally:
        await infra.drop_database(cfg)


async def postgres_version(url: str) -> str:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return str((await conn.execute(text("SHOW server_version"))).scalar_one())
    finally:
        await engine.dispose()


def commit() -> str:
    """HEAD, and whether ``app/`` had uncommitted changes (the server runs what is on disk)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "app"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return f"{head}{' + uncommitted app/ changes' if dirty else ''}"


def summary(runs: list[Run]) -> dict[str, Any]:
    """Medians (and the extremes of the two times that matter) of one backend's runs."""

    def median(key: str) -> float:
        return round(statistics.median(getattr(r, key) for r in runs), 3)

    last = runs[-1]
    return {
        "runs": len(runs),
        "template_rows": last.template_rows,
        "skipped_rows": last.skipped_rows,
        "items": last.items,
        "success": last.success,
        "failed": last.failed,
        "template_s": median("template_s"),
        "to_202_s": median("to_202_s"),
        "to_202_max_s": round(max(r.to_202_s for r in runs), 3),
        "to_completed_s": median("to_completed_s"),
        "to_completed_max_s": round(max(r.to_completed_s for r in runs), 3),
        "server_created_to_finished_s": median("server_s"),
    }


def problems_of(runs: list[Run]) -> list[str]:
    want = DECIDED_ROWS
    return [
        f"{r.backend}: {dataclasses.asdict(r)}"
        for r in runs
        if (r.status, r.items, r.success, r.failed) != ("completed", want, want, 0)
        or r.skipped_rows != r.template_rows - want
    ]


async def amain() -> int:
    runs_per_backend = int(os.environ.get("BENCH_PARTIAL_RUNS", "5"))
    pg_url = os.environ.get("BENCH_PARTIAL_DATABASE_URL", "").strip()
    cfg = BenchConfig.from_env()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    backends: dict[str, Any] = {"sqlite": sqlite_run}
    machine = {
        "date": date.today().isoformat(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "sqlite_version": sqlite3.sqlite_version,
        "load_1min_before": round(os.getloadavg()[0], 2),
        "commit": commit(),
    }
    if pg_url:
        cfg = dataclasses.replace(cfg, database_url=pg_url)
        if "bench" not in cfg.database_name:
            raise SystemExit("BENCH_PARTIAL_DATABASE_URL: the database name must contain 'bench'")
        backends["postgresql"] = postgres_run
        await infra.create_database(cfg)
        try:
            machine["postgresql_version"] = await postgres_version(pg_url)
        finally:
            await infra.drop_database(cfg)
    results: dict[str, list[Run]] = {}
    for name, run in backends.items():
        results[name] = []
        for n in range(1, runs_per_backend + 1):
            one = await run(cfg, n)
            log(
                f"{name} run {n}: {one.template_rows} rows, {one.skipped_rows} skipped, "
                f"{one.items} items; 202 after {one.to_202_s:.3f} s, {one.status} after "
                f"{one.to_completed_s:.3f} s"
            )
            results[name].append(one)
    summaries = {name: summary(runs) for name, runs in results.items()}
    machine["load_1min_after"] = round(os.getloadavg()[0], 2)
    problems = [p for runs in results.values() for p in problems_of(runs)]
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\nbatchd partial template import ({DECIDED_ROWS} of the template's rows decided) — "
        f"{started}, {machine['cpus']} CPUs (load {machine['load_1min_before']} → "
        f"{machine['load_1min_after']}), commit {machine['commit']}, SQLite "
        f"{machine['sqlite_version']}"
        + (f", PostgreSQL {machine['postgresql_version']}" if pg_url else "")
    )
    print(
        f"{'backend':<11} {'rows':>5} {'skipped':>8} {'items':>6} {'ok':>4} "
        f"{'template':>9} {'→ 202':>8} {'→ completed':>12} {'server':>8}   (medians of runs)"
    )
    for name, s in summaries.items():
        print(
            f"{name:<11} {s['template_rows']:>5} {s['skipped_rows']:>8} {s['items']:>6} "
            f"{s['success']:>4} {s['template_s']:>8.3f}s {s['to_202_s']:>7.3f}s "
            f"{s['to_completed_s']:>11.3f}s {s['server_created_to_finished_s']:>7.3f}s"
        )
    if problems:
        print("problems:\n  - " + "\n  - ".join(problems))
    print(
        json.dumps({"bench": "batchd-partial-import", **machine, **summaries, "problems": problems})
    )
    return 1 if problems else 0


def main() -> None:
    sys.exit(asyncio.run(amain()))


if __name__ == "__main__":
    main()
