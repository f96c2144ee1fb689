"""Custom operation types (like Camunda's custom batch types): a module of the user's
own declares an ``Operation`` and registers it — by an explicit ``register`` call or a
``batchd.operations`` entry point — and runs through ``POST /api/v1/batches`` like a
built-in type."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import app.operations as operations
from app.domain import ErrorCode, Outcome
from app.models import ProcessInstance, ProcessLog
from app.operations import OPERATIONS, BatchRun, Operation, WorkItem, register
from app.operations.targets import INSTANCES
from app.schemas.common import StrictModel
from app.workflow.logs import write_process_logs
from tests.batch_helpers import create, details, expense_setup, wait_for
from tests.conftest import Actor


class TagParams(StrictModel):
    tag: str = Field(min_length=1, max_length=40)


class TagInstances(Operation):
    """The README's example: write a ``tagged`` process log row on each instance."""

    type = "test.tag"
    target = INSTANCES
    Params = TagParams

    async def apply(
        self, session: AsyncSession, run: BatchRun, items: list[WorkItem]
    ) -> list[Outcome]:
        ids = [i.item_id for i in items]
        found = set(
            await session.scalars(select(ProcessInstance.id).where(ProcessInstance.id.in_(ids)))
        )
        await write_process_logs(
            session,
            (
                {
                    "instance_id": i,
                    "actor_id": run.creator_id,
                    "batch_id": run.batch_id,
                    "action": "tagged",
                    "message": run.params["tag"],
                }
                for i in ids
                if i in found
            ),
        )
        return [
            Outcome.success()
            if i in found
            else Outcome.failed(ErrorCode.NOT_FOUND, f"Process {i} does not exist.")
            for i in ids
        ]


@pytest.fixture
def tag_type() -> Iterator[None]:
    register(TagInstances())
    yield
    OPERATIONS.pop("test.tag", None)


async def test_a_registered_type_runs_like_a_builtin_one(
    tag_type: None,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 7)
    r = await admin.post("/api/v1/batches", json={"type": "test.tag", "ids": [1], "params": {}})
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["params", "tag"]
    batch = await create(
        admin,
        {
            "type": "test.tag",
            "filter": {"definition_key": "expense"},
            "params": {"tag": "audit-2026"},
            "chunk_size": 3,
        },
    )
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["total"], done["success"]) == ("completed", 7, 7)
    async with sessionmaker() as s:
        tagged = await s.scalar(
            select(func.count()).where(
                ProcessLog.action == "tagged",
                ProcessLog.message == "audit-2026",
                ProcessLog.batch_id == batch["id"],
            )
        )
    assert tagged == 7
    missing = await create(admin, {"type": "test.tag", "ids": [999], "params": {"tag": "x"}})
    assert (await wait_for(admin, missing["id"]))["failed"] == 1
    [failed] = await details(admin, missing["id"])
    assert failed["error"] == "Process 999 does not exist."


def test_an_entry_point_registers_a_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """``[project.entry-points."batchd.operations"] tag = "mypkg.ops:TagInstances"``:
    the class (or an instance, or a module that registers on import) is loaded at
    start-up; a plugin that fails to load is logged and skipped."""

    class _EntryPoint:
        def __init__(self, name: str, target: Any) -> None:
            self.name, self.value, self._target = name, f"tests:{name}", target

        def load(self) -> Any:
            if isinstance(self._target, Exception):
                raise self._target
            return self._target

    def fake_entry_points(group: str) -> list[_EntryPoint]:
        assert group == "batchd.operations"
        return [_EntryPoint("tag", TagInstances), _EntryPoint("broken", ImportError("nope"))]

    monkeypatch.setattr(operations, "entry_points", fake_entry_points)
    try:
        assert operations.load_plugins() == ["tag"]
        assert isinstance(operations.get_operation("test.tag"), TagInstances)
    finally:
        OPERATIONS.pop("test.tag", None)
