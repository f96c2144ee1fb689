"""HTTP as any client expects it: ``OPTIONS`` and every 405 name the methods a path
takes, and the API's own documentation pages (``/docs``, ``/redoc``) work with no
internet, under the same no-inline-script, no-framing policy as the console."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Actor
from tests.test_console import Console, browser, console  # noqa: F401 - fixtures


async def test_options_and_405_name_every_method_of_the_path(
    client: httpx.AsyncClient, alice: Actor
) -> None:
    cases = {
        "/api/v1/batches": "GET, OPTIONS, POST",
        "/api/v1/batches/1": "DELETE, GET, OPTIONS",
        "/api/v1/session": "DELETE, OPTIONS, POST",
        "/health": "GET, OPTIONS",
        "/console/static/console.css": "GET, HEAD, OPTIONS",
    }
    for path, allow in cases.items():
        r = await client.options(path)
        assert (r.status_code, r.headers.get("allow"), r.content) == (204, allow, b""), path
    r = await client.put("/api/v1/batches", json={})
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, OPTIONS, POST"
    assert r.json() == {"error": "MethodNotAllowed", "detail": "Method Not Allowed"}
    r = await alice.client.patch("/api/v1/batches/1", headers=alice.headers)
    assert (r.status_code, r.headers["allow"]) == (405, "DELETE, GET, OPTIONS")
    # A path nothing serves is still a 404, whatever the method.
    r = await client.options("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_api_docs_are_served_locally_under_a_strict_policy(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text and "cdn" not in r.text.lower()
    for asset in (a.split('"')[0] for a in r.text.split('src="')[1:]):
        assert asset.startswith("/console/static/"), asset
        assert (await client.get(asset)).status_code == 200, asset


async def test_swagger_ui_and_redoc_render_without_internet(console: Console) -> None:  # noqa: F811
    """In Chromium with no route to the internet: both pages draw the operations, fetch
    nothing from another host and break no policy."""
    page = await console.page()
    await page.goto(console.url("/docs"))
    await page.locator(".opblock-summary-path", has_text="/api/v1/batches").first.wait_for()
    assert await page.locator(".opblock").count() > 20
    await page.goto(console.url("/redoc"))
    await page.locator("h2", has_text="Create a batch (or dry-run one)").wait_for()
    host = urlsplit(console.server.url).netloc
    foreign = [u for u in console.urls if urlsplit(u).scheme in ("http", "https")]
    assert [u for u in foreign if urlsplit(u).netloc != host] == []
    console.check_clean()
