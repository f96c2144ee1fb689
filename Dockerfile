# batchd API / worker image. The same image runs both:
#   api:    (default) migrate, then `batchd serve --host 0.0.0.0 --port 8000`
#   worker: `batchd worker` (needs BATCH_REDIS_URL)
# Installed editable from /app because alembic.ini and migrations/ live at the repo root.
FROM python:3.11-slim

# The SQLite default makes the image work standalone (embedded mode; keep the data with
# `docker run -v batchd-data:/data -p 8000:8000 batchd`); compose.yaml points it at
# PostgreSQL + Redis instead. No VOLUME here, so compose workers get no stray volumes.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    BATCH_DATABASE_URL=sqlite+aiosqlite:////data/batchd.db

RUN groupadd --system --gid 10001 batchd \
    && useradd --system --uid 10001 --gid batchd --home-dir /app --shell /usr/sbin/nologin batchd \
    && mkdir -p /data \
    && chown batchd:batchd /data

WORKDIR /app

# Dependencies first (pinned), so code changes do not reinstall them.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY pyproject.toml alembic.ini ./
COPY migrations ./migrations
COPY workers ./workers
COPY app ./app
RUN pip install --no-deps -e . \
    && python -c "import app.cli, workers.arq_worker"

USER batchd
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

# exec: batchd becomes PID 1 and receives SIGTERM for a graceful shutdown.
CMD ["sh", "-c", "batchd migrate && exec batchd serve --host 0.0.0.0 --port 8000"]
