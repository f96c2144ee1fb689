#!/usr/bin/env bash
# Regenerates the single initial migration from the models (only while nothing has shipped).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f migrations/versions/*.py /tmp/batchd-gen.db
BATCH_DATABASE_URL=sqlite+aiosqlite:////tmp/batchd-gen.db .venv/bin/alembic revision --autogenerate -m "initial schema" --rev-id 0001 >/dev/null
f=$(ls migrations/versions/*.py)
sed -i 's/astext_type=Text()/astext_type=sa.Text()/g; s/^Create Date: .*/Create Date: 2026-11-23/' "$f"
.venv/bin/ruff format -q "$f" || true
echo "$f"
