"""``make bench`` / ``python -m bench.run [--sweep] [--profile] [--trace-sql]``.

Main run (PostgreSQL + Redis + one ``python -m workers``, the API in this process):

1. batchd ``task.approve`` (filter batch, form data), ``instance.suspend``,
   ``instance.terminate`` and ``instance.set_variables`` (filter batches) on
   ``BENCH_ITEMS`` fresh rows each: POST → final status, POST latency, worker peak RSS,
   CPU use of worker / PostgreSQL / this process;
2. baseline: approve and suspend one item per transaction through the engine code —
   sequentially, and concurrently as the PHP service did (each item's transaction also
   writes its detail row and bumps the batch counters; ``BATCH_MAX_CONCURRENCY`` at a
   time);
3. ceiling: minimal set-based raw SQL (asyncpg) for the same state changes, per type;
4. embedded default: SQLite + the in-process runner, ``task.approve``;
5. scale: ``task.approve`` over ``BENCH_SCALE_ITEMS`` (1M) rows against a real
   ``batchd serve`` subprocess, with API p99 idle/busy, first applied item and an SSE
   subscriber (bench/scale.py); the raw asyncpg PHP-model baseline; and, when the
   server loads pg_stat_statements (``BENCH_PG_STATEMENTS=1``: an own cluster), where
   PostgreSQL's time goes per statement for approve and its ceiling (bench/pgstat.py).

Everything type-specific is one ``OpSpec`` entry in ``OPS``.

It prints a table, the targets, and as its last line one JSON object. ``--sweep``
instead tries chunk sizes × jobs per batch for ``task.approve`` and prints that table.
Everything it creates (database, Redis db contents, temp files) is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.migrate import upgrade_to_head
from app.db.session import create_engine, create_sessionmaker
from app.runtime.gc_tuning import tune_for_batches
from bench import data, infra, pgstat, references, scale
from bench.api import BatchRun, run_batch, running_api
from bench.config import EXTRA_PHASES, PHASES, ROOT, BenchConfig
from bench.controls import Server
from bench.procs import (
    CpuMark,
    CpuUse,
    PySpy,
    RssSampler,
    Worker,
    count_postgres_database,
    cpu_mark,
    cpu_seconds,
    cpu_since,
    find_py_spy,
)
from bench.profile import read_raw

T = TypeVar("T")
APPROVE = "task.approve"
SUSPEND = "instance.suspend"
TERMINATE = "instance.terminate"
SET_VARIABLES = "instance.set_variables"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    name: str
    items: int
    seconds: float
    check: str = "ok"
    notes: str = ""

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Results:
    rows: dict[str, Row] = field(default_factory=dict)
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)
    disturbed: list[str] = field(default_factory=list)
    statements: dict[str, pgstat.Breakdown] = field(default_factory=dict)
    """pg_stat_statements per measurement (approve, its ceilings)."""

    def add(self, key: str, row: Row) -> Row:
        self.rows[key] = row
        log(
            f"{row.name}: {row.items} items in {row.seconds:.2f}s = {row.items_per_s:,.0f}/s "
            f"[{row.check}] {row.notes}"
        )
        return row

    def rate(self, key: str) -> float | None:
        row = self.rows.get(key)
        return round(row.items_per_s, 1) if row else None


def cpu_note(cpu: CpuUse) -> str:
    parts = []
    if cpu.worker is not None:
        parts.append(
            f"worker {cpu.share(cpu.worker)} (sys {cpu.share(cpu.worker_sys)}, "
            f"preempted {cpu.worker_preempted}×)"
        )
    parts += [f"postgres {cpu.share(cpu.postgres)}", f"bench process {cpu.share(cpu.bench)}"]
    parts.append(f"other processes {cpu.share(cpu.others)}")
    return "CPU (cores busy): " + ", ".join(parts)


# --------------------------------------------------------------------------- context


@dataclass
class Pg:
    """What every PostgreSQL measurement needs."""

    cfg: BenchConfig
    settings: Settings
    engine: AsyncEngine
    sm: async_sessionmaker[AsyncSession]
    client: Any
    worker: Worker
    stats: pgstat.Statements | None = None
    """pg_stat_statements of the bench database, when the server preloads it."""

    async def fresh(self, n: int) -> data.World:
        await data.reset(self.engine)
        world = await data.make_world(self.sm, self.client)
        t0 = time.perf_counter()
        await data.seed(self.engine, world, n)
        log(f"seeded {n} tasks+instances in {time.perf_counter() - t0:.1f}s")
        return world


# --------------------------------------------------------------------------- operations

CeilingFn = Callable[[str, data.World, int, int, Callable[[], None]], Awaitable[float]]
"""(asyncpg dsn, world, chunk, connections, before_close) → seconds."""
BaselineFn = Callable[[async_sessionmaker[AsyncSession], data.World, list[int]], Awaitable[float]]
"""(sessionmaker, world, item ids) → seconds, one transaction per item."""
ConcurrentFn = Callable[
    [async_sessionmaker[AsyncSession], data.World, list[int], int], Awaitable[float]
]
"""(sessionmaker, world, item ids, concurrency) → seconds: one transaction per item with
its detail row and the batch counters, ``concurrency`` at a time (the PHP model)."""


@dataclass(frozen=True)
class OpSpec:
    """Everything type-specific about one measured operation: adding a type to the bench
    is one entry in ``OPS`` (plus its ceiling SQL in references.py and its check in
    data.py)."""

    key: str
    """Phase name (``<key>_ids`` for the id-list variant), and the prefix of its result
    rows and JSON keys (``<key>_items_per_s``, ``ceiling_<key>_items_per_s``)."""
    type: str
    who: str
    """Who posts the batch: ``manager`` or ``admin``."""
    target_filter: dict[str, Any]
    params: dict[str, Any] | None
    pick_ids: Callable[..., Awaitable[list[int]]]
    """(engine, limit=None) → the item ids, for id-list batches and the baseline."""
    check: Callable[[AsyncEngine, int], Awaitable[str]]
    """(engine, n) → 'ok' when n items were changed with every side effect."""
    ceiling: CeilingFn
    baseline: BaselineFn | None = None
    concurrent_baseline: ConcurrentFn | None = None

    def body(self, chunk_size: int | None = None, ids: list[int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type}
        if self.params is not None:
            body["params"] = self.params
        if ids is not None:
            body["ids"] = ids
        else:
            body["filter"] = dict(self.target_filter)
        if chunk_size:
            body["chunk_size"] = chunk_size
        return body


OPS: tuple[OpSpec, ...] = (
    OpSpec(
        key="approve",
        type=APPROVE,
        who="manager",
        target_filter={"definition_key": data.DEFINITION_KEY, "node_id": "manager"},
        params=data.APPROVE_PARAMS,
        pick_ids=data.pending_task_ids,
        check=data.check_approved,
        ceiling=lambda dsn, w, chunk, conns, done: references.ceiling_approve(
            dsn, w.manager_id, w.finance_id, chunk, conns, done
        ),
        baseline=lambda sm, w, ids: references.baseline_approve(sm, w.manager_id, ids),
        concurrent_baseline=lambda sm, w, ids, c: references.concurrent_baseline_approve(
            sm, w.manager_id, ids, c
        ),
    ),
    OpSpec(
        key="suspend",
        type=SUSPEND,
        who="admin",
        target_filter={"definition_key": data.DEFINITION_KEY, "status": "active"},
        params=None,
        pick_ids=data.active_instance_ids,
        check=data.check_suspended,
        ceiling=lambda dsn, w, chunk, conns, done: references.ceiling_suspend(
            dsn, w.admin_id, chunk, conns, done
        ),
        baseline=lambda sm, w, ids: references.baseline_suspend(sm, w.admin_id, ids),
        concurrent_baseline=lambda sm, w, ids, c: references.concurrent_baseline_suspend(
            sm, w.admin_id, ids, c
        ),
    ),
    OpSpec(
        key="terminate",
        type=TERMINATE,
        who="admin",
        target_filter={"definition_key": data.DEFINITION_KEY, "status": "active"},
        params=data.TERMINATE_PARAMS,
        pick_ids=data.active_instance_ids,
        check=data.check_terminated,
        ceiling=lambda dsn, w, chunk, conns, done: references.ceiling_terminate(
            dsn, w.admin_id, data.TERMINATE_PARAMS["reason"], chunk, conns, done
        ),
    ),
    OpSpec(
        key="set_variables",
        type=SET_VARIABLES,
        who="admin",
        target_filter={"definition_key": data.DEFINITION_KEY},
        params=data.VARIABLES_PARAMS,
        pick_ids=data.active_instance_ids,
        check=data.check_variables,
        ceiling=lambda dsn, w, chunk, conns, done: references.ceiling_set_variables(
            dsn, w.admin_id, data.VARIABLES, data.VARIABLES_MESSAGE, chunk, conns, done
        ),
    ),
)
OPS_BY_KEY = {o.key: o for o in OPS}
OPS_BY_TYPE = {o.type: o for o in OPS}
CONTRACT_OPS = ("approve", "suspend")
"""Their JSON keys are the issue-5 contract (see bench/README.md); others are extras."""
assert set(PHASES + EXTRA_PHASES) >= {o.key for o in OPS} | {f"{o.key}_ids" for o in OPS}


def reference_ops(phases: tuple[str, ...]) -> list[OpSpec]:
    """The types ``baseline`` / ``ceiling`` cover: those whose batch phase (filter or id
    list) runs, or every type when none does (``--phases ceiling``)."""
    chosen = [o for o in OPS if o.key in phases or f"{o.key}_ids" in phases]
    return chosen or list(OPS)


@dataclass
class Measured:
    run: BatchRun
    rss_mb: float
    cpu: CpuUse
    check: str
    profile: Path | None = None
    disturbed: list[str] = field(default_factory=list)
    statements: pgstat.Breakdown | None = None


async def measure_batch(
    pg: Pg,
    op: OpSpec,
    n: int,
    *,
    chunk_size: int | None = None,
    profile: Path | None = None,
    by_ids: bool = False,
    statements: str | None = None,
) -> Measured:
    """One batch on ``n`` fresh rows; with ``statements`` (a name) and
    pg_stat_statements available, the per-statement breakdown of the database's work
    from the POST to the final status is recorded too."""
    world = await pg.fresh(n)
    ids: list[int] | None = None
    if by_ids:
        ids = await op.pick_ids(pg.engine)
    if statements and pg.stats is not None:
        await pg.stats.reset()
    worker = pg.worker
    spy = PySpy(worker.pid, profile) if profile else None
    if spy is not None and not await spy.start():
        log("py-spy not available or could not attach; no profile")
        spy = None
    sampler = RssSampler(worker.pid)
    sampler.start()
    log_at = worker.log_size()
    mark = cpu_mark(worker.pid)
    body = op.body(chunk_size, ids)
    try:
        run = await _watch(
            worker,
            run_batch(
                pg.client,
                body,
                world.headers(op.who),
                limit_s=pg.cfg.timeout,
                poll=pg.cfg.poll,
                progress=log,
            ),
        )
    finally:
        cpu = cpu_since(mark, worker.pid)
        rss = await sampler.stop()
        recorded = await spy.stop() if spy is not None else None
    breakdown = None
    if statements and pg.stats is not None:
        breakdown = await pg.stats.snapshot(statements, run.items)
    check = await op.check(pg.engine, n)
    problem = run.problem()
    if problem is not None:
        check = problem if run.timed_out else f"{problem}; {check}"
    return Measured(run, rss, cpu, check, recorded, worker.disturbances(log_at), breakdown)


async def _watch(worker: Worker, work: Awaitable[T]) -> T:
    """Fail fast if the worker dies while we wait for a batch."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=1)
            if not worker.alive() and not task.done():
                raise RuntimeError(f"the worker died:\n{worker.log_tail()}")
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# --------------------------------------------------------------------------- phases


async def phase_batchd(
    pg: Pg,
    res: Results,
    op: OpSpec,
    restart: Callable[[str], Awaitable[None]],
    *,
    by_ids: bool = False,
) -> None:
    key = op.key + ("_ids" if by_ids else "")
    await restart(key)
    profile = pg.cfg.profile_dir / f"{key}.raw.txt" if pg.cfg.profile_dir else None
    m = await measure_batch(
        pg,
        op,
        pg.cfg.items,
        profile=profile,
        by_ids=by_ids,
        statements=f"batchd {op.type}" if op.key == "approve" and not by_ids else None,
    )
    if m.statements is not None:
        res.statements[key] = m.statements
    notes = (
        f"POST {m.run.post_latency_s * 1000:.0f} ms; worker peak RSS {m.rss_mb:.0f} MB; "
        f"{cpu_note(m.cpu)}"
    )
    if m.disturbed:
        notes += "\n    DISTURBED (worker log): " + ", ".join(m.disturbed)
        res.disturbed.append(key)
    kind = "id-list batch" if by_ids else "filter batch"
    res.add(
        key, Row(f"batchd {op.type} ({kind}, PG)", m.run.items, m.run.end_to_end_s, m.check, notes)
    )
    res.metrics[f"{key}_create_latency_s"] = m.run.post_latency_s
    res.metrics[f"{key}_worker_peak_rss_mb"] = m.rss_mb
    if m.profile is not None:
        res.profiles.append(read_raw(m.profile).format(f"py-spy {op.type} ({m.profile})", "worker"))


async def phase_scale(pg: Pg, res: Results, restart: Callable[[str], Awaitable[None]]) -> None:
    """``task.approve`` over ``BENCH_SCALE_ITEMS`` rows against a real ``batchd serve``
    subprocess, with idle/busy API latency, the first applied item and an SSE subscriber
    (bench/scale.py)."""
    await restart("scale")
    n = pg.cfg.scale_items
    op = OPS_BY_KEY["approve"]
    world = await pg.fresh(n)
    last_task = await data.scalar(pg.engine, "SELECT coalesce(max(id), 0) FROM tasks")
    idle_batch = await scale.finished_batch(pg.sm, world.manager_id)
    headers = world.headers(op.who)

    async def db_status(batch_id: int) -> str:
        async with pg.engine.connect() as conn:
            value = (
                await conn.execute(
                    sql_text("SELECT status FROM batches WHERE id = :id"), {"id": batch_id}
                )
            ).scalar_one()
        return str(value)

    server = Server(pg.cfg, pg.cfg.out_dir / "scale-serve.log")
    await server.start()
    assert server.proc is not None
    server_pid = server.proc.pid
    log(f"scale: batchd serve (uvicorn) on port {server.port}, pid {server_pid}")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            log(
                f"scale: sampling the idle API ({pg.cfg.api_samples} requests per endpoint "
                f"or {pg.cfg.api_idle_s:.0f}s)"
            )
            idle = await scale.sample_idle(pg.cfg, http, idle_batch, headers)
            worker = pg.worker
            sampler = RssSampler(worker.pid)
            sampler.start()
            log_at = worker.log_size()
            mark = cpu_mark(worker.pid)
            serve_cpu0 = cpu_seconds(server_pid) or 0.0
            if pg.stats is not None:
                await pg.stats.reset()
            limit = pg.cfg.timeout * max(1.0, n / max(pg.cfg.items, 1))
            try:
                run = await _watch(
                    worker,
                    scale.run_scale_batch(
                        pg.cfg,
                        http,
                        db_status,
                        op.body(),
                        headers,
                        last_task_id=last_task,
                        limit_s=limit,
                        progress=log,
                    ),
                )
            finally:
                cpu = cpu_since(mark, worker.pid)
                serve_cpu = (cpu_seconds(server_pid) or 0.0) - serve_cpu0
                if cpu.machine is not None:  # the server is not "other processes"
                    cpu = dataclasses.replace(cpu, machine=cpu.machine - serve_cpu)
                rss = await sampler.stop()
            run.idle = idle
            if pg.stats is not None:
                res.statements["scale"] = await pg.stats.snapshot(
                    f"batchd {op.type} scale, API sampled alongside", run.items
                )
    finally:
        await server.stop()
    disturbed = worker.disturbances(log_at)
    check = await op.check(pg.engine, n)
    b = run.batch
    if run.timed_out:
        check = f"TIMEOUT: {run.items} of {b.get('total')} done, then cancelled"
    elif b.get("status") != "completed" or b.get("success") != b.get("total"):
        check = (
            f"BATCH {b.get('status')}: success={b.get('success')} total={b.get('total')}; {check}"
        )
    first = f"{run.first_item_s * 1000:.0f} ms" if run.first_item_s is not None else "never seen"
    sse = run.sse_per_s
    lines = [
        f"POST {run.post_latency_s * 1000:.0f} ms (real HTTP); first item applied after {first}; "
        f"worker peak RSS {rss:.0f} MB; SSE {run.sse_events} progress events"
        + (f" = {sse:.1f}/s" if sse is not None else ""),
        f"API idle: GET /batches/{{id}} {run.idle['batch'].describe()}; "
        f"GET /tasks {run.idle['tasks'].describe()}",
        f"API busy: GET /batches/{{id}} {run.busy['batch'].describe()}; "
        f"GET /tasks {run.busy['tasks'].describe()}",
        cpu_note(cpu) + f", batchd serve {cpu.share(serve_cpu)}",
    ]
    few = [
        f"{name} {which}"
        for which, sampled in (("idle", run.idle), ("busy", run.busy))
        for name, lat in sampled.items()
        if len(lat.samples) < 500
    ]
    if few:
        lines.append(
            f"fewer than 500 samples for {', '.join(few)}: a rough p99 (a slow endpoint "
            "answers fewer; BENCH_API_IDLE_S, a longer batch or BENCH_API_CLIENTS give more)"
        )
    if disturbed:
        lines.append("DISTURBED (worker log): " + ", ".join(disturbed))
        res.disturbed.append("scale")
    res.add(
        "scale",
        Row(
            f"batchd {op.type} scale (filter batch, PG, real HTTP)",
            run.items,
            run.seconds,
            check,
            "\n    ".join(lines),
        ),
    )
    m = res.metrics
    m["scale_items"] = n
    m["scale_post_latency_ms"] = round(run.post_latency_s * 1000, 1)
    m["scale_first_item_ms"] = (
        round(run.first_item_s * 1000, 1) if run.first_item_s is not None else None
    )
    m["scale_worker_rss_mb"] = round(rss, 1)
    m["api_p99_idle_ms"] = run.p99_ms(run.idle)
    m["api_p99_busy_ms"] = run.p99_ms(run.busy)
    for name in ("batch", "tasks"):
        for which, lat in (("idle", run.idle[name]), ("busy", run.busy[name])):
            p99 = lat.p(0.99)
            m[f"api_{name}_p99_{which}_ms"] = round(p99 * 1000, 2) if p99 is not None else None
            m[f"api_{name}_samples_{which}"] = len(lat.samples)
    m["sse_events_per_s"] = round(sse, 2) if sse is not None else None


async def phase_baseline(pg: Pg, res: Results) -> None:
    n, sample = pg.cfg.items, min(pg.cfg.baseline_items, pg.cfg.items)
    for op in reference_ops(pg.cfg.phases):
        if op.baseline is None:
            continue
        world = await pg.fresh(n)
        ids = await op.pick_ids(pg.engine, sample)
        mark = cpu_mark(None)
        seconds = await op.baseline(pg.sm, world, ids)
        check = await op.check(pg.engine, len(ids))
        res.add(
            f"baseline_{op.key}",
            Row(
                f"baseline {op.type} (1 item/tx, engine code)",
                len(ids),
                seconds,
                check,
                cpu_note(cpu_since(mark, None)),
            ),
        )
        if op.concurrent_baseline is None:
            continue
        # The PHP model: the same per-item transactions plus the detail row and the batch
        # counters, BATCH_MAX_CONCURRENCY at a time on one pool of that many connections.
        world = await pg.fresh(n)
        ids = await op.pick_ids(pg.engine, sample)
        cap = pg.settings.max_concurrency
        engine = create_engine(pg.cfg.database_url, pool_size=cap, name="bench-baseline")
        try:
            mark = cpu_mark(None)
            seconds = await op.concurrent_baseline(create_sessionmaker(engine), world, ids, cap)
            cpu = cpu_since(mark, None)
        finally:
            await engine.dispose()
        check = await op.check(pg.engine, len(ids))
        res.add(
            f"baseline_concurrent_{op.key}",
            Row(
                f"baseline {op.type} (PHP model, {cap} concurrent tx)",
                len(ids),
                seconds,
                check,
                cpu_note(cpu),
            ),
        )
        if op.key != "approve":
            continue
        # The same PHP model on raw asyncpg: the approve ceiling's statement for one task,
        # its detail row and the counter update per transaction, no framework at all.
        world = await pg.fresh(n)
        ids = await op.pick_ids(pg.engine, sample)
        mark = cpu_mark(None)
        used: list[CpuUse] = []

        def measured(mark: CpuMark = mark, used: list[CpuUse] = used) -> None:
            used.append(cpu_since(mark, None))

        seconds = await references.raw_concurrent_baseline_approve(
            pg.cfg.asyncpg_dsn(),
            pg.sm,
            world.manager_id,
            world.finance_id,
            ids,
            cap,
            measured,
        )
        cpu = used[0] if used else cpu_since(mark, None)
        check = await op.check(pg.engine, len(ids))
        res.add(
            "baseline_raw_concurrent_approve",
            Row(
                f"baseline {op.type} (raw asyncpg, {cap} concurrent tx)",
                len(ids),
                seconds,
                check,
                cpu_note(cpu),
            ),
        )


async def phase_ceiling(pg: Pg, res: Results, ops: list[OpSpec]) -> None:
    n = pg.cfg.items
    dsn = pg.cfg.asyncpg_dsn()
    parallel = max(1, min(pg.settings.jobs_per_batch, pg.settings.max_concurrency))
    for op in ops:
        chunk = pg.settings.for_type(op.type).chunk_size or 100
        for conns in sorted({1, parallel}):
            world = await pg.fresh(n)
            mark = cpu_mark(None)
            used: list[CpuUse] = []

            def measured(mark: CpuMark = mark, used: list[CpuUse] = used) -> None:
                used.append(cpu_since(mark, None))

            if op.key == "approve" and pg.stats is not None:
                await pg.stats.reset()
            seconds = await op.ceiling(dsn, world, chunk, conns, measured)
            if op.key == "approve" and pg.stats is not None:
                res.statements[f"ceiling_{op.key}_{conns}"] = await pg.stats.snapshot(
                    f"ceiling {op.type} ({conns} conn)", n
                )
            check = await op.check(pg.engine, n)
            res.add(
                f"ceiling_{op.key}_{conns}",
                Row(
                    f"ceiling {op.type} (raw SQL, chunk {chunk}, {conns} conn)",
                    n,
                    seconds,
                    check,
                    cpu_note(used[0]) if used else "",
                ),
            )


async def phase_sqlite(cfg: BenchConfig, res: Results) -> None:
    n = cfg.sqlite_items
    with tempfile.TemporaryDirectory(prefix="batchd-bench-") as tmp:
        settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp}/bench.db", redis_url=None)
        async with running_api(settings) as api:
            engine: AsyncEngine = api.app.state.engine
            world = await data.make_world(api.app.state.sessionmaker, api.client)
            await data.seed(engine, world, n)
            tune_for_batches()  # as `batchd serve` does once it has started
            spy = None
            if cfg.profile_dir is not None:
                spy = PySpy(os.getpid(), cfg.profile_dir / "sqlite.raw.txt")
            if spy is not None and not await spy.start():
                spy = None
            sampler = RssSampler(os.getpid())
            sampler.start()
            mark = cpu_mark(None)
            run = await run_batch(
                api.client,
                OPS_BY_KEY["approve"].body(),
                world.headers(OPS_BY_KEY["approve"].who),
                limit_s=cfg.timeout,
                poll=cfg.poll,
                progress=log,
            )
            cpu = cpu_since(mark, None)
            rss = await sampler.stop()
            recorded = await spy.stop() if spy is not None else None
            if recorded is not None:
                res.profiles.append(
                    read_raw(recorded).format(f"py-spy embedded {APPROVE} ({recorded})", "process")
                )
            check = await data.check_approved(engine, n)
            problem = run.problem()
            if problem is not None:
                check = problem if run.timed_out else f"{problem}; {check}"
    res.add(
        "sqlite",
        Row(
            f"embedded {APPROVE} (SQLite + in-process runner)",
            run.items,
            run.end_to_end_s,
            check,
            f"POST {run.post_latency_s * 1000:.0f} ms; process peak RSS {rss:.0f} MB; "
            f"CPU (cores busy): process {cpu.share(cpu.bench)}, "
            f"other processes {cpu.share(cpu.others)}",
        ),
    )


# --------------------------------------------------------------------------- harness


@dataclass
class Harness:
    cfg: BenchConfig
    settings: Settings
    engine: AsyncEngine | None = None
    worker: Worker | None = None
    trace_files: list[tuple[str, Path]] = field(default_factory=list)

    async def __aenter__(self) -> Harness:
        count_postgres_database(self.cfg.database_name)
        await infra.create_database(self.cfg)
        await infra.flush_redis(self.cfg.redis_url)
        self.engine = create_engine(self.cfg.database_url, pool_size=4)
        await upgrade_to_head(self.engine)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.worker is not None:
                await self.worker.stop()
        finally:
            if self.engine is not None:
                await self.engine.dispose()
            await infra.flush_redis(self.cfg.redis_url)
            await infra.drop_database(self.cfg)
            log("bench database dropped, Redis db flushed")

    async def start_worker(self, name: str, overrides: dict[str, str] | None = None) -> Worker:
        if self.worker is not None:
            await self.worker.stop()
        trace = self.cfg.out_dir / f"sqltrace-{name}.json" if self.cfg.trace_sql else None
        self.worker = Worker(
            self.cfg.database_url,
            self.cfg.redis_url,
            self.cfg.out_dir / f"worker-{name}.log",
            overrides,
            trace_sql=trace,
        )
        await self.worker.start()
        if trace is not None:
            self.trace_files.append((name, trace))
        log(f"worker {name} started (pid {self.worker.pid})")
        return self.worker


async def main_run(cfg: BenchConfig) -> Results:
    settings = Settings(database_url=cfg.database_url, redis_url=cfg.redis_url)
    res = Results()
    pg_phases = [p for p in cfg.phases if p != "sqlite"]
    if pg_phases:
        async with Harness(cfg, settings) as h, running_api(settings) as api:
            assert h.engine is not None
            worker = await h.start_worker("main")
            pg = Pg(cfg, settings, h.engine, create_sessionmaker(h.engine), api.client, worker)
            pg.stats = await pgstat.Statements.open(cfg.asyncpg_dsn())
            log(
                "pg_stat_statements: "
                + ("on" if pg.stats else "not loaded by this server (BENCH_PG_STATEMENTS=1)")
            )

            async def restart(name: str) -> None:
                # With the SQL trace, one worker per measurement (one trace file each).
                if cfg.trace_sql:
                    pg.worker = await h.start_worker(name)

            # Each type's ceiling runs right after its batch, with the worker stopped, so
            # the two see the box in the same minute: this box's speed drifts by 20-30 %
            # over the minutes between the first batch and the last ceiling.
            paired = "ceiling" in cfg.phases and not cfg.trace_sql
            for op in OPS:
                if op.key in cfg.phases:
                    await phase_batchd(pg, res, op, restart)
                    if paired:
                        await pg.worker.stop()
                        await phase_ceiling(pg, res, [op])
                        pg.worker = await h.start_worker(f"main-after-{op.key}")
            for op in OPS:
                if f"{op.key}_ids" in cfg.phases:
                    await phase_batchd(pg, res, op, restart, by_ids=True)
            if "scale" in cfg.phases:
                await phase_scale(pg, res, restart)
            if pg.worker is not None:
                await pg.worker.stop()  # references run without a busy neighbour
            if "baseline" in cfg.phases:
                await phase_baseline(pg, res)
            if "ceiling" in cfg.phases:
                done = {o.key for o in OPS if paired and o.key in cfg.phases}
                await phase_ceiling(
                    pg, res, [o for o in reference_ops(cfg.phases) if o.key not in done]
                )
            trace_files = list(h.trace_files)
        for name, path in trace_files:
            if path.exists() and name != "main":
                res.profiles.append(format_trace(name, path))
    if "sqlite" in cfg.phases:
        await phase_sqlite(cfg, res)
    return res


def format_trace(name: str, path: Path, n: int = 16) -> str:
    rows: list[dict[str, Any]] = json.loads(path.read_text())
    steps = [r for r in rows if str(r["statement"]).startswith("[fn]")]
    rows = [r for r in rows if not str(r["statement"]).startswith("[fn]")]
    total = sum(float(r["seconds"]) for r in rows) or 1.0
    lines = [
        f"worker during {name} ({path}): wall time incl. event-loop waits; % of all SQL time",
        "  steps:",
    ]
    for r in steps:
        calls = int(r["calls"])
        lines.append(
            f"    {float(r['seconds']):7.2f}s  {calls:6d} calls  "
            f"{1000 * float(r['seconds']) / max(calls, 1):7.2f} ms/call  "
            f"{str(r['statement'])[5:]}"
        )
    lines.append("  SQL:")
    for r in rows[:n]:
        calls = int(r["calls"])
        lines.append(
            f"  {100 * float(r['seconds']) / total:5.1f}%  {float(r['seconds']):7.2f}s  "
            f"{calls:6d} calls  {1000 * float(r['seconds']) / max(calls, 1):7.2f} ms/call  "
            f"{int(r['params']):8d} param sets  {str(r['statement'])[:150]}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- report

TARGETS = [
    # (label, metric, comparison, bound, relative-to)
    ("instance.suspend ≥ 30 000 items/s", "suspend_items_per_s", ">=", 30_000.0, None),
    ("task.approve ≥ 10 000 items/s", "approve_items_per_s", ">=", 10_000.0, None),
    (
        "task.approve ≥ 0.75 × ceiling",
        "approve_items_per_s",
        ">=",
        0.75,
        "ceiling_approve_items_per_s",
    ),
    *(
        (
            f"{o.type} ≥ 0.85 × ceiling",
            f"{o.key}_items_per_s",
            ">=",
            0.85,
            f"ceiling_{o.key}_items_per_s",
        )
        for o in OPS
        if o.key != "approve"
    ),
    (
        "task.approve ≥ 10 × baseline",
        "approve_items_per_s",
        ">=",
        10.0,
        "baseline_approve_items_per_s",
    ),
    (
        "task.approve ≥ 10 × concurrent baseline (engine code)",
        "approve_items_per_s",
        ">=",
        10.0,
        "baseline_concurrent_approve_items_per_s",
    ),
    (
        "task.approve ≥ 5 × raw concurrent baseline",
        "approve_items_per_s",
        ">=",
        5.0,
        "baseline_raw_concurrent_approve_items_per_s",
    ),
    ("POST latency (filter batch) < 200 ms", "create_latency_s", "<", 0.2, None),
    ("worker peak RSS < 300 MB", "worker_peak_rss_mb", "<", 300.0, None),
    (
        "scale: items/s ≥ 0.9 × the approve rate",
        "scale_items_per_s",
        ">=",
        0.9,
        "approve_items_per_s",
    ),
    ("scale: POST latency < 200 ms", "scale_post_latency_ms", "<", 200.0, None),
    ("scale: worker peak RSS < 200 MB", "scale_worker_rss_mb", "<", 200.0, None),
    ("scale: first item applied < 300 ms", "scale_first_item_ms", "<", 300.0, None),
    ("scale: API p99 busy ≤ 3 × idle", "api_p99_busy_ms", "<=", 3.0, "api_p99_idle_ms"),
    ("scale: SSE progress events ≥ 5/s", "sse_events_per_s", ">=", 5.0, None),
    (
        "embedded SQLite task.approve ≥ 15 000 items/s",
        "sqlite_approve_items_per_s",
        ">=",
        15_000.0,
        None,
    ),
]


def summary(
    cfg: BenchConfig, settings: Settings, res: Results, code: str | None = None
) -> dict[str, Any]:
    def best(*keys: str) -> float | None:
        rates = [r for k in keys if (r := res.rate(k)) is not None]
        return max(rates) if rates else None

    def ceiling(op: str) -> float | None:
        return best(*(k for k in res.rows if k.rsplit("_", 1)[0] == f"ceiling_{op}"))

    def db_us(prefix: str) -> float | None:
        """PostgreSQL execution time per item (pg_stat_statements); for the ceiling the
        run with the least."""
        values = [
            b.us_per_item
            for k, b in res.statements.items()
            if k == prefix or k.rsplit("_", 1)[0] == prefix
        ]
        return round(min(values), 1) if values else None

    latencies = [
        v
        for k in ("approve_create_latency_s", "suspend_create_latency_s")
        if (v := res.metrics.get(k)) is not None
    ]
    rss = [
        v
        for k in ("approve_worker_peak_rss_mb", "suspend_worker_peak_rss_mb")
        if (v := res.metrics.get(k)) is not None
    ]
    return {
        "bench": "batchd",
        "items": cfg.items,
        "approve_items_per_s": res.rate("approve"),
        "suspend_items_per_s": res.rate("suspend"),
        "baseline_approve_items_per_s": res.rate("baseline_approve"),
        "ceiling_suspend_items_per_s": ceiling("suspend"),
        "create_latency_s": round(max(latencies), 4) if latencies else None,
        "worker_peak_rss_mb": round(max(rss), 1) if rss else None,
        "sqlite_approve_items_per_s": res.rate("sqlite"),
        # Extras (not part of the contract, handy for tuning):
        "baseline_suspend_items_per_s": res.rate("baseline_suspend"),
        "baseline_concurrent_approve_items_per_s": res.rate("baseline_concurrent_approve"),
        "baseline_concurrent_suspend_items_per_s": res.rate("baseline_concurrent_suspend"),
        "ceiling_approve_items_per_s": ceiling("approve"),
        **{
            name: value
            for o in OPS
            if o.key not in CONTRACT_OPS
            for name, value in (
                (f"{o.key}_items_per_s", res.rate(o.key)),
                (f"ceiling_{o.key}_items_per_s", ceiling(o.key)),
            )
        },
        "sqlite_items": cfg.sqlite_items if "sqlite" in res.rows else None,
        "scale_items": res.metrics.get("scale_items"),
        "scale_items_per_s": res.rate("scale"),
        "scale_first_item_ms": res.metrics.get("scale_first_item_ms"),
        "scale_worker_rss_mb": res.metrics.get("scale_worker_rss_mb"),
        "scale_post_latency_ms": res.metrics.get("scale_post_latency_ms"),
        "api_p99_idle_ms": res.metrics.get("api_p99_idle_ms"),
        "api_p99_busy_ms": res.metrics.get("api_p99_busy_ms"),
        **{
            k: res.metrics.get(k)
            for name in ("batch", "tasks")
            for which in ("idle", "busy")
            for k in (f"api_{name}_p99_{which}_ms", f"api_{name}_samples_{which}")
        },
        "sse_events_per_s": res.metrics.get("sse_events_per_s"),
        "baseline_raw_concurrent_approve_items_per_s": res.rate("baseline_raw_concurrent_approve"),
        "approve_db_us_per_item": db_us("approve"),
        "ceiling_approve_db_us_per_item": db_us("ceiling_approve"),
        "chunk_size": settings.chunk_size,
        "jobs_per_batch": settings.jobs_per_batch,
        "max_concurrency": settings.max_concurrency,
        "timed_out": [k for k, r in res.rows.items() if r.check.startswith("TIMEOUT")],
        "disturbed": res.disturbed,
        "code": code or code_version(),
        "all_checks_ok": all(
            r.check == "ok" or r.check.startswith("TIMEOUT") for r in res.rows.values()
        ),
    }


def code_version() -> str:
    """The commit measured, and whether app code differed from it (read-only git)."""
    import subprocess

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


def render(cfg: BenchConfig, settings: Settings, res: Results, out: dict[str, Any]) -> str:
    lines = [
        "",
        f"batchd bench @ {out.get('code', 'unknown')} — {cfg.items} items, "
        f"chunk_size {settings.chunk_size}, "
        f"jobs_per_batch {settings.jobs_per_batch}, max_concurrency {settings.max_concurrency}, "
        f"{os.cpu_count()} CPUs",
        "",
        f"{'measurement':<58} {'items':>8} {'seconds':>8} {'items/s':>10}  check",
        "-" * 100,
    ]
    for row in res.rows.values():
        lines.append(
            f"{row.name:<58} {row.items:>8} {row.seconds:>8.2f} {row.items_per_s:>10,.0f}  "
            f"{row.check}"
        )
        if row.notes:
            lines.append(f"{'':<4}{row.notes}")
    lines += ["", "targets:"]
    for label, metric, cmp, bound, rel in TARGETS:
        value = out.get(metric)
        ref = out.get(rel) if rel else 1.0
        if value is None or ref is None:
            lines.append(f"  {'n/a':<5} {label}")
            continue
        limit = bound * float(ref)
        ok = value >= limit if cmp == ">=" else value <= limit if cmp == "<=" else value < limit
        number = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"
        shown = number + (f" vs {limit:,.0f} ({value / float(ref):.2f}×)" if rel else "")
        lines.append(f"  {'PASS' if ok else 'FAIL':<5} {label}: {shown}")
    for breakdown in res.statements.values():
        lines += ["", breakdown.format()]
    ceilings = {k: b for k, b in res.statements.items() if k.startswith("ceiling_approve")}
    if "approve" in res.statements and ceilings:
        batchd = res.statements["approve"]
        lines += [
            "",
            "PostgreSQL execution time per item, batchd vs its ceiling (summed over backends, so "
            "concurrent connections add their lock and CPU waits; a COMMIT's WAL flush is not "
            "in it; BATCH_JOBS_PER_BATCH=1 gives the cleanest comparison with the 1-conn "
            "ceiling):",
        ]
        for c in ceilings.values():
            n_b, n_c = max(batchd.items, 1), max(c.items, 1)
            lines.append(
                f"  batchd {batchd.us_per_item:.1f} µs vs {c.name} {c.us_per_item:.1f} µs "
                f"({batchd.us_per_item - c.us_per_item:+.1f} µs/item); WAL "
                f"{batchd.total('wal_bytes') / n_b:.0f} vs "
                f"{c.total('wal_bytes') / n_c:.0f} B/item; "
                f"statements {sum(s.calls for s in batchd.statements) / n_b:.3f} vs "
                f"{sum(s.calls for s in c.statements) / n_c:.3f} per item"
            )
    for text in res.profiles:
        lines += ["", text]
    return "\n".join(lines)


# --------------------------------------------------------------------------- sweep


async def sweep(cfg: BenchConfig) -> list[dict[str, Any]]:
    settings = Settings(database_url=cfg.database_url, redis_url=cfg.redis_url)
    results: list[dict[str, Any]] = []
    async with Harness(cfg, settings) as h, running_api(settings) as api:
        assert h.engine is not None
        for jobs in cfg.sweep_jobs:
            worker = await h.start_worker(f"sweep-jobs{jobs}", {"BATCH_JOBS_PER_BATCH": str(jobs)})
            pg = Pg(cfg, settings, h.engine, create_sessionmaker(h.engine), api.client, worker)
            for op in cfg.sweep_types:
                for chunk in cfg.sweep_chunks:
                    m = await measure_batch(
                        pg,
                        OPS_BY_TYPE[op],
                        cfg.sweep_items,
                        chunk_size=chunk,
                        by_ids=cfg.sweep_mode == "ids",
                    )
                    entry = {
                        "type": op,
                        "mode": cfg.sweep_mode,
                        "chunk_size": chunk,
                        "jobs_per_batch": jobs,
                        "items": m.run.items,
                        "seconds": round(m.run.end_to_end_s, 3),
                        "items_per_s": round(m.run.items_per_s, 1),
                        "post_latency_s": round(m.run.post_latency_s, 4),
                        "worker_peak_rss_mb": round(m.rss_mb, 1),
                        "worker_cpu": m.cpu.share(m.cpu.worker),
                        "postgres_cpu": m.cpu.share(m.cpu.postgres),
                        "other_cpu": m.cpu.share(m.cpu.others),
                        "check": m.check,
                        "disturbed": m.disturbed,
                    }
                    log(f"sweep {entry}")
                    results.append(entry)
    return results


def render_sweep(cfg: BenchConfig, results: list[dict[str, Any]]) -> str:
    lines = [""]
    for op in cfg.sweep_types:
        lines.append(
            f"sweep {op} ({cfg.sweep_mode} batches), {cfg.sweep_items} items: items/s "
            "(worker peak RSS MB; worker/postgres cores busy; ! = timeout, bad check or "
            "disturbed)"
        )
        head = f"{'chunk_size':>10} | " + " | ".join(
            f"{'jobs_per_batch=' + str(j):^30}" for j in cfg.sweep_jobs
        )
        lines += [head, "-" * len(head)]
        for chunk in cfg.sweep_chunks:
            cells = []
            for jobs in cfg.sweep_jobs:
                e = next(
                    (
                        r
                        for r in results
                        if r["type"] == op
                        and r["chunk_size"] == chunk
                        and r["jobs_per_batch"] == jobs
                    ),
                    None,
                )
                cells.append(
                    f"{e['items_per_s']:>8,.0f} ({e['worker_peak_rss_mb']:.0f}; "
                    f"{e['worker_cpu']}/{e['postgres_cpu']})" + ("" if e["check"] == "ok" else " !")
                    if e
                    else "-"
                )
            lines.append(f"{chunk:>10} | " + " | ".join(f"{c:^30}" for c in cells))
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument(
        "--sweep",
        action="store_true",
        help="chunk size × jobs per batch sweep instead of the main run (also BENCH_SWEEP=1)",
    )
    p.add_argument("--items", type=int, help="overrides BENCH_ITEMS")
    p.add_argument(
        "--phases",
        help=f"comma list out of {','.join(PHASES)} (default: all of those; also "
        f"{','.join(EXTRA_PHASES)}); baseline/ceiling cover the types whose batch phase "
        "runs, or all types when none does",
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="record the worker with py-spy during approve/suspend (BENCH_PROFILE)",
    )
    p.add_argument(
        "--trace-sql",
        action="store_true",
        help="time every SQL statement in the worker (BENCH_TRACE_SQL=1)",
    )
    return p.parse_args(argv)


def configure(args: argparse.Namespace) -> BenchConfig:
    cfg = BenchConfig.from_env()
    changes: dict[str, Any] = {}
    if args.items:
        changes.update(
            items=args.items,
            sqlite_items=int(os.environ.get("BENCH_SQLITE_ITEMS") or min(args.items, 20_000)),
            baseline_items=int(os.environ.get("BENCH_BASELINE_ITEMS") or min(args.items, 5_000)),
            sweep_items=int(os.environ.get("BENCH_SWEEP_ITEMS") or min(args.items, 20_000)),
        )
    if args.phases:
        changes["phases"] = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    if args.profile is not None:
        changes["profile_dir"] = Path(args.profile) if args.profile else cfg.out_dir / "profile"
    if args.trace_sql:
        changes["trace_sql"] = True
    cfg = dataclasses.replace(cfg, **changes)
    unknown = [p for p in cfg.phases if p not in PHASES + EXTRA_PHASES]
    if unknown:
        raise SystemExit(f"unknown phase(s) {', '.join(unknown)}; known: {PHASES + EXTRA_PHASES}")
    bad_types = [t for t in cfg.sweep_types if t not in OPS_BY_TYPE]
    if bad_types:
        raise SystemExit(f"unknown BENCH_SWEEP_TYPES {bad_types}; known: {list(OPS_BY_TYPE)}")
    return cfg


async def amain(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = configure(args)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.profile_dir is not None and find_py_spy() is None:
        log("BENCH_PROFILE set but py-spy is not installed (pip install py-spy); no profile")
    settings = Settings(database_url=cfg.database_url, redis_url=cfg.redis_url)
    if args.sweep or os.environ.get("BENCH_SWEEP", "").strip() not in ("", "0"):
        results = await sweep(cfg)
        print(render_sweep(cfg, results))
        print(json.dumps({"bench": "batchd-sweep", "items": cfg.sweep_items, "runs": results}))
        return 0
    t0 = time.perf_counter()
    code = code_version()  # what the worker and the API load now, at start-up
    if cfg.pg_statements:
        async with pgstat.own_cluster(cfg.asyncpg_dsn("postgres")) as (port, note):
            url = cfg.url.set(host="127.0.0.1", port=port)
            cfg = dataclasses.replace(cfg, database_url=url.render_as_string(hide_password=False))
            log(f"own PostgreSQL 15 cluster on port {port} with pg_stat_statements ({note})")
            res = await main_run(cfg)
    else:
        res = await main_run(cfg)
    if (later := code_version()) != code:
        code += f" (tree changed during the run: now {later})"
    out = summary(cfg, settings, res, code)
    print(render(cfg, settings, res, out))
    print(f"\n(total bench time {time.perf_counter() - t0:.0f}s; logs in {cfg.out_dir})")
    print(json.dumps(out))
    return 0 if out["all_checks_ok"] else 1


async def _main_with_signals() -> int:
    """SIGTERM (e.g. from ``timeout``) cancels the run like Ctrl-C does, so the worker
    is stopped and the database dropped on the way out."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await amain()
    except asyncio.CancelledError:
        log("interrupted; cleaned up")
        return 130


def main() -> None:
    sys.exit(asyncio.run(_main_with_signals()))


if __name__ == "__main__":
    main()
