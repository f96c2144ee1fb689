"""Settings from the environment (prefix ``BATCH_``).

One ``Settings`` object is built per process (``get_settings``) and passed explicitly
to the app factory and the workers, so tests can build their own.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TypeOverrides(BaseModel):
    """Per operation type overrides of the global batch defaults."""

    chunk_size: int | None = Field(default=None, ge=1, le=10_000)
    max_retries: int | None = Field(default=None, ge=0, le=100)
    failure_threshold: float | None = Field(default=None, gt=0, le=1)
    history_ttl: int | None = Field(default=None, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCH_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./batchd.db"
    redis_url: str | None = None

    max_concurrency: int = Field(default=10, ge=1)
    chunk_size: int = Field(default=500, ge=1, le=10_000)
    jobs_per_seed: int = Field(default=10, ge=1)
    poll_time: float = Field(default=2.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    failure_threshold: float | None = Field(default=None, gt=0, le=1)
    stuck_after: float = Field(default=300, gt=0)
    start_timeout: float = Field(default=120, gt=0)
    auto_retry_window: float = Field(default=86_400, ge=0)
    history_ttl: float = Field(default=30 * 86_400, ge=0)
    type_config: dict[str, TypeOverrides] = Field(default_factory=dict)
    max_items: int = Field(default=1_000_000, ge=1)
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    """multipart/form-data request bodies (uploads) over this are a 413."""
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    """Every other request body over this is a 413 before it is parsed; 16 MiB holds a
    JSON list of 1 000 000 ids."""
    max_import_rows: int = Field(default=50_000, ge=1)
    """An imported workbook with more task rows (or a zip with more workbooks) is a 413."""
    max_zip_members: int = Field(default=5_000, ge=1)
    """An upload (an .xlsx is a zip too) with more members than this is a 413."""
    max_uncompressed_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    """The declared uncompressed size of an upload's members (nested workbooks of a zip
    included) over this is a 413, checked before anything is extracted: zip bombs."""
    # What one uploaded workbook may hold (app/excel/guard.py): each part is counted as
    # it streams, before openpyxl reads it; past a limit the upload is a 413. The
    # defaults are far above any approval template (a sheet of 50 000 rows, a hidden
    # option sheet, a few styles) and keep one upload's memory to ~100 MB.
    max_sheet_bytes: int = Field(default=128 * 1024 * 1024, ge=1)
    """A worksheet that unpacks to more than this (worksheets are read as a stream;
    50 000 rows of 20 columns are ~45 MB)."""
    max_part_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    """Any other member that unpacks to more than this: shared strings, styles,
    drawings, images, … and each workbook of a zip of workbooks."""
    max_part_elements: int = Field(default=100_000, ge=1)
    """XML elements of one part that are held in memory at once: a part read whole
    (styles, workbook, …), or what a worksheet holds outside its rows."""
    max_xml_elements: int = Field(default=8_000_000, ge=1)
    """XML elements in one whole upload (the CPU it costs; 50 000 rows of 20 columns
    are ~2.5 million)."""
    max_style_entries: int = Field(default=10_000, ge=1)
    """Entries of one style list: cell formats (cellXfs, cellStyleXfs), fonts, fills,
    borders, number formats, differential formats, named cell styles."""
    max_shared_strings: int = Field(default=500_000, ge=1)
    """Shared strings of one workbook (openpyxl holds them all while it reads)."""
    max_sheet_rows: int = Field(default=200_000, ge=1)
    """Rows of one worksheet, blank ones included (BATCH_MAX_IMPORT_ROWS counts the
    task rows)."""
    max_row_cells: int = Field(default=16_384, ge=1)
    """Cells of one row (16 384 is Excel's own column limit)."""
    max_sheet_cells: int = Field(default=2_000_000, ge=1)
    """Cells of one worksheet."""
    max_sheets: int = Field(default=100, ge=1)
    """Sheets of one workbook."""
    import_concurrency: int = Field(default=2, ge=1)
    """Uploads one API process reads at once; the others wait for a turn (always 1 on
    SQLite, where an import holds the write lock while it reads)."""
    import_wait: float = Field(default=60, gt=0)
    """Seconds an upload waits for its turn before it is answered 503 (Retry-After)."""

    # Extensions (all optional).
    recover_interval: float = Field(default=10, gt=0)
    """Seconds between recovery / auto-retry passes of the in-process runner."""
    max_page_size: int = Field(default=1000, ge=1, le=1000)
    """May only lower the documented ``page_size`` maximum of 1000."""
    db_pool_size: int = Field(default=10, ge=1)
    worker_max_jobs: int = Field(default=10, ge=1)
    """arq ``max_jobs`` per priority queue of one ``batchd worker``."""
    jobs_per_batch: int = Field(default=4, ge=1)
    """Execute jobs started per batch (parallel chunks of one batch; 1 on SQLite)."""
    seed_lanes: int = Field(default=2, ge=1, le=16)
    """Seed jobs that seed one filter batch's pages at once, each on its own connection
    (PostgreSQL; 1 on SQLite, whose writers take turns anyway)."""
    seed_page_seconds: float = Field(default=0.3, gt=0, le=60)
    """A seed page aims to commit within this long: the page a lane claims ahead holds
    what its last page's pace fits in this time (one chunk at least, ``jobs_per_seed``
    chunks at most), so progress moves several times a second on a slow machine too."""
    slice_seconds: float = Field(default=15, gt=0)
    """An execute job hands its batch back to the queue after this long (fairness)."""
    auto_retry_delay: float = Field(default=60, ge=0)
    """A finished batch is auto-retried no sooner than this after it finished."""
    metrics: bool = True
    """``GET /metrics`` (Prometheus text) and the metric hooks; false → 404, no-ops."""
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """``batchd worker`` serves its own ``/metrics`` on this port (unset → none)."""
    worker_metrics_host: str = "0.0.0.0"
    """Address the worker's metrics server binds (Prometheus scrapes it from outside)."""
    sse_ping_interval: float = Field(default=15, gt=0)
    """Seconds of silence after which an event stream sends a ``: ping`` comment."""
    session_idle_timeout: float = Field(default=3600, gt=0)
    """A browser session unused for this many seconds is refused (sign in again); every
    request it makes moves the deadline (``BATCH_SESSION_IDLE_TIMEOUT``, 1 hour)."""
    session_max_age: float = Field(default=12 * 3600, gt=0)
    """A browser session is refused this many seconds after sign-in however busy it is
    (``BATCH_SESSION_MAX_AGE``, 12 hours: a working day)."""

    # Webhooks (app/webhooks).
    webhook_allow_private: bool = False
    """Deliver to loopback, private, link-local, multicast and reserved addresses too.
    For development and tests only: in production it lets a user make batchd call into
    its own network (``BATCH_WEBHOOK_ALLOW_PRIVATE``)."""
    webhook_timeout: float = Field(default=10, gt=0, le=60)
    """Seconds one delivery attempt may take, connect to last byte read
    (``BATCH_WEBHOOK_TIMEOUT``)."""

    # Single sign-on (app/auth): off unless ``oidc_issuer`` is set.
    oidc_issuer: str | None = None
    """The OpenID provider's issuer URL; discovery at
    ``{issuer}/.well-known/openid-configuration`` (``BATCH_OIDC_ISSUER``)."""
    oidc_audience: str | None = None
    """The ``aud`` a bearer JWT must name (required with the issuer)."""
    oidc_role_claim: str = "batchd_role"
    """Claim holding ``admin`` or ``user``; anything else, or absent, is ``user``."""
    oidc_department_claim: str = "department_id"
    oidc_name_claim: str = "name"
    oidc_client_id: str | None = None
    """The console's client id: with it the sign-in page offers "Sign in with …"."""
    oidc_client_secret: str | None = None
    """The console client's secret (confidential clients; PKCE is used either way)."""
    oidc_display_name: str | None = Field(default=None, max_length=100)
    """The provider's name on the console's "Sign in with <name>" button
    (``BATCH_OIDC_DISPLAY_NAME``; default: the issuer's host)."""

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def for_type(self, op_type: str) -> TypeOverrides:
        """The effective defaults for one operation type."""
        o = self.type_config.get(op_type, TypeOverrides())
        return TypeOverrides(
            chunk_size=o.chunk_size or self.chunk_size,
            max_retries=self.max_retries if o.max_retries is None else o.max_retries,
            failure_threshold=(
                o.failure_threshold if o.failure_threshold is not None else self.failure_threshold
            ),
            history_ttl=int(self.history_ttl if o.history_ttl is None else o.history_ttl),
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
