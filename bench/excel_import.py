"""``python -m bench.excel_import``: a filled approval template of ``BENCH_EXCEL_ROWS``
(50 000) rows imported into a real ``batchd serve`` subprocess on PostgreSQL.

Imports a tenth of the rows, then all of them, into the same server. For each: the
upload until its 202 (rows read in pages with openpyxl's read-only mode, each page
validated with the engine's dry run and spooled, then batch + details + locks written)
and the server's peak RSS meanwhile (50 ms samples and the kernel high-water mark).
Memory is flat when the large file grows the server by at most ``FLAT_FACTOR`` times
what the small one did. Then how long the large batch takes to finish in the server's
in-process runner (no Redis: nothing else to start) and that every row succeeded.

Its own database (``BENCH_EXCEL_DATABASE_URL``, default ``batchd_bench_excel_import``,
created and dropped). Prints a table and, as the last line, one JSON object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import sys
import time
from typing import Any

import httpx
from openpyxl import Workbook
from sqlalchemy import text

from app.db.migrate import upgrade_to_head
from app.db.session import create_engine, create_sessionmaker
from app.excel.layout import approval_columns
from bench import data, infra
from bench.config import BenchConfig
from bench.controls import Server
from bench.procs import RssSampler, _status_kb

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/batchd_bench_excel_import"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
RSS_TARGET_MB = 400
FLAT_FACTOR = 2.0
"""Ten times the rows may grow the server by at most this times as much (flat memory)."""


def log(message: str) -> None:
    print(f"[excel-import {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def workbook(definition: dict[str, Any], task_ids: list[int]) -> bytes:
    """The template a manager would send back: every task approved as travel."""
    node = next(n for n in definition["nodes"] if n["id"] == "manager")
    columns = approval_columns(definition["form"], node)
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("Tasks")
    ws.append([c.header for c in columns])
    for i, tid in enumerate(task_ids, start=1):
        values = {"task_id": tid, "title": f"Trip {i}", "department": 10}
        values |= {"decision": "approve", "comment": "bench import"}
        ws.append(
            [
                data.CATEGORY
                if c.kind == "write" and c.name == "category"
                else values.get(c.kind)
                if c.kind not in ("read", "write")
                else None
                for c in columns
            ]
        )
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


@dataclasses.dataclass
class Imported:
    """One upload: its size, the time to its 202 and the server's RSS around it."""

    rows: int
    xlsx_bytes: int
    import_202_s: float
    rss_before_mb: float
    rss_peak_mb: float
    batch: dict[str, Any]

    @property
    def growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_before_mb


async def upload(
    http: httpx.AsyncClient, pid: int, headers: dict[str, str], body: bytes, rows: int
) -> Imported:
    await asyncio.sleep(1)
    before = (_status_kb(pid, "VmRSS") or 0) / 1024
    sampler = RssSampler(pid)
    sampler.start()
    t0 = time.perf_counter()
    r = await http.post(
        "/api/v1/batches/import", files={"file": ("tasks.xlsx", body, XLSX)}, headers=headers
    )
    accepted = time.perf_counter() - t0
    peak = await sampler.stop()
    if r.status_code != 202:
        raise RuntimeError(f"import: {r.status_code} {r.text[:2000]}")
    log(f"{rows} rows: 202 after {accepted:.1f}s; serve RSS {before:.0f} → peak {peak:.0f} MB")
    return Imported(rows, len(body), accepted, before, peak, r.json())


async def finish(http: httpx.AsyncClient, headers: dict[str, str], batch_id: int) -> dict[str, Any]:
    while True:
        b: dict[str, Any] = (await http.get(f"/api/v1/batches/{batch_id}", headers=headers)).json()
        if b["status"] in ("completed", "cancelled", "aborted"):
            return b
        await asyncio.sleep(0.5)


async def amain() -> int:
    """A tenth of the rows first, then all of them, into the same server: memory is flat
    when the larger upload grows the server by no more than the smaller one did (plus
    the duplicate-id index: a few bytes per row)."""
    rows = int(os.environ.get("BENCH_EXCEL_ROWS", "50000").replace("_", ""))
    small_rows = max(1, rows // 10)
    url = os.environ.get("BENCH_EXCEL_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
    bench = dataclasses.replace(BenchConfig.from_env(), database_url=url, redis_url="")
    bench.out_dir.mkdir(parents=True, exist_ok=True)
    await infra.create_database(bench)
    engine = create_engine(url, pool_size=2)
    server = Server(bench, bench.out_dir / "excel-import-serve.log")
    metrics: dict[str, Any] = {"rows": rows, "small_rows": small_rows}
    problems: list[str] = []
    try:
        await upgrade_to_head(engine)
        sm = create_sessionmaker(engine)
        await server.start()
        assert server.proc is not None
        pid = server.proc.pid
        async with httpx.AsyncClient(base_url=server.url, timeout=None) as http:
            world = await data.make_world(sm, http)
            await data.seed(engine, world, rows + small_rows)
            ids = await data.pending_task_ids(engine)
            definition = (
                await http.get(
                    f"/api/v1/definitions/{world.definition_id}", headers=world.headers("admin")
                )
            ).json()
            t0 = time.perf_counter()
            small_body = workbook(definition, ids[:small_rows])
            body = workbook(definition, ids[small_rows:])
            metrics["build_xlsx_s"] = round(time.perf_counter() - t0, 2)
            log(f"{rows + small_rows} tasks seeded; workbooks built")
            headers = world.headers("manager")
            (await http.get("/api/v1/users/me", headers=headers)).raise_for_status()
            small = await upload(http, pid, headers, small_body, small_rows)
            await finish(http, headers, small.batch["id"])
            large = await upload(http, pid, headers, body, rows)
            metrics.update(
                xlsx_bytes=large.xlsx_bytes,
                import_202_s=round(large.import_202_s, 2),
                rows_per_s=round(rows / large.import_202_s),
                rss_before_mb=round(large.rss_before_mb, 1),
                rss_peak_mb=round(large.rss_peak_mb, 1),
                rss_growth_mb=round(large.growth_mb, 1),
                small_import_202_s=round(small.import_202_s, 2),
                small_rows_per_s=round(small_rows / small.import_202_s),
                small_rss_growth_mb=round(small.growth_mb, 1),
                growth_ratio=round(large.growth_mb / max(small.growth_mb, 1.0), 2),
                total=large.batch["total"],
                failed_at_import=large.batch["failed"],
            )
            t0 = time.perf_counter()
            b = await finish(http, headers, large.batch["id"])
            metrics.update(run_s=round(time.perf_counter() - t0, 1), status=b["status"])
            metrics.update(success=b["success"], failed=b["failed"])
            async with engine.connect() as conn:
                moved = (
                    await conn.execute(
                        text(
                            "SELECT count(*) FROM process_instances WHERE current_node_id = "
                            "'finance' AND form_data->>'category' = :c"
                        ),
                        {"c": data.CATEGORY},
                    )
                ).scalar_one()
            metrics["instances_at_finance"] = int(moved)
            if large.batch["total"] != rows or b["success"] != rows or moved != rows + small_rows:
                problems.append(f"expected {rows} approved rows: {metrics}")
    finally:
        await server.stop()
        await engine.dispose()
        await infra.drop_database(bench)
        log("database dropped")
    flat = metrics.get("rss_growth_mb", 1e9) <= FLAT_FACTOR * max(
        metrics.get("small_rss_growth_mb", 0), 1.0
    )
    verdict = "PASS" if flat and metrics.get("rss_peak_mb", 1e9) < RSS_TARGET_MB else "FAIL"
    if problems:
        verdict = "FAIL"
    print(
        f"\nbatchd Excel import — {os.cpu_count()} CPUs, PostgreSQL, batchd serve subprocess\n"
        f"{small_rows:,} rows: 202 after {metrics.get('small_import_202_s')} s "
        f"({metrics.get('small_rows_per_s')} rows/s), serve RSS "
        f"+{metrics.get('small_rss_growth_mb')} MB\n"
        f"{rows:,} rows ({metrics.get('xlsx_bytes', 0):,} bytes): 202 after "
        f"{metrics.get('import_202_s')} s ({metrics.get('rows_per_s')} rows/s); serve RSS "
        f"{metrics.get('rss_before_mb')} MB before, peak {metrics.get('rss_peak_mb')} MB "
        f"(+{metrics.get('rss_growth_mb')} MB, {metrics.get('growth_ratio')}× the growth of "
        f"the 10× smaller file; flat means ≤ {FLAT_FACTOR}×) {verdict}\n"
        f"batch ran in {metrics.get('run_s')} s: {metrics.get('status')}, "
        f"{metrics.get('success')} success, {metrics.get('failed')} failed"
    )
    if problems:
        print("problems:\n  - " + "\n  - ".join(problems))
    print(json.dumps({"bench": "batchd-excel-import", **metrics, "problems": problems}))
    return 0 if verdict == "PASS" else 1


def main() -> None:
    sys.exit(asyncio.run(amain()))


if __name__ == "__main__":
    main()
