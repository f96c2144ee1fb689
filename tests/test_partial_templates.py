"""The approver's round trip (issue 21): export a template of every pending task, decide
a few rows, leave the rest blank or delete them, import — only the decided rows become
items, the undecided ones are counted as skipped; the error file is the template again
(dropdowns, option sheet, real dates, frozen header, the same protection) and imports
once fixed; the results xlsx writes ``finished_at`` as a real UTC date-time."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from openpyxl import load_workbook
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import ActionLog, Batch, Task
from tests.batch_helpers import count, details, expense_setup, wait_for
from tests.conftest import Actor
from tests.factories import bulk_tasks, create_definition
from tests.test_excel_import import instance_of, upload, zipped
from tests.test_excel_template import all_types_definition, validations
from tests.tooling import missing_tool

TEMPLATES = "/api/v1/approval-templates"


async def template(actor: Actor, fmt: str = "xlsx", **body: Any) -> bytes:
    r = await actor.post(
        TEMPLATES, json={"definition_key": "expense", "node_id": "manager", "format": fmt, **body}
    )
    assert r.status_code == 200, r.text
    return r.content


def saved(wb: Workbook) -> bytes:
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def resaved(data: bytes) -> bytes:
    """The file opened and saved again, as LibreOffice would (validations kept)."""
    return saved(load_workbook(io.BytesIO(data)))


def by_header(ws: Worksheet) -> dict[str, int]:
    return {str(c.value): c.column for c in ws[1]}


def sheet_protection(data: bytes, sheet: str = "xl/worksheets/sheet1.xml") -> dict[str, str]:
    """The ``<sheetProtection>`` attributes exactly as saved (Excel reads these)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        xml = zf.read(sheet).decode()
    found = re.search(r"<sheetProtection([^>]*)/>", xml)
    assert found is not None, xml[:500]
    return dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))


async def test_a_partial_template_imports_only_its_decided_rows(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    n = 7
    s = await expense_setup(sessionmaker, admin, alice, bob, n)
    t = s.task_ids
    data = await template(alice)
    # Rows may be deleted on the protected sheet: deleteRows="0" is Excel's "allowed";
    # inserting (a row without a task) and editing locked cells stay refused.
    protection = sheet_protection(data)
    assert protection["sheet"] == "1" and protection["deleteRows"] == "0"
    assert protection.get("insertRows") != "0"

    wb = load_workbook(io.BytesIO(data))
    ws = wb["Tasks"]
    col = by_header(ws)
    assert [ws.cell(r, col["Task ID"]).value for r in range(2, n + 2)] == t
    ws.cell(2, col["Decision"]).value = "approve"
    ws.cell(2, col["Category *"]).value = "meals"
    ws.cell(3, col["Decision"]).value = "reject"
    ws.cell(4, col["Comment"]).value = "ask HR first"  # undecided: comment ignored
    ws.cell(4, col["Category *"]).value = "boat"  # ... and so is a bad value
    ws.delete_rows(5)  # t[3] is gone: not skipped, not an item
    batch = await upload(alice, resaved(saved(wb)))
    assert (batch["total"], batch["skipped_rows"]) == (2, n - 3)
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["success"], done["failed"]) == ("completed", 2, 0), done
    assert done["skipped_rows"] == n - 3

    items = {d["item_id"]: d for d in await details(alice, batch["id"])}
    assert set(items) == {t[0], t[1]}
    assert [items[t[0]]["row"], items[t[1]]["row"]] == [2, 3]
    first, second = [await instance_of(sessionmaker, tid) for tid in t[:2]]
    assert (first.current_node_id, first.form_data["category"]) == ("finance", "meals")
    assert second.status == "rejected"
    async with sessionmaker() as session:  # skipped tasks: untouched and never locked
        rest = (
            await session.execute(
                select(Task.status, Task.locked_by_batch_id).where(Task.id.in_(t[2:]))
            )
        ).all()
    assert sorted(rest) == [("pending", None)] * (n - 2)
    async with sessionmaker() as session:  # the action log's request summary says it too
        logged = await session.scalar(
            select(ActionLog.detail).where(
                ActionLog.batch_id == batch["id"], ActionLog.action == "batch.created"
            )
        )
    assert logged is not None
    assert (logged["source"], logged["total"], logged["skipped_rows"]) == ("excel", 2, n - 3)


async def test_row_numbers_are_the_uploaded_sheets_own_after_a_deletion(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    s = await expense_setup(sessionmaker, admin, alice, bob, 4)
    wb = load_workbook(io.BytesIO(await template(alice)))
    ws = wb["Tasks"]
    col = by_header(ws)
    ws.delete_rows(2, 2)  # the first two tasks gone: t[2] is now on row 2, t[3] on row 3
    ws.cell(3, col["Decision"]).value = "approve"  # category missing
    batch = await upload(alice, saved(wb))
    assert (batch["total"], batch["skipped_rows"]) == (1, 1)
    await wait_for(alice, batch["id"])
    [failed] = await details(alice, batch["id"], status="failed")
    assert (failed["item_id"], failed["row"]) == (s.task_ids[3], 3)
    assert failed["error"] == "row 3: Category is required"
    assert failed["error_code"] == "validation"


LIBREOFFICE_SCRIPT = Path(__file__).parent / "libreoffice" / "delete_rows.py"


def libreoffice_python() -> str | None:
    """The system Python with LibreOffice's ``uno`` module (Debian: libreoffice-calc-nogui
    and python3-uno), or None."""
    python = shutil.which("python3", path="/usr/bin")
    if shutil.which("soffice") is None or python is None:
        return None
    found = subprocess.run([python, "-c", "import uno"], capture_output=True, check=False)
    return python if found.returncode == 0 else None


def delete_in_libreoffice(data: bytes, rows: list[int], tmp: Path) -> tuple[bool, bytes]:
    """Delete sheet rows as a person does in LibreOffice Calc; (still protected, file)."""
    python = libreoffice_python()
    if python is None:
        missing_tool("LibreOffice (soffice and python3-uno) is not installed")
    source, target = tmp / "template.xlsx", tmp / "saved.xlsx"
    source.write_bytes(data)
    run = subprocess.run(
        [python, str(LIBREOFFICE_SCRIPT), str(source), str(target), *map(str, rows)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])["protected"], target.read_bytes()


async def test_rows_are_deleted_in_libreoffice_and_the_rest_imports(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    tmp_path: Path,
) -> None:
    """The protected template in a real spreadsheet program: Calc's "Delete Rows" removes
    task rows (none of their cells is locked) but not the header (locked), the sheet
    stays protected, and the saved file imports with the deleted tasks simply absent."""
    s = await expense_setup(sessionmaker, admin, alice, bob, 5)
    t = s.task_ids
    protected, data = delete_in_libreoffice(await template(alice), [1, 3, 5], tmp_path)
    assert protected
    wb = load_workbook(io.BytesIO(data))
    ws = wb["Tasks"]
    col = by_header(ws)
    assert "Task ID" in col  # the header row survived its delete
    assert [ws.cell(r, col["Task ID"]).value for r in range(2, ws.max_row + 1)] == [
        t[0],
        t[2],
        t[4],
    ]
    ws.cell(2, col["Decision"]).value = "approve"
    ws.cell(2, col["Category *"]).value = "meals"
    ws.cell(4, col["Decision"]).value = "reject"
    batch = await upload(alice, saved(wb))
    assert (batch["total"], batch["skipped_rows"]) == (2, 1)
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (2, 0), done
    assert {d["item_id"] for d in await details(alice, batch["id"])} == {t[0], t[4]}


async def test_a_template_with_no_decision_is_refused_whole(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 3)
    wb = load_workbook(io.BytesIO(await template(alice)))
    wb["Tasks"].cell(2, by_header(wb["Tasks"])["Comment"]).value = "a comment is no decision"
    body = await upload(alice, saved(wb), status=422)
    assert body["error"] == "ValidationError"  # app.errors.ValidationFailed
    assert body["detail"] == (
        "No row has a Decision: fill in approve or reject for the tasks to decide "
        "(3 rows were left blank)."
    )
    assert [f["loc"] for f in body["fields"]] == [["file"]]
    assert await count(sessionmaker, select(Batch.id)) == 0


async def test_a_zip_workbook_without_a_decision_is_skipped(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    s = await expense_setup(sessionmaker, admin, alice, bob, 3)
    members: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(await template(alice, "zip"))) as zf:
        for name in zf.namelist():
            form = load_workbook(io.BytesIO(zf.read(name)))
            if name == f"task-{s.task_ids[1]}.xlsx":
                for cells in form.worksheets[0].iter_rows(min_row=2):
                    if cells[0].value in ("Category *", "Decision"):
                        cells[1].value = "other" if cells[0].value != "Decision" else "approve"
            members[name] = saved(form)
    batch = await upload(alice, zipped(members), name="forms.zip")
    assert (batch["total"], batch["skipped_rows"]) == (1, 2)
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (1, 0), done
    assert [d["item_id"] for d in await details(alice, batch["id"])] == [s.task_ids[1]]


async def test_the_error_file_is_the_template_again(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor
) -> None:
    definition = await create_definition(admin, all_types_definition(alice.id))
    ids = await bulk_tasks(
        sessionmaker,
        definition_id=definition["id"],
        definition_key="claims",
        node_id="review",
        assignee_id=alice.id,
        initiator_id=admin.id,
        n=4,
        form_data={"amount": 7, "date": "2026-02-03", "ref": "R-1", "secret": "x"},
    )
    r = await alice.post(TEMPLATES, json={"definition_key": "claims", "node_id": "review"})
    assert r.status_code == 200, r.text
    original = r.content
    wb = load_workbook(io.BytesIO(original))
    ws = wb["Tasks"]
    col = by_header(ws)
    ws.cell(2, col["Decision"]).value = "approve"
    ws.cell(2, col["Category *"]).value = "travel"
    ws.cell(3, col["Decision"]).value = "approve"
    ws.cell(3, col["Category *"]).value = "boat"
    ws.cell(4, col["Decision"]).value = "approve"  # category missing
    batch = await upload(alice, saved(wb))
    assert (batch["total"], batch["skipped_rows"]) == (3, 1)
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (1, 2), done

    r = await alice.get(f"/api/v1/batches/{batch['id']}/error-file")
    assert r.status_code == 200, r.text
    errors = load_workbook(io.BytesIO(r.content))
    assert errors.sheetnames == ["Errors", "Lists"]
    ews = errors["Errors"]
    ecol = by_header(ews)
    assert list(ecol) == [*col, "Error"]
    assert [ews.cell(row, ecol["Task ID"]).value for row in (2, 3)] == ids[1:3]
    assert ews.cell(2, ecol["Error"]).value == "row 3: Category must be one of travel, meals, other"
    assert ews.cell(3, ecol["Error"]).value == "row 4: Category is required"
    # The template's dropdowns and checks, column for column, over the error rows.
    template_dvs = validations(wb["Tasks"])
    error_dvs = validations(ews)
    assert len(error_dvs) == len(template_dvs) + 1 == 13  # + the read-only Error column
    assert {k: (v.type, v.formula1, v.formula2) for k, v in error_dvs.items()} == {
        k: (v.type, v.formula1, v.formula2) for k, v in template_dvs.items()
    } | {"M": ("custom", "FALSE", None)}
    assert str(error_dvs["L"].sqref) == "L2:L3"  # Decision, both error rows
    assert errors["Lists"].sheet_state == "hidden"
    assert [c.value for c in errors["Lists"][1]] == [c.value for c in wb["Lists"][1]]
    assert ews.freeze_panes == "A2"
    date_cell = ews.cell(2, ecol["Date"])
    assert date_cell.is_date and date_cell.value == datetime(2026, 2, 3)
    # The same protection: the header locked, rows deletable (no locked cell below the
    # header), the read-only columns and the Error column refusing typing.
    assert ews.protection.sheet
    assert all(cell.protection.locked for cell in ews[1])
    assert not any(cell.protection.locked for cell in ews[2])
    assert error_dvs["M"].errorTitle == "Read only"  # Error
    assert sheet_protection(r.content)["deleteRows"] == "0"

    ews.cell(2, ecol["Category *"]).value = "meals"
    ews.cell(3, ecol["Category *"]).value = "other"
    ews.cell(3, ecol["Decision"]).value = "reject"
    fixed = resaved(saved(errors))
    assert len(validations(load_workbook(io.BytesIO(fixed))["Errors"])) == 13  # kept
    again = await upload(alice, fixed)
    redone = await wait_for(alice, again["id"])
    assert (redone["success"], redone["failed"], again["skipped_rows"]) == (2, 0, 0), redone
    assert (await instance_of(sessionmaker, ids[1])).form_data["category"] == "meals"
    assert (await instance_of(sessionmaker, ids[2])).status == "rejected"


async def test_results_xlsx_has_real_utc_date_times(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 2)
    wb = load_workbook(io.BytesIO(await template(alice)))
    ws = wb["Tasks"]
    col = by_header(ws)
    ws.cell(2, col["Decision"]).value = "reject"
    batch = await upload(alice, saved(wb))
    await wait_for(alice, batch["id"])
    url = f"/api/v1/batches/{batch['id']}/results"

    r = await alice.get(url, params={"format": "xlsx"})
    assert r.status_code == 200, r.text
    sheet = load_workbook(io.BytesIO(r.content))["Results"]
    header = [c.value for c in sheet[1]]
    cell = sheet.cell(2, header.index("finished_at (UTC)") + 1)
    assert isinstance(cell.value, datetime) and cell.is_date
    assert cell.number_format == "yyyy-mm-dd hh:mm:ss"

    r = await alice.get(url)
    [row] = list(csv.DictReader(io.StringIO(r.text)))
    assert row["finished_at"].endswith("Z")
    as_csv = datetime.fromisoformat(row["finished_at"].removesuffix("Z"))
    assert abs((as_csv - cell.value).total_seconds()) < 1  # the same instant, in UTC


async def test_a_changed_task_id_fails_its_row_by_the_title(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Task ID refuses typing only by a validation, which a paste passes: row 2 given
    row 4's Task ID would decide task 3 while it reads "Trip 1". Its Title no longer
    names its task, so the row fails (``validation``) and no task is touched; a row
    whose Title was cleared is not checked."""
    s = await expense_setup(sessionmaker, admin, alice, bob, 4)
    t = s.task_ids
    wb = load_workbook(io.BytesIO(await template(alice)))
    ws = wb["Tasks"]
    col = by_header(ws)
    assert [ws.cell(r, col["Title"]).value for r in (2, 3)] == ["Trip 1", "Trip 2"]
    ws.cell(2, col["Task ID"]).value = t[2]  # pasted over: row 4 (t[2]) stays undecided
    ws.cell(3, col["Title"]).value = None
    for r in (2, 3):
        ws.cell(r, col["Decision"]).value = "approve"
        ws.cell(r, col["Category *"]).value = "meals"
    batch = await upload(alice, saved(wb))
    assert (batch["total"], batch["failed"], batch["skipped_rows"]) == (2, 1, 2)
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (1, 1), done
    [failed] = await details(alice, batch["id"], status="failed")
    assert (failed["item_id"], failed["row"], failed["error_code"]) == (t[2], 2, "validation")
    assert failed["error"] == (
        f"row 2: Task ID {t[2]} does not belong to this row's Title (was the Task ID "
        "changed?): put the row's own Task ID back, or copy the row from a new template"
    )
    async with sessionmaker() as session:
        states = dict(
            (await session.execute(select(Task.id, Task.status).where(Task.id.in_(t)))).all()
        )
    assert states == {t[0]: "pending", t[1]: "completed", t[2]: "pending", t[3]: "pending"}
