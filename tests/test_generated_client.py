"""The OpenAPI document is fit for a client generator (issue 11): ``openapi-python-client``
turns the app's own ``/openapi.json`` into a package without a single warning, and that
package — readable method names from the operationIds, enums for statuses and types —
drives a real batch against a live server: create → get (until completed) → details.

The package is generated into the test's tmp dir (never into the repository, so ruff and
mypy never see it) and imported from there."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.batch_helpers import eventually, expense_setup
from tests.conftest import Actor, LiveServer

PACKAGE = "batchd_client"
GENERATOR_CONFIG = Path(__file__).parent.parent / "openapi-python-client.yaml"
"""The config shipped at the repository root, the one the docs tell users to pass: the
generator reads JSON, text/* and application/octet-stream bodies only, so it maps the
Excel and zip downloads to bytes (without it, both responses are dropped with a warning)."""
TASKS = 30
MISSING = 2
LIMIT_S = 30.0


async def generate(url: str, workdir: Path) -> str:
    """Write the served document to ``workdir``, run the generator CLI on it and return
    what it printed (it fails on any warning)."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200, r.text
    document = workdir / "openapi.json"
    document.write_text(r.text)
    bin_dir = Path(sys.executable).parent
    proc = await asyncio.create_subprocess_exec(
        str(bin_dir / "openapi-python-client"),
        "generate",
        "--path",
        str(document),
        "--output-path",
        str(workdir / PACKAGE),
        "--meta",
        "none",
        "--config",
        str(GENERATOR_CONFIG),
        "--fail-on-warning",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=workdir,
        # The generator's post-hooks run ruff from PATH; the venv's ruff, not the host's.
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    output, _ = await proc.communicate()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


@pytest.fixture
def import_generated(tmp_path: Path) -> Iterator[Path]:
    """Make ``tmp_path`` importable for the test and forget the generated modules after,
    so the next backend's run imports its own freshly generated package."""
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def load(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_generated_client_drives_a_batch(
    live_server: LiveServer,
    import_generated: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    output = await generate(live_server.url, import_generated)
    assert "warning" not in output.lower(), output

    setup = await expense_setup(sessionmaker, admin, alice, bob, TASKS)
    missing = [max(setup.task_ids) + 1000 + i for i in range(MISSING)]

    client_mod = load("client")
    models = load("models")
    create_batch = load("api.batches.create_batch")
    get_batch = load("api.batches.get_batch")
    list_batch_details = load("api.batches.list_batch_details")

    body = models.BatchCreate.from_dict(
        {
            "type": "task.approve",
            "ids": [*setup.task_ids, *missing],
            "params": {"decision": "approve", "form_data": {"category": "travel"}},
        }
    )
    assert body.type_ is models.OperationType.TASK_APPROVE
    async with client_mod.AuthenticatedClient(
        base_url=live_server.url, token=alice.token, timeout=httpx.Timeout(30.0)
    ) as api:
        created = await create_batch.asyncio_detailed(client=api, body=body)
        assert created.status_code == 202, created.content
        batch = created.parsed
        assert isinstance(batch, models.BatchOut), created.content
        assert batch.total == TASKS + MISSING
        assert batch.priority is models.Priority.NORMAL

        batch_id = batch.id

        async def current() -> Any:
            seen = await get_batch.asyncio(batch_id, client=api)
            assert isinstance(seen, models.BatchOut), seen
            assert seen.status in {
                models.BatchStatus.CREATED,
                models.BatchStatus.SEEDING,
                models.BatchStatus.RUNNING,
                models.BatchStatus.COMPLETED,
            }, seen
            return seen

        batch = await eventually(
            current,
            "the batch completes",
            LIMIT_S,
            until=lambda b: b.status is models.BatchStatus.COMPLETED,
        )

        assert (batch.success, batch.failed, batch.ignored, batch.cancelled) == (
            TASKS,
            MISSING,
            0,
            0,
        )
        assert (batch.pending, batch.progress) == (0, 1.0)
        assert batch.type_ is models.OperationType.TASK_APPROVE

        failed = await list_batch_details.asyncio(
            batch.id, client=api, status=models.DetailStatus.FAILED
        )
        assert isinstance(failed, models.PageDetailOut), failed
        assert failed.total == MISSING
        assert sorted(d.item_id for d in failed.items) == missing
        assert {d.error for d in failed.items} == {f"Task {i} does not exist." for i in missing}

        everything = await list_batch_details.asyncio(batch.id, client=api, page_size=100)
        assert isinstance(everything, models.PageDetailOut), everything
        assert everything.total == TASKS + MISSING
        by_status: dict[Any, int] = {}
        for detail in everything.items:
            by_status[detail.status] = by_status.get(detail.status, 0) + 1
        assert by_status == {
            models.DetailStatus.SUCCESS: TASKS,
            models.DetailStatus.FAILED: MISSING,
        }

        # Errors come back typed too: another user does not see the batch.
        async with client_mod.AuthenticatedClient(
            base_url=live_server.url, token=bob.token
        ) as other:
            hidden = await get_batch.asyncio_detailed(batch.id, client=other)
        assert hidden.status_code == 404
        assert isinstance(hidden.parsed, models.ErrorBody)
        assert hidden.parsed.error == "NotFound"
