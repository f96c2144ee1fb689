"""Excel input and output no user can break.

Uploads: a small file whose parts unpack to something huge (3 million style entries,
10 million shared strings, a row of 5 million cells, a 100 MB image, a DTD that
expands entities, …) is refused with a 413 / 422 in the API's error shape while its
parts stream, before openpyxl reads them — and 4 of them at once leave a real server's
memory flat and ``/health`` answering. Uploads beyond ``BATCH_IMPORT_CONCURRENCY`` wait
their turn, then get a 503 with Retry-After.

Downloads: a title or form value holding a character XML cannot hold (a control
character, U+FFFE) is written as U+FFFD in the template (xlsx and zip), the error file
and the results workbook — which used to answer 200 with an empty body for every other
user; and a template that fails while it is built is an error, never a truncated 200.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openpyxl import Workbook, load_workbook
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches import imports
from app.config import Settings
from app.excel import template
from app.models import Batch, BatchDetail
from tests.batch_helpers import count, create, expense_setup, wait_for
from tests.conftest import Actor, LiveServer
from tests.serve_proc import RssWatch, ServeProcess

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
IMPORT = "/api/v1/batches/import"
TEMPLATES = "/api/v1/approval-templates"
MAIN = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
SST_TYPE = (
    b'<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
    b'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
)
RSS_GROWTH_MAX = 300 * 1024 * 1024
"""4 hostile uploads at once may grow the server by less than this."""


# ------------------------------------------------------------------- building bombs


@dataclass(frozen=True)
class Repeat:
    """A member written as ``head``, ``unit`` × ``times``, ``tail``: megabytes of XML
    from a few kilobytes of upload, built in a fraction of a second."""

    head: bytes
    unit: bytes
    times: int
    tail: bytes = b""

    def write(self, zf: zipfile.ZipFile, name: str) -> None:
        with zf.open(name, "w") as member:
            member.write(self.head)
            block = self.unit * max(1, (1 << 20) // len(self.unit))
            per, left = len(block) // len(self.unit), self.times
            while left >= per:
                member.write(block)
                left -= per
            member.write(self.unit * left + self.tail)


def template_file(*, rows: bool = True, vertical: bool = False) -> bytes:
    """A real workbook with an approval template's two required columns (as a zip's
    per-task form: ``vertical``)."""
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    lines = [["Field", "Value"], ["Task ID", 1], ["Decision", "approve"]]
    for line in lines if vertical else [["Task ID", "Decision"], [1, "approve"]][: 1 + rows]:
        ws.append(line)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def package(members: dict[str, bytes | Repeat], *, shared_strings: bool = False) -> bytes:
    """``template_file()`` with ``members`` replaced or added."""
    base = zipfile.ZipFile(io.BytesIO(template_file()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for info in base.infolist():
            if info.filename in members:
                continue
            data = base.read(info)
            if info.filename == "[Content_Types].xml" and shared_strings:
                data = data.replace(b"</Types>", SST_TYPE + b"</Types>")
            zf.writestr(info.filename, data)
        for name, member in members.items():
            if isinstance(member, Repeat):
                member.write(zf, name)
            else:
                zf.writestr(name, member)
    return out.getvalue()


def styles(unit: bytes, times: int, collection: str = "cellXfs") -> bytes:
    head = f'<styleSheet {MAIN}><{collection} count="{times}">'.encode()
    return package(
        {"xl/styles.xml": Repeat(head, unit, times, f"</{collection}></styleSheet>".encode())}
    )


def shared_strings(times: int) -> bytes:
    head = f'<sst {MAIN} count="{times}" uniqueCount="{times}">'.encode()
    return package(
        {"xl/sharedStrings.xml": Repeat(head, b"<si/>", times, b"</sst>")}, shared_strings=True
    )


def sheet(head: str, unit: bytes, times: int, tail: str) -> bytes:
    return package(
        {
            "xl/worksheets/sheet1.xml": Repeat(
                f"<worksheet {MAIN}>{head}".encode(), unit, times, f"{tail}</worksheet>".encode()
            )
        }
    )


def columns(times: int) -> bytes:
    """One row of ``times`` cells."""
    return sheet('<sheetData><row r="1">', b"<c/>", times, "</row></sheetData>")


XF = b'<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
FONT = b'<font><sz val="11"/><name val="Calibri"/></font>'
LAUGHS = "".join(
    f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
)  # the "billion laughs": lol9 expands to 10**9 "lol"
DTD = f'<?xml version="1.0"?><!DOCTYPE worksheet [<!ENTITY lol0 "lol">{LAUGHS}]>'


def nested_forms(inner: bytes) -> bytes:
    """A .zip of per-task workbooks whose second workbook is ``inner``."""
    form = template_file(vertical=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("task-1.xlsx", form)
        zf.writestr("task-2.xlsx", inner)
    return buf.getvalue()


# Each: the bomb, the status, the words the error's detail holds.
BOMBS: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "3 million cell formats, 186 MB unpacked (the field test's file)": (
        lambda: styles(XF, 3_000_000), 413, "xl/styles.xml in the upload unpacks to 186000126 bytes"
        "; the limit is 33554432 bytes (BATCH_MAX_PART_BYTES)"
    ),
    "3 million short cell formats, 15 MB unpacked": (
        lambda: styles(b"<xf/>", 3_000_000), 413,
        "xl/styles.xml in the upload holds more than 10000 cell formats (BATCH_MAX_STYLE_ENTRIES)",
    ),
    "20 000 fonts": (lambda: styles(FONT, 20_000, "fonts"), 413, "10000 fonts"),
    "10 million shared strings (the field test's file)": (
        lambda: shared_strings(10_000_000), 413, "(BATCH_MAX_PART_BYTES)"
    ),
    "6 million shared strings, 30 MB unpacked": (
        lambda: shared_strings(6_000_000), 413,
        "xl/sharedStrings.xml in the upload holds more than 500000 shared strings "
        "(BATCH_MAX_SHARED_STRINGS)",
    ),
    "a row of 5 million cells": (
        lambda: columns(5_000_000), 413,
        "A row of xl/worksheets/sheet1.xml in the upload holds more than 16384 cells "
        "(BATCH_MAX_ROW_CELLS)",
    ),
    "300 000 empty rows": (
        lambda: sheet("<sheetData>", b"<row/>", 300_000, "</sheetData>"), 413,
        "more than 200000 rows (BATCH_MAX_SHEET_ROWS)",
    ),
    "a million elements outside the rows": (
        lambda: sheet("<sheetData>", b"<x/>", 1_000_000, "</sheetData>"), 413,
        "more than 100000 XML elements outside its rows (BATCH_MAX_PART_ELEMENTS)",
    ),
    "a 100 MB image": (
        lambda: package({"xl/media/image1.png": Repeat(b"\x89PNG\r\n\x1a\n", b"\0", 100 << 20)}),
        413, "xl/media/image1.png in the upload unpacks to",
    ),
    "a 40 MB drawing": (
        lambda: package(
            {"xl/drawings/drawing1.xml": Repeat(b"<wsDr>", b"<sp/>", 8 << 20, b"</wsDr>")}
        ),
        413, "(BATCH_MAX_PART_BYTES)",
    ),
    "150 sheets": (
        lambda: package({"xl/workbook.xml": Repeat(
            f"<workbook {MAIN}><sheets>".encode(), b'<sheet name="s" sheetId="1"/>', 150,
            b"</sheets></workbook>")}),
        413, "more than 100 sheets (BATCH_MAX_SHEETS)",
    ),
    "entities that expand to a billion laughs": (
        lambda: package({"xl/worksheets/sheet1.xml": f"{DTD}<worksheet {MAIN}><sheetData><row>"
                         "<c t=\"inlineStr\"><is><t>&lol9;</t></is></c></row></sheetData>"
                         "</worksheet>".encode()}),
        422, "declares a document type (DTD)",
    ),
    "XML nested 100 000 levels deep": (
        lambda: sheet("<sheetData>", b"<x>", 100_000, "</sheetData>"), 422, "levels deep"
    ),
    "a zip of forms holding a styles bomb": (
        lambda: nested_forms(styles(b"<xf/>", 3_000_000)), 413,
        "xl/styles.xml in task-2.xlsx holds more than 10000 cell formats",
    ),
}  # fmt: skip


async def refused(
    sm: async_sessionmaker[AsyncSession], actor: Actor, data: bytes, status: int, name: str
) -> dict[str, Any]:
    before = (await count(sm, select(Batch)), await count(sm, select(BatchDetail)))
    r = await actor.post(IMPORT, files={"file": (name, data, XLSX)})
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) >= {"error", "detail"} and isinstance(body["detail"], str), body
    assert (await count(sm, select(Batch)), await count(sm, select(BatchDetail))) == before
    return body


@pytest.mark.parametrize("bomb", list(BOMBS))
async def test_bombs_are_refused_while_their_parts_stream(
    sessionmaker: async_sessionmaker[AsyncSession], alice: Actor, bomb: str
) -> None:
    make, status, words = BOMBS[bomb]
    data = make()
    assert len(data) < 1 << 20, len(data)  # a small upload
    name = "forms.zip" if "zip" in bomb else "tasks.xlsx"
    body = await refused(sessionmaker, alice, data, status, name)
    assert body["error"] == ("PayloadTooLarge" if status == 413 else "ValidationError")
    assert words in body["detail"], body["detail"]


async def test_a_worksheet_named_as_the_shared_strings_is_refused(
    sessionmaker: async_sessionmaker[AsyncSession], alice: Actor
) -> None:
    """openpyxl drops each shared string once read, not each row: a large worksheet
    named as the shared strings would stay whole in memory."""
    rows = Repeat(f"<worksheet {MAIN}><sheetData>".encode(), b"<row><c/></row>", 60_000,
                  b"</sheetData></worksheet>")  # fmt: skip
    data = package({"xl/sharedStrings.xml": rows}, shared_strings=True)
    body = await refused(sessionmaker, alice, data, 422, "tasks.xlsx")
    assert "xl/sharedStrings.xml in the upload is not the kind of part" in body["detail"]


async def test_an_upload_waits_for_its_turn_then_is_told_to_retry(
    app: FastAPI, sessionmaker: async_sessionmaker[AsyncSession], alice: Actor
) -> None:
    """(One slot, a 50 ms wait: ``BATCH_IMPORT_CONCURRENCY`` / ``BATCH_IMPORT_WAIT``.)"""
    slots = app.state.import_slots = imports.ImportSlots(1, 0.05)
    data = package({})
    async with slots.hold():  # another upload is being read
        r = await alice.post(IMPORT, files={"file": ("tasks.xlsx", data, XLSX)})
    assert r.status_code == 503, r.text
    assert r.json() == {
        "error": "Unavailable",
        "detail": "Too many uploads are being read right now; send the file again in a moment.",
    }
    assert int(r.headers["retry-after"]) > 0
    assert await count(sessionmaker, select(Batch)) == 0
    r = await alice.post(IMPORT, files={"file": ("tasks.xlsx", data, XLSX)})
    assert r.status_code == 202, r.text  # read this time


async def test_four_bombs_at_once_leave_the_server_flat_and_answering(
    settings: Settings, alice: Actor
) -> None:
    """A real ``batchd serve``: its RSS while 4 hostile uploads are read at once (the
    field test's styles bomb grew it by 2.2 GB), and ``/health`` polled meanwhile."""
    bombs = [
        styles(b"<xf/>", 3_000_000),
        shared_strings(6_000_000),
        shared_strings(10_000_000),
        columns(5_000_000),
    ]
    server = ServeProcess(settings.model_copy(update={"redis_url": None}))
    try:
        await server.ready()
        headers = {"Authorization": f"Bearer {alice.token}"}
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            empty = template_file(rows=False)  # read through openpyxl, then refused
            warm = await http.post(IMPORT, headers=headers, files={"file": ("t.xlsx", empty, XLSX)})
            assert warm.status_code == 422 and "no task rows" in warm.text, warm.text
            healthy: list[int] = []
            done = asyncio.Event()

            async def poll() -> None:
                while not done.is_set():
                    healthy.append((await http.get("/health")).status_code)

            async def send(data: bytes) -> httpx.Response:
                return await http.post(
                    IMPORT, headers=headers, files={"file": ("b.xlsx", data, XLSX)}
                )

            watch = RssWatch(server.proc.pid)
            before = watch.rss()
            async with watch:
                poller = asyncio.create_task(poll())
                answers = await asyncio.gather(*(send(b) for b in bombs))
                done.set()
                await poller
        assert [r.status_code for r in answers] == [413] * 4, [r.text for r in answers]
        assert all(r.json()["error"] == "PayloadTooLarge" for r in answers)
        assert healthy and set(healthy) == {200}
        assert watch.peak - before < RSS_GROWTH_MAX, (before, watch.peak)
    finally:
        server.stop()


# ------------------------------------------------------------- control characters

TITLE = "Holiday\x0b\ufffe"
CITY = "Par\x08is"


async def _control_setup(
    sm: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> list[int]:
    s = await expense_setup(
        sm, admin, alice, bob, 2, title_prefix=TITLE, form_data={"city": CITY, "amount": 5}
    )
    return s.task_ids


def _cells(content: bytes) -> list[list[Any]]:
    ws = load_workbook(io.BytesIO(content)).worksheets[0]
    return [list(row) for row in ws.iter_rows(values_only=True)]


def _assert_built_whole(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    assert int(r.headers["content-length"]) == len(r.content) > 0


async def test_control_characters_in_the_template_become_replacement_characters(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    t = await _control_setup(sessionmaker, admin, alice, bob)
    body = {"definition_key": "expense", "node_id": "manager"}
    r = await alice.post(TEMPLATES, json=body)
    _assert_built_whole(r)
    rows = _cells(r.content)
    col = {h: i for i, h in enumerate(rows[0])}
    assert [(row[col["Task ID"]], row[col["Title"]], row[col["City"]]) for row in rows[1:]] == [
        (t[0], "Holiday\ufffd\ufffd 1", "Par\ufffdis"),
        (t[1], "Holiday\ufffd\ufffd 2", "Par\ufffdis"),
    ]
    r = await alice.post(TEMPLATES, json={**body, "format": "zip"})
    _assert_built_whole(r)
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        form = dict((row[0], row[1]) for row in _cells(zf.read(f"task-{t[0]}.xlsx")))
    assert (form["Title"], form["City"]) == ("Holiday\ufffd\ufffd 1", "Par\ufffdis")


async def test_control_characters_in_the_error_file_and_results(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    t = await _control_setup(sessionmaker, admin, alice, bob)
    batch = await create(
        alice,
        {"type": "task.approve", "ids": t, "params": {"decision": "approve",
                                                       "form_data": {"category": "boat"}}},
    )  # fmt: skip
    done = await wait_for(alice, batch["id"])
    assert done["failed"] == 2, done
    r = await alice.get(f"/api/v1/batches/{batch['id']}/error-file")
    _assert_built_whole(r)
    rows = _cells(r.content)
    col = {h: i for i, h in enumerate(rows[0])}
    assert [(row[col["Title"]], row[col["City"]]) for row in rows[1:]] == [
        ("Holiday\ufffd\ufffd 1", "Par\ufffdis"),
        ("Holiday\ufffd\ufffd 2", "Par\ufffdis"),
    ]
    r = await alice.get(f"/api/v1/batches/{batch['id']}/results", params={"format": "xlsx"})
    assert r.status_code == 200, r.text
    rows = _cells(r.content)
    assert [row[rows[0].index("title")] for row in rows[1:]] == [
        "Holiday\ufffd\ufffd 1",
        "Holiday\ufffd\ufffd 2",
    ]
    r = await alice.get(f"/api/v1/batches/{batch['id']}/results")  # CSV holds them as they are
    assert r.status_code == 200 and f"{TITLE} 1" in r.content.decode(), r.text


async def test_a_template_that_fails_while_built_is_an_error_not_a_truncated_200(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 2)

    def broken(*_args: Any) -> bytes:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(template, "task_form", broken)
    body = {"definition_key": "expense", "node_id": "manager", "format": "zip"}
    async with httpx.AsyncClient(base_url=live_server.url, headers=alice.headers) as http:
        r = await http.post(TEMPLATES, json=body)
    assert r.status_code == 500, (r.status_code, r.content[:200])
