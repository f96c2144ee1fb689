"""The web console in a real browser: Debian's Chromium driven by Playwright, against
the app under uvicorn (the embedded default: SQLite + the in-process runner).

Why a browser and not an HTTP client: the pages are shells filled by JavaScript from
the JSON API, so only a browser shows that sign-in, the CSRF header, EventSource
progress and the actions really work (and that the CSP lets them). Each scenario also
saves a screenshot of its page under build/screenshots/ (git-ignored), or under the
folder ``BATCHD_SCREENSHOTS`` names — ``make screenshots`` refreshes the README's copies
in docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from openpyxl import load_workbook
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import ProcessInstance, Task
from tests.batch_helpers import create, expense_setup, wait_for
from tests.conftest import ON_POSTGRES, Actor, LiveServer
from tests.factories import bulk_tasks, create_definition, expense_definition
from tests.tooling import missing_tool

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("BATCHD_SCREENSHOTS") or ROOT / "build" / "screenshots")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        ViewportSize,
        async_playwright,
    )
    from playwright.async_api import expect as pw_expect

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - the dev extra installs it
    HAVE_PLAYWRIGHT = False


def browser_skip_reason() -> str | None:
    """Why the browser scenarios cannot run here (None: they can)."""
    if ON_POSTGRES:
        return "browser tests run once, on the embedded default (the console only calls the API)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
    if not HAVE_PLAYWRIGHT:
        return "playwright is not installed (the dev extra)"
    return None


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One Chromium for the whole session (launching is the slow part)."""
    reason = browser_skip_reason()
    if reason:
        if ON_POSTGRES:
            pytest.skip(reason)
        missing_tool(reason)
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Console:
    """A browser context on the live server that records what must never happen: an
    uncaught script error, a CSP violation, a token in a URL."""

    server: LiveServer
    context: BrowserContext
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    async def page(self) -> Page:
        page = await self.context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"console: {msg.text}")
                if "Content Security Policy" in msg.text
                else None
            ),
        )
        page.on("request", lambda request: self.urls.append(request.url))
        return page

    def url(self, path: str) -> str:
        return self.server.url + path

    async def sign_in(self, page: Page, token: str, path: str = "/tasks") -> None:
        await page.goto(self.url(path))
        await page.wait_for_url(re.compile(r"/sign-in\?next="))
        await page.fill("#token", token)
        await page.click("#sign-in-form button[type=submit]")
        await page.wait_for_url(self.url(path))

    def check_clean(self, *tokens: str) -> None:
        assert not self.errors, self.errors
        for token in tokens:
            assert not [u for u in self.urls if token in u], "a token appeared in a URL"


@pytest.fixture
async def console(browser: Browser, live_server: LiveServer) -> AsyncIterator[Console]:
    context = await browser.new_context(viewport=DESKTOP, accept_downloads=True)
    try:
        yield Console(live_server, context)
    finally:
        await context.close()


async def shot(page: Page, name: str) -> None:
    await asyncio.to_thread(SCREENSHOTS.mkdir, parents=True, exist_ok=True)
    await page.screenshot(
        path=str(SCREENSHOTS / f"{name}.png"), full_page=True, animations="disabled"
    )


async def wait_done(page: Page) -> None:
    """The batch page's bar reaches 100% and the status badge says completed (locator
    assertions: a string predicate would need 'unsafe-eval', which the CSP refuses)."""
    await pw_expect(page.locator("#batch-status")).to_have_text("completed")
    await pw_expect(page.locator("#batch-progress")).to_have_js_property("value", 1)


# --------------------------------------------------------------------------- server side


async def test_pages_send_an_unsigned_visitor_to_sign_in(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/sign-in"
    r = await client.get("/batches/7?status=failed")
    assert r.status_code == 303
    assert r.headers["location"] == "/sign-in?next=/batches/7%3Fstatus%3Dfailed"
    r = await client.get("/sign-in")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "<script>" not in r.text and " style=" not in r.text  # nothing inline


async def test_sign_in_only_returns_to_this_site(client: httpx.AsyncClient) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "x"):
        r = await client.get("/sign-in", params={"next": target})
        assert 'data-next="/tasks"' in r.text, target
    r = await client.get("/sign-in", params={"next": "/batches?status=failed"})
    assert 'data-next="/batches?status=failed"' in r.text


async def test_assets_are_served_locally_and_pages_stay_out_of_the_schema(
    client: httpx.AsyncClient,
) -> None:
    for path in ("vendor/pico-2.1.1/pico.min.css", "vendor/pico-2.1.1/LICENSE.md", "common.js"):
        r = await client.get(f"/console/static/{path}")
        assert r.status_code == 200, path
    assert (
        (await client.get("/console/static/tasks.js"))
        .headers["content-type"]
        .startswith("text/javascript")
    )
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if not p.startswith(("/api/", "/health", "/ready", "/metrics"))]


async def test_a_signed_in_page_knows_its_viewer(client: httpx.AsyncClient, alice: Actor) -> None:
    r = await client.post("/api/v1/session", json={"token": alice.token})
    assert r.status_code == 200
    r = await client.get("/batches")
    assert r.status_code == 200 and "Alice" in r.text and "/instances" not in r.text
    assert (await client.get("/instances")).status_code == 403
    assert (await client.get("/batches/999")).status_code == 404
    assert (await client.get("/batches/abc")).status_code == 404
    # Digits that are not ASCII: "²" (int() refuses it) and Arabic-Indic "٣" (int() reads 3).
    assert (await client.get("/batches/%C2%B2")).status_code == 404
    assert (await client.get("/batches/%D9%A3")).status_code == 404
    assert (await client.get("/sign-in?next=/batches")).headers["location"] == "/batches"


# --------------------------------------------------------------------------- scenarios


async def test_sign_in_with_a_token(console: Console, alice: Actor) -> None:
    page = await console.page()
    response = await page.goto(console.url("/batches"))
    assert response is not None
    assert "/sign-in?next=/batches" in page.url  # an unsigned visitor is sent to sign in
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    await shot(page, "sign-in")

    await page.fill("#token", "bd_not-a-real-token")
    await page.click("#sign-in-form button[type=submit]")
    await pw_expect(page.locator("#sign-in-error")).to_have_text("That token is not valid.")

    await page.fill("#token", alice.token)
    await page.click("#sign-in-form button[type=submit]")
    await page.wait_for_url(console.url("/batches"))
    await pw_expect(page.locator("nav .who")).to_have_text("Alice")
    cookies = {c["name"]: c for c in await console.context.cookies()}
    session = cookies["batchd_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert alice.token not in session["value"]  # a session id, not the token

    await page.click("#sign-out")
    await page.wait_for_url(re.compile(r"/sign-in"))
    copied = {"batchd_session": session["value"]}
    async with httpx.AsyncClient(base_url=console.server.url, cookies=copied) as replay:
        assert (await replay.get("/api/v1/users/me")).status_code == 401  # ended server-side
    await page.goto(console.url("/tasks"))
    assert "/sign-in" in page.url
    console.check_clean(alice.token)


async def test_approve_50_tasks_with_preview_and_live_progress(
    console: Console,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 50)
    page = await console.page()
    await console.sign_in(page, alice.token, "/tasks?definition_key=expense&node_id=manager")
    await pw_expect(page.locator("#task-summary")).to_have_text("50 tasks match.")

    await page.click("#select-all-matching")  # 25 on the page, all 50 selected
    await pw_expect(page.locator("#selection-text")).to_have_text(
        "All 50 matching tasks are selected."
    )
    category = page.locator("#field-category")  # generated from the node's view
    await pw_expect(page.locator("label[data-field=category] .required")).to_have_count(1)
    await category.select_option("travel")
    await page.fill("#comment", "Approved from the console")

    await page.click("#preview-button")
    await pw_expect(page.locator(".dry-run-summary")).to_contain_text(
        "50 items — 50 would succeed, 0 would fail"
    )
    await shot(page, "tasks")

    await page.click("#approve-button")
    await page.wait_for_url(re.compile(r"/batches/\d+$"))
    batch_id = int(page.url.rsplit("/", 1)[1])
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await wait_done(page)
    await pw_expect(page.locator("#progress-text")).to_contain_text("100% — 50 of 50")
    assert navigations == []  # the bar moved by server-sent events, not by reloading
    await pw_expect(page.locator("#detail-summary")).to_have_text("50 items.")
    await shot(page, "batch")

    batch = (await alice.get(f"/api/v1/batches/{batch_id}")).json()
    assert batch["success"] == 50 and batch["filter"] == {
        "definition_key": "expense",
        "node_id": "manager",
    }
    assert batch["params"]["form_data"] == {"category": "travel"}

    await page.goto(console.url("/batches"))
    row = page.locator(f"tr[data-batch-id='{batch_id}']")
    await pw_expect(row.locator(".badge")).to_have_text("completed")
    await shot(page, "batches")

    await page.set_viewport_size(PHONE)
    await page.goto(console.url(f"/batches/{batch_id}"))
    await wait_done(page)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways at 390 px ({width} px)"
    await assert_controls_fit(page)
    await shot(page, "batch-390px")
    await page.goto(console.url("/batches"))
    await pw_expect(row.locator(".badge")).to_have_text("completed")
    await assert_controls_fit(page)
    console.check_clean(alice.token)


async def test_failures_show_their_sentences_retry_and_error_file(
    console: Console,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 12)
    broken = setup.task_ids[:3]
    await set_instance_status(sessionmaker, broken, "suspended")
    body = {
        "type": "task.approve",
        "ids": setup.task_ids,
        "params": {"decision": "approve", "form_data": {"category": "meals"}},
    }
    batch = await wait_for(alice, (await create(alice, body))["id"])
    assert batch["failed"] == 3

    page = await console.page()
    await console.sign_in(page, alice.token, f"/batches/{batch['id']}")
    await pw_expect(page.locator(".c-failed dd")).to_have_text("3")
    await page.select_option("#detail-status", "failed")
    await pw_expect(page.locator("#detail-summary")).to_have_text("3 items failed.")
    errors = page.locator("#detail-table td.error-text")
    await pw_expect(errors).to_have_text(
        [f"The process of task {t} is suspended, not active." for t in broken]
    )
    await shot(page, "batch-failures")

    async with page.expect_download() as download_info:
        await page.click("button[data-action=error-file]")
    download = await download_info.value
    assert download.suggested_filename == f"batch-{batch['id']}-errors.xlsx"
    content = await asyncio.to_thread(Path(await download.path()).read_bytes)
    assert content[:2] == b"PK"  # an xlsx is a zip container

    await set_instance_status(sessionmaker, broken, "active")  # the cause is fixed
    await page.click("button[data-action=retry]")
    await pw_expect(page.locator("#flash")).to_contain_text("3 failed items queued again")
    await wait_done(page)
    await pw_expect(page.locator(".c-success dd")).to_have_text("12")
    await pw_expect(page.locator(".c-failed dd")).to_have_text("0")
    await pw_expect(page.locator("button[data-action=retry]")).to_be_hidden()
    console.check_clean(alice.token)


async def test_an_operator_suspends_instances(
    console: Console,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, alice, 30)
    r = await admin.post(f"/api/v1/users/{bob.id}/grants", json={"definition_key": "expense"})
    assert r.status_code in (200, 201), r.text

    page = await console.page()
    await console.sign_in(page, bob.token, "/instances?definition_key=expense&status=active")
    await pw_expect(page.locator("#instance-summary")).to_have_text("30 instances match.")
    chosen = [
        int(x)
        for x in await page.locator(".select-instance").evaluate_all(
            "boxes => boxes.slice(0, 3).map(b => b.dataset.id)"
        )
    ]
    for instance_id in chosen:
        await page.check(f".select-instance[data-id='{instance_id}']")
    await page.select_option("#op-type", "instance.suspend")
    await pw_expect(page.locator("#op-reason")).to_be_hidden()  # suspend takes no reason
    await page.click("#op-preview")
    await pw_expect(page.locator(".dry-run-summary")).to_contain_text("3 items — 3 would succeed")
    await shot(page, "instances")

    await page.click("#op-run")
    await page.wait_for_url(re.compile(r"/batches/\d+$"))
    await wait_done(page)

    await page.goto(console.url("/instances?definition_key=expense&status=suspended"))
    await pw_expect(page.locator("#instance-summary")).to_have_text("3 instances match.")
    ids = await page.locator("#instance-table tbody tr").evaluate_all(
        "rows => rows.map(r => Number(r.dataset.instanceId))"
    )
    assert sorted(ids) == sorted(chosen)
    await pw_expect(page.locator("#instance-table .instance-status .badge")).to_have_text(
        ["suspended"] * 3
    )
    console.check_clean(bob.token)


async def test_a_user_never_sees_another_users_batch(
    console: Console,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 3)
    body = {"type": "task.approve", "ids": setup.task_ids, "params": {"decision": "approve"}}
    theirs = await create(alice, {**body, "start_suspended": True})

    page = await console.page()
    await console.sign_in(page, bob.token, "/batches")
    await pw_expect(page.locator("#batch-summary")).to_have_text("0 batches.")
    assert await page.locator(f"tr[data-batch-id='{theirs['id']}']").count() == 0

    response = await page.goto(console.url(f"/batches/{theirs['id']}"))
    assert response is not None and response.status == 404
    await pw_expect(page.locator("h1")).to_have_text("Not found")
    assert "Instances" not in await page.locator("nav").inner_text()  # bob has no grant
    response = await page.goto(console.url("/instances"))
    assert response is not None and response.status == 403
    console.check_clean(bob.token)


async def set_instance_status(
    sm: async_sessionmaker[AsyncSession], task_ids: list[int], status: str
) -> None:
    """Move the instances of these tasks straight in the database (the test's lever)."""
    async with sm() as session:
        instance_ids = list(
            await session.scalars(select(Task.instance_id).where(Task.id.in_(task_ids)))
        )
        await session.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id.in_(instance_ids))
            .values(status=status)
        )
        await session.commit()


async def test_excel_template_download_and_upload(
    console: Console,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    tmp_path: Path,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 4)
    page = await console.page()
    await console.sign_in(page, alice.token, "/tasks?definition_key=expense&node_id=manager")
    await pw_expect(page.locator("#task-summary")).to_have_text("4 tasks match.")
    async with page.expect_download() as download_info:
        await page.click("#template-xlsx")
    download = await download_info.value
    assert download.suggested_filename == "approval-expense-manager.xlsx"
    await pw_expect(page.locator("#template-status")).to_have_text("Downloaded (4 tasks).")

    filled = tmp_path / download.suggested_filename
    await download.save_as(str(filled))
    await page.set_input_files("#import-file", str(filled))  # as downloaded: no decisions
    await page.click("#import-form button[type=submit]")
    await pw_expect(page.locator("#import-form .form-error [role=alert]")).to_contain_text(
        "No row has a Decision: fill in approve or reject for the tasks to decide "
        "(4 rows were left blank)."
    )
    wb = load_workbook(filled)  # decide one row (approve without the required category)
    ws = wb["Tasks"]
    ws.cell(2, [c.value for c in ws[1]].index("Decision") + 1).value = "approve"
    wb.save(filled)
    await page.set_input_files("#import-file", str(filled))
    await page.click("#import-form button[type=submit]")
    await page.wait_for_url(re.compile(r"/batches/\d+$"))
    await pw_expect(page.locator(".c-failed dd")).to_have_text("1")
    await pw_expect(page.locator("#detail-table td.error-text").first).to_contain_text("row 2")
    # The 3 undecided rows: a counter of their own, and the request's facts say it too.
    await pw_expect(page.locator(".c-skipped dt")).to_have_text("Skipped")
    await pw_expect(page.locator(".c-skipped dd")).to_have_text("3")
    await page.click("details:has(#facts) > summary")
    facts = page.locator("#facts > div")
    skipped = facts.filter(has=page.locator("dt", has_text="Skipped rows")).locator("dd")
    await pw_expect(skipped).to_have_text("3 (no Decision: not imported)")
    creator = facts.filter(has=page.locator("dt", has_text="Creator")).locator("dd")
    await pw_expect(creator).to_have_text("Alice")
    console.check_clean(alice.token)


async def test_failure_groups_lead_the_batch_page(
    console: Console,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """A real run of 100 approvals: 97 tasks whose processes are suspended and 3 that
    another batch holds. The 97 alike failures are one line "97 × …" above the 3 others;
    Show items lists a group, Retry these requeues it (the processes active again, the 97
    then succeed); at 390 px nothing is pushed off-screen. Its screenshots are the
    README's failure-groups pictures."""
    from tests.test_failure_groups import SUSPENDED, suspended_run
    from tests.test_failures import set_process_status

    batch_id, held, stuck, holder = await suspended_run(
        sessionmaker, admin, alice, bob, suspended=97, locked=3
    )
    locked = f"Task {{}} is locked by batch {holder}."

    page = await console.page()
    await console.sign_in(page, alice.token, f"/batches/{batch_id}")
    groups = page.locator("#failure-group-list .failure-group")
    await pw_expect(groups.locator(".group-count")).to_have_text(["97 ×", "3 ×"])
    await pw_expect(groups.locator(".group-message")).to_have_text(
        [SUSPENDED.format("N"), locked.format("N")]
    )
    await pw_expect(groups.locator(".group-code")).to_have_text(["wrong_state", "locked"])
    await pw_expect(groups.locator("[data-group-action=retry]")).to_have_text(
        ["Retry these anyway", "Retry these"]
    )
    await pw_expect(page.locator("#failures-summary")).to_have_text("100 failed items in 2 groups.")
    await shot(page, "batch-failure-groups")

    await groups.nth(1).locator("[data-group-action=show]").click()
    await pw_expect(page.locator("#detail-summary")).to_have_text("3 items failed in this group.")
    await pw_expect(page.locator("#detail-table td.error-text")).to_have_text(
        [locked.format(i) for i in held]
    )
    await page.click("#detail-group-clear")
    await pw_expect(page.locator("#detail-summary")).to_have_text("100 items failed.")

    await page.set_viewport_size(PHONE)
    await page.reload()
    await pw_expect(groups.locator(".group-count")).to_have_text(["97 ×", "3 ×"])
    await page.select_option("#detail-status", "failed")
    await pw_expect(page.locator("#detail-summary")).to_have_text("100 items failed.")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways at 390 px ({width} px)"
    first = page.locator("#detail-table tbody tr").first
    for cell in ("td[data-label=Status] .badge", "td.error-text"):
        box = await first.locator(cell).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    await shot(page, "batch-failure-groups-390px")

    await set_process_status(sessionmaker, "active", stuck)  # the cause fixed
    await groups.first.locator("[data-group-action=retry]").click()
    await pw_expect(page.locator("#flash")).to_contain_text("97 failed items queued again")
    await pw_expect(groups.locator(".group-count")).to_have_text(["3 ×"])
    await pw_expect(page.locator(".c-failed dd")).to_have_text("3")
    await pw_expect(page.locator(".c-success dd")).to_have_text("97")
    statuses = {d["status"] for d in (await alice.get(
        f"/api/v1/batches/{batch_id}/details", params={"page_size": 1000}
    )).json()["items"] if d["item_id"] in stuck}  # fmt: skip
    assert statuses == {"success"}
    console.check_clean(alice.token)


# --------------------------------------------------------------------------- 390 px


async def assert_controls_fit(page: Page) -> None:
    """No shown input, select or textarea sticks out of the viewport, none scrolls its
    own content (a date-time's fields), and a select's chosen text fits inside it."""
    cut = await page.evaluate(
        """() => {
          const ctx = document.createElement("canvas").getContext("2d");
          const textWidth = (c) => {
            const s = getComputedStyle(c);
            ctx.font = s.font;
            const room = c.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
            return ctx.measureText(c.selectedOptions[0]?.text || "").width - room;
          };
          return Array.from(document.querySelectorAll("input, select, textarea"))
            .filter((c) => c.getClientRects().length > 0)
            .filter((c) => {
              const r = c.getBoundingClientRect();
              return r.left < 0 || r.right > innerWidth || c.scrollWidth > c.clientWidth + 1
                || (c.tagName === "SELECT" && !c.multiple && textWidth(c) > 1);
            })
            .map((c) => `${c.id || c.name} (${Math.round(c.getBoundingClientRect().width)} px)`);
        }"""
    )
    assert cut == [], f"controls cut off at {page.viewport_size}: {cut}"


async def test_a_migrate_error_shows_inside_its_form_at_390px(
    console: Console,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, alice, 3)
    r = await admin.post(f"/api/v1/users/{bob.id}/grants", json={"definition_key": "expense"})
    assert r.status_code in (200, 201), r.text

    page = await console.page()
    await page.set_viewport_size(PHONE)
    await console.sign_in(page, bob.token, "/instances?definition_key=expense&status=active")
    await pw_expect(page.locator("#instance-summary")).to_have_text("3 instances match.")
    await assert_controls_fit(page)
    await page.click("#select-all-matching")
    await page.select_option("#op-type", "instance.migrate")
    await pw_expect(page.locator("#op-run")).to_have_text("Migrate 3 instances to another version")
    await page.fill("#op-mig-key", "expense")
    await page.fill("#op-mig-version", "1")
    await page.fill("#op-mig-map", "manager")  # no "=": not a mapping
    await assert_controls_fit(page)

    await page.click("#op-run")
    alert = page.locator("#op-form .form-error [role=alert]")
    await pw_expect(alert).to_have_text("Line 1: write key=value.")
    await pw_expect(alert).to_be_in_viewport()
    await pw_expect(page.locator("#flash")).to_be_empty()  # not a page away, at the top
    await shot(page, "instances-migrate-error-390px")

    await page.fill("#op-mig-map", "manager=finance")
    await page.fill("#op-mig-version", "99")
    await page.click("#op-preview")  # the server's refusal lands in the form too
    await pw_expect(alert).to_have_text("Definition expense has no version 99.")
    await pw_expect(alert).to_be_in_viewport()
    console.check_clean(bob.token)


async def test_the_task_list_shows_the_nodes_visible_fields_at_390px(
    console: Console,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """At the finance step the list has an Amount column (what finance decides on), with
    each task's process value."""
    definition = await create_definition(admin, expense_definition(bob.id, alice.id))
    await bulk_tasks(
        sessionmaker,
        definition_id=definition["id"],
        definition_key="expense",
        node_id="finance",
        assignee_id=alice.id,
        initiator_id=admin.id,
        n=3,
    )
    page = await console.page()
    await page.set_viewport_size(PHONE)
    await console.sign_in(page, alice.token, "/tasks?definition_key=expense&node_id=finance")
    await pw_expect(page.locator("#task-summary")).to_have_text("3 tasks match.")
    headers = page.locator("#task-table thead th.field-col")
    await pw_expect(headers.filter(has_text="Amount")).to_have_count(1)
    amounts = page.locator("#task-table td.field-value[data-field=amount]")
    await pw_expect(amounts).to_have_text(["103", "102", "101"])  # each task's own value
    await pw_expect(page.locator("#f-node")).to_have_value("finance")
    await assert_controls_fit(page)
    await shot(page, "tasks-finance-390px")
    await page.set_viewport_size(DESKTOP)  # the node's name and its fields' selects fit too
    await assert_controls_fit(page)

    await page.goto(console.url("/tasks?definition_key=expense"))  # no single node
    await pw_expect(page.locator("#task-summary")).to_have_text("3 tasks match.")
    await pw_expect(headers).to_have_count(0)
    console.check_clean(alice.token)


async def test_the_progress_eta_reads_naturally(console: Console, alice: Actor) -> None:
    page = await console.page()
    await console.sign_in(page, alice.token, "/batches")
    texts = await page.evaluate(
        """import("/console/static/common.js")
            .then((m) => [0.4, 1, 5, 125, 7300].map((s) => m.timeLeft(s)))"""
    )
    assert texts == [
        "less than a second left",
        "about 1 second left",
        "about 5 seconds left",
        "about 2 min 5 s left",
        "about 2 h 1 min left",
    ]
