"""``make bench-controls`` / ``python -m bench.controls``: the operator controls of issue 12
on PostgreSQL + Redis, with real ``python -m workers`` processes.

1. rate limit: ``instance.suspend`` filter batches with ``max_items_per_second`` 50
   (``BENCH_RATE_SMALL_ITEMS``, 1 000 items) and 500 (``BENCH_RATE_LARGE_ITEMS``, 10 000)
   on two worker processes; achieved = total / (finished_at − started_at) of the batch;
   plus the chunk pacing seen in ``process_logs.created_at``;
2. results export: a finished batch with ``BENCH_EXPORT_ROWS`` (1 000 000) details made
   by SQL, downloaded as CSV and xlsx from a real ``batchd serve`` subprocess while its
   RSS is sampled;
3. dry run: ``task.approve`` and ``instance.terminate`` filter batches over
   ``BENCH_DRY_RUN_ITEMS`` (100 000) with ``"dry_run": true``: response time, nothing
   written, and the terminate prediction against the real batch run afterwards.

Its own database (``BENCH_CONTROLS_DATABASE_URL``, default ``batchd_bench_controls``,
created and dropped) and Redis db (``BENCH_CONTROLS_REDIS_URL``, default db 11, flushed
at start and end). Prints a table and, as the last line, one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db.migrate import upgrade_to_head
from app.db.session import create_engine, create_sessionmaker
from app.workflow.users import create_user
from bench import data, infra
from bench.api import FINAL, running_api
from bench.config import ROOT, BenchConfig
from bench.procs import (
    RssSampler,
    Worker,
    _die_with_parent,
    _status_kb,
    count_postgres_database,
    cpu_seconds,
    machine_busy_seconds,
    postgres_cpu_seconds,
    self_cpu_seconds,
)

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/batchd_bench_controls"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
SUSPEND_FILTER = {"definition_key": data.DEFINITION_KEY, "status": "active"}
APPROVE_FILTER = {"definition_key": data.DEFINITION_KEY, "node_id": "manager"}


def log(message: str) -> None:
    print(f"[controls {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw.replace("_", "")) if raw else default


@dataclass(frozen=True)
class ControlsConfig:
    bench: BenchConfig
    rate_runs: tuple[tuple[float, int], ...]
    export_rows: int
    dry_run_items: int
    phases: tuple[str, ...]

    @classmethod
    def from_env(cls) -> ControlsConfig:
        base = BenchConfig.from_env()
        bench = dataclasses.replace(
            base,
            database_url=os.environ.get("BENCH_CONTROLS_DATABASE_URL", "").strip()
            or DEFAULT_DATABASE_URL,
            redis_url=os.environ.get("BENCH_CONTROLS_REDIS_URL", "").strip() or DEFAULT_REDIS_URL,
        )
        phases = tuple(
            p.strip()
            for p in (os.environ.get("BENCH_CONTROLS_PHASES") or "rate,dry_run,export").split(",")
            if p.strip()
        )
        unknown = set(phases) - {"rate", "dry_run", "export"}
        if unknown:
            raise SystemExit(f"unknown BENCH_CONTROLS_PHASES {sorted(unknown)}")
        return cls(
            bench=bench,
            rate_runs=(
                (50.0, _int("BENCH_RATE_SMALL_ITEMS", 1_000)),
                (500.0, _int("BENCH_RATE_LARGE_ITEMS", 10_000)),
            ),
            export_rows=_int("BENCH_EXPORT_ROWS", 1_000_000),
            dry_run_items=_int("BENCH_DRY_RUN_ITEMS", 100_000),
            phases=phases,
        )


@dataclass
class Row:
    name: str
    value: str
    target: str = ""
    verdict: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class Noise:
    """Machine-wide busy CPU during a measurement minus what we can attribute (bench
    process, PostgreSQL of the bench database, the given pids)."""

    pids: list[int]
    wall: float = 0.0
    start: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.wall = time.perf_counter()
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        return {
            "machine": machine_busy_seconds() or 0.0,
            "postgres": postgres_cpu_seconds() or 0.0,
            "bench": self_cpu_seconds(),
            "procs": sum(cpu_seconds(p) or 0.0 for p in self.pids),
        }

    def report(self) -> str:
        end, wall = self._now(), max(time.perf_counter() - self.wall, 1e-9)
        d = {k: end[k] - self.start[k] for k in end}
        others = max(d["machine"] - d["postgres"] - d["bench"] - d["procs"], 0.0)
        return (
            f"CPU (cores busy): measured processes {d['procs'] / wall:.2f}, "
            f"postgres {d['postgres'] / wall:.2f}, bench {d['bench'] / wall:.2f} "
            f"({d['bench']:.1f} s), other processes {others / wall:.2f}"
        )


async def counts(engine: AsyncEngine) -> dict[str, int]:
    sql = {
        "batches": "SELECT count(*) FROM batches",
        "batch_details": "SELECT count(*) FROM batch_details",
        "process_logs": "SELECT count(*) FROM process_logs",
        "action_logs": "SELECT count(*) FROM action_logs",
        "locked tasks": "SELECT count(*) FROM tasks WHERE locked_by_batch_id IS NOT NULL",
        "non-active instances": "SELECT count(*) FROM process_instances WHERE status <> 'active'",
        "non-pending tasks": "SELECT count(*) FROM tasks WHERE status <> 'pending'",
    }
    out = {}
    for key, q in sql.items():
        try:
            out[key] = await data.scalar(engine, q)
        except Exception:  # a table this build does not have
            out[key] = -1
    return out


async def fresh(engine: AsyncEngine, sm: Any, client: httpx.AsyncClient, n: int) -> data.World:
    await data.reset(engine)
    world = await data.make_world(sm, client)
    t0 = time.perf_counter()
    await data.seed(engine, world, n)
    log(f"seeded {n} instances + manager tasks in {time.perf_counter() - t0:.1f}s")
    return world


async def wait_final(
    client: httpx.AsyncClient, batch_id: int, headers: dict[str, str], limit_s: float
) -> tuple[dict[str, Any], bool]:
    deadline = time.perf_counter() + limit_s
    while True:
        r = await client.get(f"/api/v1/batches/{batch_id}", headers=headers)
        r.raise_for_status()
        batch: dict[str, Any] = r.json()
        if batch["status"] in FINAL:
            return batch, False
        if time.perf_counter() > deadline:
            await client.delete(f"/api/v1/batches/{batch_id}", headers=headers)
            return batch, True
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- 1. rate


def pacing(times: list[float], started: float) -> dict[str, Any]:
    """Chunks from log timestamps (epoch seconds): a new chunk after a gap > 40 ms."""
    if not times:
        return {}
    times.sort()
    chunks: list[list[float]] = [[times[0]]]
    for t in times[1:]:
        if t - chunks[-1][-1] > 0.04:
            chunks.append([t])
        else:
            chunks[-1].append(t)
    sizes = [len(c) for c in chunks]
    starts = [c[0] for c in chunks]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    per_s: dict[int, int] = {}
    for t in times:
        per_s[int(t - started)] = per_s.get(int(t - started), 0) + 1
    full = [per_s.get(s, 0) for s in range(int(times[-1] - started))]  # whole seconds only
    span = times[-1] - times[0]
    return {
        "chunks": len(chunks),
        "chunk_size_median": statistics.median(sizes),
        "chunk_size_max": max(sizes),
        "gap_median_s": round(statistics.median(gaps), 4) if gaps else None,
        "gap_min_s": round(min(gaps), 4) if gaps else None,
        "gap_max_s": round(max(gaps), 4) if gaps else None,
        "first_item_after_start_s": round(times[0] - started, 3),
        "first_to_last_s": round(span, 3),
        "rate_first_to_last": round((len(times) - 1) / span, 1) if span > 0 else None,
        "items_per_whole_second_min": min(full) if full else None,
        "items_per_whole_second_max": max(full) if full else None,
    }


async def phase_rate(
    cfg: ControlsConfig, engine: AsyncEngine, sm: Any, client: httpx.AsyncClient,
    workers: list[Worker], res: Results,
) -> None:  # fmt: skip
    for limit, n in cfg.rate_runs:
        world = await fresh(engine, sm, client, n)
        key = f"rate_{int(limit)}"
        headers = world.headers("admin")
        body = {
            "type": "instance.suspend",
            "filter": SUSPEND_FILTER,
            "max_items_per_second": limit,
        }
        log_at = [w.log_size() for w in workers]
        noise = Noise([w.pid for w in workers])
        t0 = time.perf_counter()
        r = await client.post("/api/v1/batches", json=body, headers=headers)
        post_s = time.perf_counter() - t0
        if r.status_code != 202:
            raise RuntimeError(f"POST rate batch: {r.status_code} {r.text}")
        batch_id = int(r.json()["id"])
        expected = n / limit
        batch, timed_out = await wait_final(client, batch_id, headers, 3 * expected + 60)
        wall = time.perf_counter() - t0
        cpu = noise.report()
        started, finished = _ts(batch.get("started_at")), _ts(batch.get("finished_at"))
        created = _ts(batch.get("created_at"))
        achieved = ratio = None
        if started and finished and not timed_out:
            span = (finished - started).total_seconds()
            achieved = batch["total"] / span if span > 0 else None
            ratio = achieved / limit if achieved else None
        async with engine.connect() as conn:
            times = [
                float(t)
                for (t,) in await conn.execute(
                    text(
                        "SELECT extract(epoch FROM created_at) FROM process_logs "
                        "WHERE batch_id = :b ORDER BY created_at"
                    ),
                    {"b": batch_id},
                )
            ]
        pace = pacing(times, started.timestamp() if started else times[0] if times else 0.0)
        res.metrics[f"{key}_achieved_per_s"] = round(achieved, 2) if achieved else None
        res.metrics[f"{key}_ratio"] = round(ratio, 4) if ratio else None
        res.metrics[f"{key}_wall_s"] = round(wall, 3)
        res.metrics[f"{key}_wall_ratio"] = round(n / wall / limit, 4)
        res.metrics[f"{key}_pacing"] = pace
        ok = ratio is not None and abs(ratio - 1) <= 0.10
        status_note = (
            f"batch {batch_id} {batch['status']}: success {batch['success']}, failed "
            f"{batch['failed']}, ignored {batch['ignored']} of {batch['total']}"
            + (" — TIMEOUT, cancelled" if timed_out else "")
        )
        if batch["success"] != n:
            res.problems.append(f"{key}: {status_note}")
        disturbed = [d for w, at in zip(workers, log_at, strict=True) for d in w.disturbances(at)]
        notes = [
            status_note,
            f"POST {post_s * 1000:.0f} ms; created→started "
            f"{(started - created).total_seconds() if started and created else float('nan'):.3f}"
            f" s; started→finished "
            f"{(finished - started).total_seconds() if started and finished else float('nan'):.3f}"
            f" s; POST→final (poll 50 ms) {wall:.3f} s = {n / wall:.1f} items/s "
            f"({n / wall / limit:.3f}× limit)",
            f"chunks (process_logs.created_at, gap > 40 ms = new chunk): {pace.get('chunks')}, "
            f"size median {pace.get('chunk_size_median')} max {pace.get('chunk_size_max')}; "
            f"chunk-start gaps median {pace.get('gap_median_s')} s "
            f"(min {pace.get('gap_min_s')}, max {pace.get('gap_max_s')}); first item "
            f"{pace.get('first_item_after_start_s')} s after started_at; first→last log "
            f"{pace.get('first_to_last_s')} s = {pace.get('rate_first_to_last')} items/s; "
            f"items per whole second min {pace.get('items_per_whole_second_min')} "
            f"max {pace.get('items_per_whole_second_max')}",
            cpu,
        ]
        if disturbed:
            notes.append("DISTURBED (worker logs): " + ", ".join(disturbed))
        res.rows.append(
            Row(
                f"rate limit {limit:g}/s, {n} items, 2 workers",
                f"{achieved:.1f}/s ({ratio:.3f}×)" if achieved and ratio else "n/a",
                "±10%",
                "PASS" if ok else "FAIL",
                notes,
            )
        )
        log(f"{key}: achieved {achieved} ratio {ratio} wall {wall:.2f}s")


# --------------------------------------------------------------------------- 2. dry run


async def phase_dry_run(
    cfg: ControlsConfig, engine: AsyncEngine, sm: Any, client: httpx.AsyncClient,
    res: Results,
) -> data.World:  # fmt: skip
    n = cfg.dry_run_items
    world = await fresh(engine, sm, client, n)
    cases = [
        (
            "approve",
            "manager",
            {"type": "task.approve", "filter": APPROVE_FILTER, "params": data.APPROVE_PARAMS},
        ),
        (
            "terminate",
            "admin",
            {
                "type": "instance.terminate",
                "filter": SUSPEND_FILTER,
                "params": data.TERMINATE_PARAMS,
            },
        ),
    ]
    predicted: dict[str, dict[str, Any]] = {}
    for key, who, body in cases:
        timings = []
        before = await counts(engine)
        cpu = ""
        for i in range(2):  # first (cold-ish) and a repeat
            noise = Noise([])
            t0 = time.perf_counter()
            r = await client.post(
                "/api/v1/batches", json={**body, "dry_run": True}, headers=world.headers(who)
            )
            timings.append(time.perf_counter() - t0)
            if i == 0:
                cpu = noise.report()
            if r.status_code != 200:
                raise RuntimeError(f"dry run {key}: {r.status_code} {r.text[:500]}")
        after = await counts(engine)
        out = r.json()
        predicted[key] = out
        written = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        if written:
            res.problems.append(f"dry run {key} wrote something: {written}")
        res.metrics[f"dry_run_{key}_100k_s"] = round(timings[0], 3)
        res.metrics[f"dry_run_{key}_100k_repeat_s"] = round(timings[1], 3)
        res.metrics[f"dry_run_{key}_wrote_nothing"] = not written
        ok = out.get("total") == n and timings[0] < 5
        res.rows.append(
            Row(
                f"dry run {body['type']} filter, {n} items",
                f"{timings[0]:.2f} s (repeat {timings[1]:.2f} s)",
                "a few s",
                "PASS" if ok else "FAIL",
                [
                    f"predicted total {out.get('total')}, success {out.get('success')}, "
                    f"failed {out.get('failed')}, ignored {out.get('ignored')}, "
                    f"problems listed {len(out.get('problems') or [])}",
                    "nothing written (batches, details, logs, locks, instances, tasks unchanged)"
                    if not written
                    else f"WROTE: {written}",
                    cpu + " (first POST; the API runs in the bench process)",
                ],
            )
        )
        log(f"dry run {key}: {timings} → {out.get('total')} / {out.get('success')}")
    res.metrics["_predicted_terminate"] = predicted.get("terminate")
    return world


async def real_terminate(client: httpx.AsyncClient, world: data.World, res: Results) -> None:
    """The real terminate batch on the same data (after the dry runs): does it do what
    the dry run predicted?"""
    pred = res.metrics.pop("_predicted_terminate", None)
    if not pred:
        return
    headers = world.headers("admin")
    body = {"type": "instance.terminate", "filter": SUSPEND_FILTER, "params": data.TERMINATE_PARAMS}
    t0 = time.perf_counter()
    r = await client.post("/api/v1/batches", json=body, headers=headers)
    if r.status_code != 202:
        raise RuntimeError(f"real terminate: {r.status_code} {r.text}")
    batch, timed_out = await wait_final(client, int(r.json()["id"]), headers, 300)
    wall = time.perf_counter() - t0
    got = {k: batch[k] for k in ("total", "success", "failed", "ignored")}
    want = {k: pred.get(k) for k in got}
    same = got == want and not timed_out
    res.metrics["dry_run_terminate_matches_real"] = same
    if not same:
        res.problems.append(f"dry run terminate predicted {want}, the real batch did {got}")
    res.rows.append(
        Row(
            f"real instance.terminate after the dry run, {got['total']} items",
            f"{wall:.1f} s",
            "= prediction",
            "PASS" if same else "FAIL",
            [f"real {got} vs predicted {want}; batch {batch['status']}"],
        )
    )


# --------------------------------------------------------------------------- 3. export


EXPORT_BATCH = """
INSERT INTO batches (type, status, priority, creator_id, params, filter, source, is_single,
    total, success, failed, ignored, cancelled, chunk_size, max_retries, seed_cursor,
    seed_until, seeding_done, targets_resolved, progress_seq, created_at, started_at,
    updated_at, finished_at)
VALUES ('instance.suspend', 'completed', 'normal', :creator, '{}'::jsonb, NULL, 'api', false,
    :n, 0, 0, 0, 0, 500, 3, 0, 0, true, true, 0, now(), now(), now(),
    now())
RETURNING id
"""
EXPORT_DETAILS = """
INSERT INTO batch_details (batch_id, item_id, row, status, error, retry_count, payload,
    finished_at)
SELECT :batch, :first + g - 1, NULL,
    CASE WHEN g % 10 = 0 THEN 'failed' WHEN g % 25 = 1 THEN 'ignored' ELSE 'success' END,
    CASE WHEN g % 10 = 0 THEN 'Instance ' || (:first + g - 1) || ' is suspended, not active.'
         WHEN g % 1000 = 5 THEN '=HYPERLINK("http://x")' END,
    CASE WHEN g % 10 = 0 THEN 1 ELSE 0 END, NULL, now()
FROM generate_series(1, :n) AS g
"""
EXPORT_COUNTERS = """
UPDATE batches b SET success = c.s, failed = c.f, ignored = c.i
FROM (SELECT count(*) FILTER (WHERE status = 'success') AS s,
             count(*) FILTER (WHERE status = 'failed') AS f,
             count(*) FILTER (WHERE status = 'ignored') AS i
      FROM batch_details WHERE batch_id = :batch) c
WHERE b.id = :batch
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``batchd serve`` as a subprocess with the bench's database and Redis."""

    def __init__(self, cfg: BenchConfig, log_path: Path) -> None:
        self.cfg = cfg
        self.log_path = log_path
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = dict(os.environ)
        env.update(BATCH_DATABASE_URL=self.cfg.database_url, BATCH_REDIS_URL=self.cfg.redis_url)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("w")
        exe = Path(sys.executable).with_name("batchd")
        self.proc = await asyncio.create_subprocess_exec(
            str(exe),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        out.close()
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as c:
            for _ in range(600):
                if self.proc.returncode is not None:
                    raise RuntimeError(f"batchd serve exited: {self.log_path.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get("/health")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError("batchd serve did not come up in 60 s")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def phase_export(
    cfg: ControlsConfig, engine: AsyncEngine, sm: Any, client: httpx.AsyncClient,
    res: Results,
) -> None:  # fmt: skip
    n = cfg.export_rows
    real = 0
    async with engine.connect() as conn:
        first = (await conn.execute(text("SELECT min(id) FROM process_instances"))).scalar()
        real = int(
            (await conn.execute(text("SELECT count(*) FROM process_instances"))).scalar() or 0
        )
    if first is None:
        await fresh(engine, sm, client, min(n, 100_000))
        async with engine.connect() as conn:
            first = (await conn.execute(text("SELECT min(id) FROM process_instances"))).scalar()
            real = int(
                (await conn.execute(text("SELECT count(*) FROM process_instances"))).scalar() or 0
            )
    async with sm() as session, session.begin():
        admin, token = await create_user(session, "bench-export-admin", role="admin")
        admin_id = admin.id
    t0 = time.perf_counter()
    async with engine.begin() as conn:
        batch_id = (
            await conn.execute(
                text(EXPORT_BATCH),
                {"creator": admin_id, "n": n},
            )
        ).scalar_one()
        await conn.execute(text(EXPORT_DETAILS), {"batch": batch_id, "first": first, "n": n})
        await conn.execute(text(EXPORT_COUNTERS), {"batch": batch_id})
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE batch_details"))
        await conn.execute(text("CHECKPOINT"))
    log(f"export batch {batch_id}: {n} details inserted in {time.perf_counter() - t0:.1f}s")
    server = Server(cfg.bench, cfg.bench.out_dir / "controls-serve.log")
    await server.start()
    log(f"batchd serve up on port {server.port} (pid {server.proc.pid if server.proc else 0})")
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=server.url, timeout=None) as http:
            # One small request first: the app's imports and first DB connection are part
            # of the idle RSS, not of the download.
            (await http.get(f"/api/v1/batches/{batch_id}", headers=headers)).raise_for_status()
            for fmt in ("csv", "xlsx"):
                assert server.proc is not None
                pid = server.proc.pid
                await asyncio.sleep(1)
                before_mb = (_status_kb(pid, "VmRSS") or 0) / 1024
                sampler = RssSampler(pid)
                sampler.start()
                noise = Noise([pid])
                size, lines, first_byte = 0, 0, None
                t0 = time.perf_counter()
                with open(os.devnull, "wb") as sink:  # noqa: ASYNC230 - /dev/null never blocks
                    async with http.stream(
                        "GET",
                        f"/api/v1/batches/{batch_id}/results",
                        params={"format": fmt},
                        headers=headers,
                    ) as r:
                        if r.status_code != 200:
                            body = await r.aread()
                            raise RuntimeError(f"results {fmt}: {r.status_code} {body!r}")
                        async for chunk in r.aiter_raw(1 << 16):
                            if first_byte is None:
                                first_byte = time.perf_counter() - t0
                            size += len(chunk)
                            if fmt == "csv":
                                lines += chunk.count(b"\n")
                            sink.write(chunk)
                seconds = time.perf_counter() - t0
                cpu = noise.report()
                peak = await sampler.stop()
                after_mb = (_status_kb(pid, "VmRSS") or 0) / 1024
                key = f"export_{fmt}"
                res.metrics[f"{key}_peak_rss_mb"] = round(peak, 1)
                res.metrics[f"{key}_rss_before_mb"] = round(before_mb, 1)
                res.metrics[f"{key}_rss_after_mb"] = round(after_mb, 1)
                res.metrics[f"{key}_s"] = round(seconds, 2)
                res.metrics[f"{key}_bytes"] = size
                res.metrics[f"{key}_first_byte_s"] = round(first_byte or 0.0, 3)
                notes = [
                    f"{size:,} bytes in {seconds:.1f} s ({size / seconds / 1e6:.1f} MB/s, "
                    f"{n / seconds:,.0f} rows/s); first byte after {first_byte or 0:.2f} s",
                    f"serve RSS before {before_mb:.0f} MB, peak {peak:.0f} MB "
                    f"(+{peak - before_mb:.0f}), after {after_mb:.0f} MB",
                    cpu,
                ]
                if fmt == "csv":
                    res.metrics["export_csv_lines"] = lines
                    if lines != n + 1:
                        res.problems.append(f"CSV export has {lines} lines, expected {n + 1}")
                    notes.append(f"{lines:,} lines (header + {n:,} rows expected)")
                res.rows.append(
                    Row(
                        f"results export {fmt}, {n:,} rows ({real:,} with a real instance)",
                        f"peak RSS {peak:.0f} MB, {seconds:.1f} s",
                        "< 300 MB",
                        "PASS" if peak < 300 else "FAIL",
                        notes,
                    )
                )
                log(f"export {fmt}: {size} bytes in {seconds:.1f}s, peak RSS {peak:.0f} MB")
    finally:
        await server.stop()


# --------------------------------------------------------------------------- main


def code_version() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app", "workers", "migrations"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + (" + uncommitted app changes" if dirty else "") if head else "unknown"


def render(res: Results, code: str) -> str:
    lines = [
        "",
        f"batchd operator controls @ {code} — {os.cpu_count()} CPUs, PostgreSQL + Redis",
        "",
        f"{'measurement':<58} {'result':<30} {'target':<12} verdict",
        "-" * 110,
    ]
    for row in res.rows:
        lines.append(f"{row.name:<58} {row.value:<30} {row.target:<12} {row.verdict}")
        lines += [f"    {n}" for n in row.notes]
    if res.problems:
        lines += ["", "problems:"] + [f"  - {p}" for p in res.problems]
    return "\n".join(lines)


async def amain() -> int:
    cfg = ControlsConfig.from_env()
    bench = cfg.bench
    bench.out_dir.mkdir(parents=True, exist_ok=True)
    code = code_version()
    t_all = time.perf_counter()
    settings = Settings(database_url=bench.database_url, redis_url=bench.redis_url)
    res = Results()
    count_postgres_database(bench.database_name)
    await infra.create_database(bench)
    await infra.flush_redis(bench.redis_url)
    engine = create_engine(bench.database_url, pool_size=4)
    workers: list[Worker] = []
    try:
        await upgrade_to_head(engine)
        sm = create_sessionmaker(engine)
        async with running_api(settings) as api:
            for i in range(2):
                w = Worker(
                    bench.database_url, bench.redis_url, bench.out_dir / f"controls-w{i}.log"
                )
                await w.start()
                workers.append(w)
                log(f"worker {i} started (pid {w.pid})")
            if "rate" in cfg.phases:
                await phase_rate(cfg, engine, sm, api.client, workers, res)
            if "dry_run" in cfg.phases:
                world = await phase_dry_run(cfg, engine, sm, api.client, res)
                await real_terminate(api.client, world, res)
            for w in workers:
                await w.stop()
            if "export" in cfg.phases:
                await phase_export(cfg, engine, sm, api.client, res)
    finally:
        for w in workers:
            await w.stop()
        await engine.dispose()
        await infra.flush_redis(bench.redis_url)
        await infra.drop_database(bench)
        log("controls database dropped, Redis db flushed")
    if (later := code_version()) != code:
        code += f" (tree changed during the run: now {later})"
    print(render(res, code))
    print(f"\n(total {time.perf_counter() - t_all:.0f}s; logs in {bench.out_dir})")
    out: dict[str, Any] = {"bench": "batchd-controls", **res.metrics}
    out.update(code=code, problems=res.problems)
    print(json.dumps(out))
    return 0


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
