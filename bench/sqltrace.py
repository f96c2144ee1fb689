"""``python -m bench.sqltrace``: the worker (exactly ``python -m workers``) with
timers; on exit it writes to ``$BENCH_SQLTRACE_OUT`` (JSON), per normalised SQL
statement, how often it ran, its wall time (round trip + waiting for the event loop,
so run it with ``BATCH_JOBS_PER_BATCH=1`` for clean numbers) and its parameter sets;
plus ``COMMIT`` and, as ``[fn] …`` rows, the executor / seeding steps (wrapped here, in
this process only — app code is not changed). Only used with ``BENCH_TRACE_SQL=1``."""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

STATS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0, 0])  # calls, s, rows, params
_PARAMS = re.compile(r"\$\d+(?:::[A-Z_\[\]]+)?(?:\s*,\s*\$\d+(?:::[A-Z_\[\]]+)?)+")
_VALUES = re.compile(r"(VALUES \([^)]*\))(?:, \([^)]*\))+")
_SPACE = re.compile(r"\s+")


def normalise(statement: str) -> str:
    s = _SPACE.sub(" ", statement).strip()
    s = _VALUES.sub(r"\1, …", s)
    s = _PARAMS.sub("$…", s)
    return s[:400]


@event.listens_for(Engine, "before_cursor_execute")
def _before(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    conn.info.setdefault("bench_t0", []).append(time.perf_counter())


@event.listens_for(Engine, "after_cursor_execute")
def _after(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    elapsed = time.perf_counter() - conn.info["bench_t0"].pop()
    row = STATS[("MANY " if executemany else "") + normalise(statement)]
    row[0] += 1
    row[1] += elapsed
    rowcount = getattr(cursor, "rowcount", -1)
    row[2] += rowcount if isinstance(rowcount, int) and rowcount > 0 else 0
    row[3] += len(parameters) if executemany and isinstance(parameters, list) else 1


def _record(key: str, elapsed: float) -> None:
    row = STATS[key]
    row[0] += 1
    row[1] += elapsed
    row[3] += 1


def _timed_sync(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _record(key, time.perf_counter() - t0)

    return wrapper


def _timed_async(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            _record(key, time.perf_counter() - t0)

    return wrapper


# (module, attribute path): the steps worth timing; missing ones are skipped, so the
# tracer keeps working while the app's internals change.
STEPS = [
    ("app.batches.executor", "claim_chunk"),
    ("app.batches.executor", "run_chunk"),
    ("app.batches.executor", "_apply"),
    ("app.batches.executor", "_record"),
    ("app.batches.seeding", "seed_page"),
    ("app.batches.details", "create_details"),
    ("app.batches.monitor", "finalize_if_done"),
    ("app.operations.tasks", "ApproveTasks.apply"),
    ("app.operations.instances", "InstanceTransition.apply"),
    ("app.workflow.approval", "_Plan.write"),
    ("app.runtime.progress", "RedisProgressBus.publish"),
    ("app.runtime.arq_backend", "ArqQueue.enqueue"),
]


def install_step_timers() -> None:
    from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

    conn_cls = pg_asyncpg.AsyncAdapt_asyncpg_connection
    conn_cls.commit = _timed_sync("COMMIT", conn_cls.commit)  # type: ignore[method-assign]
    for module_name, path in STEPS:
        try:
            owner: Any = importlib.import_module(module_name)
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            fn = getattr(owner, name)
        except (ImportError, AttributeError):
            continue
        if asyncio.iscoroutinefunction(fn):
            setattr(owner, name, _timed_async(f"[fn] {module_name}.{path}", fn))


def dump(path: str) -> None:
    ordered = sorted(STATS.items(), key=lambda kv: -kv[1][1])
    rows = [
        {"statement": k, "calls": int(v[0]), "seconds": v[1], "rows": int(v[2]), "params": v[3]}
        for k, v in ordered
    ]
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)


def main() -> None:
    from app.config import get_settings
    from workers.arq_worker import run_forever

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_step_timers()
    try:
        asyncio.run(run_forever(get_settings()))
    finally:
        out = os.environ.get("BENCH_SQLTRACE_OUT")
        if out:
            dump(out)


if __name__ == "__main__":
    main()
