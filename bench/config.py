"""Benchmark settings from the environment (``BENCH_*``); ``BATCH_*`` tuning variables
are passed through untouched to the API settings and the worker process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/batchd_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
PHASES = (
    "approve",
    "suspend",
    "terminate",
    "set_variables",
    "scale",
    "baseline",
    "ceiling",
    "sqlite",
)
EXTRA_PHASES = ("approve_ids", "suspend_ids", "terminate_ids", "set_variables_ids")
"""Not run by default: the same batches created from an id list (details and locks are
written by the POST itself, so execution never waits for seeding)."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw.replace("_", "")) if raw else default


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _ints(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    return tuple(int(p) for p in raw.replace(" ", ",").split(",") if p)


def _words(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    return tuple(p for p in raw.replace(" ", ",").split(",") if p)


@dataclass(frozen=True)
class BenchConfig:
    database_url: str
    redis_url: str
    items: int
    sqlite_items: int
    baseline_items: int
    timeout: float
    poll: float
    phases: tuple[str, ...]
    sweep_items: int
    sweep_chunks: tuple[int, ...]
    sweep_jobs: tuple[int, ...]
    sweep_types: tuple[str, ...]
    sweep_mode: str
    profile_dir: Path | None
    trace_sql: bool
    out_dir: Path
    scale_items: int = 1_000_000
    api_clients: int = 1
    """Latency-sampling clients per endpoint in the scale phase."""
    api_interval: float = 0.2
    """Seconds between one client's requests (1 client × 2 endpoints → at most 10 requests/s:
    a console with ten people watching, each refreshing once a second)."""
    api_samples: int = 600
    """Idle samples per endpoint (or what ``api_idle_s`` gives)."""
    api_idle_s: float = 150.0
    first_item_poll: float = 0.002
    pg_statements: bool = False
    """Start an own PostgreSQL cluster with pg_stat_statements (``BENCH_PG_STATEMENTS``)."""

    @classmethod
    def from_env(cls) -> BenchConfig:
        items = _int("BENCH_ITEMS", 100_000)
        profile = os.environ.get("BENCH_PROFILE", "").strip()
        out = Path(os.environ.get("BENCH_OUT", "").strip() or "/tmp/batchd-bench")
        return cls(
            database_url=os.environ.get("BENCH_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL,
            redis_url=os.environ.get("BENCH_REDIS_URL", "").strip() or DEFAULT_REDIS_URL,
            items=items,
            sqlite_items=_int("BENCH_SQLITE_ITEMS", min(items, 20_000)),
            baseline_items=_int("BENCH_BASELINE_ITEMS", min(items, 5_000)),
            timeout=_float("BENCH_TIMEOUT", 180.0),
            poll=_float("BENCH_POLL", 0.05),
            phases=_words("BENCH_PHASES", PHASES),
            sweep_items=_int("BENCH_SWEEP_ITEMS", min(items, 20_000)),
            sweep_chunks=_ints("BENCH_SWEEP_CHUNKS", (100, 500, 1000, 2000)),
            sweep_jobs=_ints("BENCH_SWEEP_JOBS", (1, 2, 4)),
            sweep_types=_words("BENCH_SWEEP_TYPES", ("task.approve",)),
            sweep_mode=os.environ.get("BENCH_SWEEP_MODE", "").strip() or "filter",
            profile_dir=(out / "profile" if profile == "1" else Path(profile))
            if profile not in ("", "0")
            else None,
            trace_sql=os.environ.get("BENCH_TRACE_SQL", "").strip() not in ("", "0"),
            out_dir=out,
            scale_items=_int("BENCH_SCALE_ITEMS", 1_000_000),
            api_clients=_int("BENCH_API_CLIENTS", 1),
            api_interval=_float("BENCH_API_INTERVAL", 0.2),
            api_samples=_int("BENCH_API_SAMPLES", 600),
            api_idle_s=_float("BENCH_API_IDLE_S", 150.0),
            first_item_poll=_float("BENCH_FIRST_ITEM_POLL", 0.002),
            pg_statements=os.environ.get("BENCH_PG_STATEMENTS", "").strip() not in ("", "0"),
        )

    # ------------------------------------------------------------------ derived URLs

    @property
    def url(self) -> URL:
        return make_url(self.database_url)

    @property
    def database_name(self) -> str:
        name = self.url.database
        if not name:
            raise SystemExit("BENCH_DATABASE_URL must name a database")
        return name

    def asyncpg_dsn(self, database: str | None = None) -> str:
        """The same server as a plain ``postgresql://`` DSN for asyncpg."""
        url = self.url.set(drivername="postgresql")
        if database is not None:
            url = url.set(database=database)
        return url.render_as_string(hide_password=False)
