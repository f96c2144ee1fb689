"""Importing a filled approval template: the xlsx and
zip formats, every row checked as an approval (with the engine's sentences, prefixed
by the row), the error file (original values + Error) that imports again once fixed,
and uploads refused whole (422 / 413 / 415) without writing anything."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
from openpyxl import Workbook, load_workbook
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches import details as details_module
from app.batches import imports, spool
from app.excel.layout import ERROR, approval_columns
from app.models import Batch, BatchDetail, ProcessInstance, Task
from tests.batch_helpers import count, create, details, expense_setup, wait_for
from tests.conftest import Actor
from tests.factories import approve, bulk_tasks, create_definition, expense_definition

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
IMPORT = "/api/v1/batches/import"


def manager_headers(definition: dict[str, Any], node_id: str = "manager") -> list[str]:
    node = next(n for n in definition["nodes"] if n["id"] == node_id)
    return [c.header for c in approval_columns(definition["form"], node)]


def xlsx(headers: list[Any], rows: list[list[Any]]) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(headers)
    for row in rows:
        ws.append(row)
    for cells in ws.iter_rows():
        for cell in cells:
            if cell.data_type == "f":  # formula-looking text typed as text, as Excel keeps it
                cell.data_type = "s"
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def vertical(pairs: list[tuple[str, Any]]) -> bytes:
    return xlsx(["Field", "Value"], [list(p) for p in pairs])


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


async def upload(
    actor: Actor, data: bytes, name: str = "tasks.xlsx", status: int = 202, **form: str
) -> dict[str, Any]:
    r = await actor.post(IMPORT, files={"file": (name, data, XLSX)}, data=form)
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


def row_of(headers: list[str], **values: Any) -> list[Any]:
    """A sheet row from header → value (headers given without the required mark)."""
    by_name = {h.removesuffix(" *"): v for h, v in values.items()}
    return [by_name.get(h.removesuffix(" *")) for h in headers]


async def is_single(sm: async_sessionmaker[AsyncSession], batch_id: int) -> bool:
    """``is_single`` is stored on the batch (the response does not show it)."""
    async with sm() as session:
        return bool(await session.scalar(select(Batch.is_single).where(Batch.id == batch_id)))


async def instance_of(sm: async_sessionmaker[AsyncSession], task_id: int) -> ProcessInstance:
    async with sm() as session:
        task = await session.get(Task, task_id)
        assert task is not None
        instance = await session.get(ProcessInstance, task.instance_id)
        assert instance is not None
        return instance


async def strangers(
    sm: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    definition: dict[str, Any],
) -> tuple[int, int]:
    """Two tasks no row of alice's sheet may approve: one hers at another node (of
    another definition) — wrong node — and one of bob's at the sheet's node."""
    other = await create_definition(admin, expense_definition(alice.id, alice.id, key="claims"))
    [elsewhere] = await bulk_tasks(
        sm,
        definition_id=other["id"],
        definition_key="claims",
        node_id="finance",
        assignee_id=alice.id,
        initiator_id=admin.id,
        n=1,
    )
    [bobs] = await bulk_tasks(
        sm,
        definition_id=definition["id"],
        definition_key="expense",
        node_id="manager",
        assignee_id=bob.id,
        initiator_id=admin.id,
        n=1,
    )
    return elsewhere, bobs


@pytest.fixture
def tiny_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read, check, spool and insert a sheet a few rows at a time (the spool on disk),
    so a small sheet crosses every page boundary a 50 000-row one does."""
    monkeypatch.setattr(imports, "READ_PAGE", 3)
    monkeypatch.setattr(imports, "CHECK_PAGE", 2)
    monkeypatch.setattr(spool, "IN_MEMORY_BYTES", 1)
    monkeypatch.setattr(details_module, "INSERT_PAGE", 4)


async def test_a_sheet_read_in_pages_is_checked_as_one_sheet(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    tiny_pages: None,
) -> None:
    """The sheet's node comes from the first row the caller can see even when that is on
    a later page; a task repeated pages later is still a duplicate; every row becomes
    one detail, in order, with its own cells."""
    s = await expense_setup(sessionmaker, admin, alice, bob, 5)
    t = s.task_ids
    elsewhere, bobs = await strangers(sessionmaker, admin, alice, bob, s.definition)
    h = manager_headers(s.definition)
    rows = [
        row_of(h, **{"Task ID": 999_999, "Category": "travel", "Decision": "approve"}),  # 2
        row_of(h, **{"Task ID": bobs, "Category": "travel", "Decision": "approve"}),  # 3
        row_of(h, **{"Task ID": t[0], "Category": "travel", "Decision": "approve"}),  # 4
        row_of(h, **{"Task ID": t[1], "Category": "meals", "Decision": "approve"}),  # 5
        row_of(h, **{"Task ID": elsewhere, "Decision": "approve"}),  # 6
        row_of(h, **{"Task ID": t[0], "Category": "other", "Decision": "approve"}),  # 7
        row_of(h, **{"Task ID": t[2], "Decision": "reject", "Comment": "no"}),  # 8
        row_of(h, **{"Task ID": t[3], "Category": "boat", "Decision": "approve"}),  # 9
        row_of(h, **{"Task ID": t[4], "Category": "travel", "Decision": "approve"}),  # 10
    ]
    batch = await upload(alice, xlsx(h, rows))
    assert (batch["total"], batch["failed"]) == (9, 5)
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["success"], done["failed"]) == ("completed", 4, 5), done
    every = await details(alice, batch["id"])
    assert [d["row"] for d in every] == list(range(2, 11))
    assert [d["item_id"] for d in every] == [
        999_999, bobs, t[0], t[1], elsewhere, t[0], t[2], t[3], t[4]
    ]  # fmt: skip
    failed = {d["row"]: d["error"] for d in every if d["status"] == "failed"}
    assert failed == {
        2: "row 2: Task 999999 does not exist.",
        3: f"row 3: Task {bobs} does not exist.",
        6: f"row 6: Task {elsewhere} is at step Finance check, not at step Manager "
        "approval like this sheet.",
        7: f"row 7: task {t[0]} is already in row 4",
        9: "row 9: Category must be one of travel, meals, other",
    }
    category = next(x for x in h if x.startswith("Category"))
    assert dict(every[7]["payload"]["cells"])[category] == "boat"
    assert (await instance_of(sessionmaker, t[2])).status == "rejected"
    moved = [await instance_of(sessionmaker, tid) for tid in (t[0], t[1], t[4])]
    assert [(i.current_node_id, i.form_data["category"]) for i in moved] == [
        ("finance", "travel"), ("finance", "meals"), ("finance", "travel")
    ]  # fmt: skip


async def test_round_trip_with_every_row_error(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    s = await expense_setup(sessionmaker, admin, alice, bob, 9)
    t = s.task_ids
    elsewhere, bobs = await strangers(sessionmaker, admin, alice, bob, s.definition)
    r = await approve(alice, t[7], form_data={"category": "meals"})  # no longer pending
    assert r.status_code == 200, r.text
    h = manager_headers(s.definition)
    rows = [
        row_of(h, **{"Task ID": t[0], "Category": "travel", "Decision": "approve"}),  # 2
        row_of(h, **{"Task ID": t[1], "Category": "meals", "Decision": "Approve", "Comment": "ok"}),
        row_of(h, **{"Task ID": t[2], "Decision": "reject", "Comment": "no receipt"}),  # 4
        row_of(h, **{"Task ID": t[3], "Category": "boat", "Decision": "approve"}),  # 5
        row_of(h, **{"Task ID": t[4], "Category": "travel", "Decision": "maybe"}),  # 6
        row_of(h, **{"Task ID": t[5], "Decision": "approve"}),  # 7: category required
        row_of(h, **{"Task ID": t[0], "Category": "other", "Decision": "approve"}),  # 8: twice
        row_of(h, **{"Task ID": 999_999, "Category": "travel", "Decision": "approve"}),  # 9
        row_of(h, **{"Task ID": bobs, "Category": "travel", "Decision": "approve"}),  # 10
        row_of(h, **{"Task ID": t[7], "Category": "travel", "Decision": "approve"}),  # 11
        row_of(h, **{"Task ID": elsewhere, "Decision": "approve"}),  # 12
        row_of(h, **{"Task ID": "abc", "Decision": "approve"}),  # 13
        row_of(h, **{"Task ID": t[6], "Category": "travel"}),  # 14: undecided, skipped
        [None] * len(h),  # blank rows are left out (not even counted)
        row_of(h, **{"Task ID": t[8], "Category": "=1+1", "Decision": "approve"}),  # 16
    ]
    batch = await upload(alice, xlsx(h, rows), priority="high")
    assert batch["source"] == "excel" and not await is_single(sessionmaker, batch["id"])
    assert batch["priority"] == "high" and batch["total"] == 13
    assert batch["skipped_rows"] == 1
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["success"], done["failed"]) == ("completed", 3, 10), done
    assert done["error_file"] == f"/api/v1/batches/{batch['id']}/error-file"

    failed = {d["row"]: d["error"] for d in await details(alice, batch["id"], status="failed")}
    assert failed == {
        5: "row 5: Category must be one of travel, meals, other",
        6: "row 6: Decision must be approve or reject",
        7: "row 7: Category is required",
        8: f"row 8: task {t[0]} is already in row 2",
        9: "row 9: Task 999999 does not exist.",
        10: f"row 10: Task {bobs} does not exist.",
        11: f"row 11: Task {t[7]} is already completed.",
        12: f"row 12: Task {elsewhere} is at step Finance check, not at step Manager "
        "approval like this sheet.",
        13: "row 13: Task ID must be a whole number, not 'abc'",
        16: "row 16: Category must be one of travel, meals, other",
    }
    codes = {d["row"]: d["error_code"] for d in await details(alice, batch["id"], status="failed")}
    assert codes == {
        **dict.fromkeys((5, 6, 7, 13, 16), "validation"),
        8: "conflict",
        9: "not_found",
        10: "not_found",  # bob's task: hidden fails exactly like missing
        11: "wrong_state",
        12: "wrong_node",
    }
    ok = {d["row"]: d for d in await details(alice, batch["id"], status="success")}
    assert set(ok) == {2, 3, 4}
    assert ok[3]["payload"]["comment"] == "ok" and ok[3]["payload"]["decision"] == "approve"

    approved = [await instance_of(sessionmaker, tid) for tid in t[:2]]
    assert [(i.status, i.current_node_id) for i in approved] == [("active", "finance")] * 2
    assert [i.form_data["category"] for i in approved] == ["travel", "meals"]
    assert (await instance_of(sessionmaker, t[2])).status == "rejected"
    for tid in (t[3], t[4], t[5], t[6], t[8]):
        untouched = await instance_of(sessionmaker, tid)
        assert (untouched.status, untouched.current_node_id) == ("active", "manager")
    async with sessionmaker() as session:  # pre-failed rows never locked their task
        locks = await session.scalars(select(Task.locked_by_batch_id).where(Task.id.in_(t)))
        assert set(locks) == {None}


async def test_task_ids_that_are_not_plain_whole_numbers_fail_their_row(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """``str.isdigit`` holds for "²" (``int`` refuses it: it was a 500) and for "٣" and
    "１" (``int`` reads them as 3 and 1): only ASCII digits make a Task ID."""
    s = await expense_setup(sessionmaker, admin, alice, bob, 1)
    h = manager_headers(s.definition)
    ids = ["²", "٣", "１", "99999999999999999999", "9223372036854775808", s.task_ids[0]]
    rows = [row_of(h, **{"Task ID": i, "Category": "travel", "Decision": "approve"}) for i in ids]
    batch = await upload(alice, xlsx(h, rows))
    assert (batch["total"], batch["failed"]) == (6, 5), batch
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (1, 5), done
    failed = {d["row"]: d["error"] for d in await details(alice, batch["id"], status="failed")}
    assert failed == {
        row: f"row {row}: Task ID must be a whole number, not {raw!r}"
        for row, raw in enumerate(ids[:5], start=2)
    }


async def test_error_file_repeats_rows_and_imports_again_once_fixed(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    s = await expense_setup(sessionmaker, admin, alice, bob, 4)
    t = s.task_ids
    h = ["Comment", "Decision", "Task ID", "Notes", "category"]  # any order, extra column
    rows: list[list[Any]] = [
        ["fine", "approve", t[0], "keep me", "travel"],
        ["first", "approve", t[1], "=HYPERLINK(1)", "boat"],
        ["second", "maybe", t[2], None, "meals"],
        [None, "approve", t[3], 42, None],
    ]
    batch = await upload(alice, xlsx(h, rows))
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (1, 3), done

    r = await alice.get(f"/api/v1/batches/{batch['id']}/error-file")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == XLSX
    ws = load_workbook(io.BytesIO(r.content)).worksheets[0]
    got = [list(row) for row in ws.iter_rows(values_only=True)]
    assert got[0] == [*h, ERROR]
    assert got[1:] == [
        [
            "first",
            "approve",
            t[1],
            "=HYPERLINK(1)",
            "boat",
            "row 3: Category must be one of travel, meals, other",
        ],
        ["second", "maybe", t[2], None, "meals", "row 4: Decision must be approve or reject"],
        [None, "approve", t[3], 42, None, "row 5: Category is required"],
    ]
    assert ws.cell(2, 4).data_type == "s"  # formula-looking text stays text

    fixed = load_workbook(io.BytesIO(r.content))
    sheet = fixed.worksheets[0]
    sheet.cell(2, 5).value = "other"
    sheet.cell(3, 2).value = "reject"
    sheet.cell(4, 5).value = "meals"
    buf = io.BytesIO()
    fixed.save(buf)
    again = await upload(alice, buf.getvalue())
    redone = await wait_for(alice, again["id"])
    assert (redone["success"], redone["failed"], redone["error_file"]) == (3, 0, None), redone
    assert (await instance_of(sessionmaker, t[1])).form_data["category"] == "other"
    assert (await instance_of(sessionmaker, t[2])).status == "rejected"
    r = await alice.get(f"/api/v1/batches/{again['id']}/error-file")
    assert r.status_code == 404 and r.json()["error"] == "NotFound", r.text
    r = await bob.get(f"/api/v1/batches/{batch['id']}/error-file")  # not bob's batch
    assert r.status_code == 404 and r.json()["error"] == "NotFound", r.text


async def test_zip_of_vertical_workbooks(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    s = await expense_setup(sessionmaker, admin, alice, bob, 2)
    t = s.task_ids
    members = {
        "task-a.xlsx": vertical(
            [
                ("Task ID", t[0]),
                ("Title", "Trip 1"),
                ("Category *", "meals"),
                ("Decision", "approve"),
            ]
        ),
        "task-b.xlsx": vertical([("Task ID", t[1]), ("category", "bus"), ("Decision", "approve")]),
        "__MACOSX/._task-a.xlsx": b"ignored",
    }
    batch = await upload(alice, zipped(members), name="tasks.zip")
    assert batch["source"] == "excel" and batch["total"] == 2
    assert await is_single(sessionmaker, batch["id"])
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (1, 1), done
    [bad] = await details(alice, batch["id"], status="failed")
    assert bad["row"] == 2
    assert bad["error"] == "row 2 (task-b.xlsx): Category must be one of travel, meals, other"
    assert (await instance_of(sessionmaker, t[0])).form_data["category"] == "meals"

    r = await alice.get(f"/api/v1/batches/{batch['id']}/error-file")
    got = [list(row) for row in load_workbook(io.BytesIO(r.content)).worksheets[0].values]
    assert got[0] == ["Task ID", "category", "Decision", ERROR]
    assert got[1][:3] == [t[1], "bus", "approve"]


async def test_error_file_of_api_batches(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    s = await expense_setup(sessionmaker, admin, alice, bob, 2)
    t = s.task_ids
    batch = await create(
        alice,
        {
            "type": "task.approve",
            "ids": [*t, 987_654],
            "params": {"decision": "approve", "comment": "bulk", "form_data": {"category": "x"}},
        },
    )
    done = await wait_for(alice, batch["id"])
    assert done["failed"] == 3 and done["error_file"], done
    r = await alice.get(f"/api/v1/batches/{batch['id']}/error-file")
    assert r.status_code == 200, r.text
    got = [list(row) for row in load_workbook(io.BytesIO(r.content)).worksheets[0].values]
    assert got[0] == [*manager_headers(s.definition), ERROR]
    col = {name: i for i, name in enumerate(got[0])}
    first = got[1]
    assert first[col["Task ID"]] == t[0] and first[col["Title"]] == "Trip 1"
    assert first[col["Category *"]] == "x" and first[col["Amount"]] == 101
    assert (first[col["Decision"]], first[col["Comment"]]) == ("approve", "bulk")
    assert first[col[ERROR]] == "Category must be one of travel, meals, other"
    hidden = got[3]  # an unknown task: only its id and its error
    assert hidden[col["Task ID"]] == 987_654 and hidden[col["Title"]] is None
    assert hidden[col[ERROR]] == "Task 987654 does not exist."

    suspend = await create(admin, {"type": "instance.suspend", "ids": [999_999]})
    await wait_for(admin, suspend["id"])
    r = await admin.get(f"/api/v1/batches/{suspend['id']}/error-file")
    assert r.status_code == 200, r.text
    got = [list(row) for row in load_workbook(io.BytesIO(r.content)).worksheets[0].values]
    assert got[0] == ["item_id", "title", ERROR] and got[1][0] == 999_999


def bomb(claimed: int) -> bytes:
    """A zip whose one member inflates to ``claimed`` bytes of zeros (a few hundred KB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as member:
            block = b"\0" * (1 << 20)
            for _ in range(claimed >> 20):
                member.write(block)
        zf.writestr("[Content_Types].xml", "<Types/>")
    return buf.getvalue()


async def _refused(
    sm: async_sessionmaker[AsyncSession], actor: Actor, data: bytes, status: int, name: str
) -> dict[str, Any]:
    before = (await count(sm, select(Batch)), await count(sm, select(BatchDetail)))
    body = await upload(actor, data, name=name, status=status)
    assert set(body) >= {"error", "detail"} and isinstance(body["detail"], str), body
    after = (await count(sm, select(Batch)), await count(sm, select(BatchDetail)))
    assert after == before
    return body


async def test_files_that_are_not_templates_are_refused(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    s = await expense_setup(sessionmaker, admin, alice, bob, 2)
    h = manager_headers(s.definition)
    refused = {
        "garbage.xlsx": b"\x00\x01garbage" * 100,
        "tasks.csv": b"Task ID,Decision\n1,approve\n",
        "empty.xlsx": b"",
        "locked.xlsx": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512,  # encrypted OLE file
        "corrupt.xlsx": xlsx(h, [[1]])[:400],
        "not-a-workbook.zip": zipped({"readme.txt": b"hello"}),
        "no-decision.xlsx": xlsx(["Task ID", "Category"], [[s.task_ids[0], "travel"]]),
        "no-rows.xlsx": xlsx(h, []),
        "bad-member.zip": zipped({"a.xlsx": b"not a workbook"}),
    }
    for name, data in refused.items():
        body = await _refused(sessionmaker, alice, data, 422, name)
        assert body["error"] == "ValidationError", (name, body)
    body = await _refused(sessionmaker, alice, refused["no-decision.xlsx"], 422, "x.xlsx")
    assert body["detail"] == "The sheet has no Decision column; it is not an approval template."
    r = await alice.post(IMPORT, json={"file": "x"})
    assert r.status_code == 415 and r.json()["error"] == "UnsupportedMediaType", r.text
    r = await alice.client.post(IMPORT, files={"file": ("t.xlsx", b"x", XLSX)})
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized", r.text


async def test_zip_bomb_is_refused_before_extraction(
    sessionmaker: async_sessionmaker[AsyncSession], alice: Actor
) -> None:
    data = bomb(256 << 20)  # claims 256 MiB > the 200 MiB default
    assert len(data) < 1 << 20
    body = await _refused(sessionmaker, alice, data, 413, "bomb.xlsx")
    assert body["error"] == "PayloadTooLarge" and "BATCH_MAX_UNCOMPRESSED_BYTES" in body["detail"]


@pytest.mark.parametrize(
    "settings_overrides",
    [{"max_upload_bytes": 60_000, "max_import_rows": 3, "max_zip_members": 12}],
)
async def test_limits(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    tiny_pages: None,
) -> None:
    """(In pages of two rows: the row limit is hit after a page was already checked and
    spooled, and still nothing is written.)"""
    s = await expense_setup(sessionmaker, admin, alice, bob, 4)
    h = manager_headers(s.definition)
    rows = [
        row_of(h, **{"Task ID": tid, "Category": "travel", "Decision": "approve"})
        for tid in s.task_ids
    ]
    body = await _refused(sessionmaker, alice, xlsx(h, rows), 413, "rows.xlsx")
    assert "BATCH_MAX_IMPORT_ROWS" in body["detail"]
    many = zipped(
        {f"t{i}.xlsx": vertical([("Task ID", 1), ("Decision", "approve")]) for i in range(13)}
    )
    body = await _refused(sessionmaker, alice, many, 413, "many.zip")
    assert "BATCH_MAX_ZIP_MEMBERS" in body["detail"]
    big = xlsx(h, [row_of(h, **{"Task ID": 1, "Comment": "x" * 2000, "Decision": "approve"})] * 3)
    big += b"\0" * 70_000
    body = await _refused(sessionmaker, alice, big, 413, "big.xlsx")
    assert body["error"] == "PayloadTooLarge"
    ok = await upload(alice, xlsx(h, rows[:3]))
    assert (await wait_for(alice, ok["id"]))["success"] == 3


async def test_an_exported_template_imports(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """The export and the import share one layout: a template filled in (Decision and
    Category) imports as it is, in both formats."""
    s = await expense_setup(sessionmaker, admin, alice, bob, 4)
    body = {"definition_key": "expense", "node_id": "manager", "task_ids": s.task_ids[:2]}
    r = await alice.post("/api/v1/approval-templates", json={**body, "format": "xlsx"})
    assert r.status_code == 200, r.text
    wb = load_workbook(io.BytesIO(r.content))
    ws = wb.worksheets[0]
    header = [c.value for c in ws[1]]
    for row in range(2, 4):
        ws.cell(row, header.index("Category *") + 1).value = "meals"
        ws.cell(row, header.index("Decision") + 1).value = "approve"
    buf = io.BytesIO()
    wb.save(buf)
    done = await wait_for(alice, (await upload(alice, buf.getvalue()))["id"])
    assert (done["success"], done["failed"]) == (2, 0), done

    body["task_ids"] = s.task_ids[2:]
    r = await alice.post("/api/v1/approval-templates", json={**body, "format": "zip"})
    assert r.status_code == 200, r.text
    members: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        for name in zf.namelist():
            form = load_workbook(io.BytesIO(zf.read(name)))
            sheet = form.worksheets[0]
            for cells in sheet.iter_rows(min_row=2):
                if cells[0].value in ("Category *", "Decision"):
                    cells[1].value = "travel" if cells[0].value == "Category *" else "reject"
            out = io.BytesIO()
            form.save(out)
            members[name] = out.getvalue()
    done = await wait_for(alice, (await upload(alice, zipped(members), name="t.zip"))["id"])
    assert (done["success"], done["failed"]) == (2, 0), done
    assert (await instance_of(sessionmaker, s.task_ids[3])).status == "rejected"
