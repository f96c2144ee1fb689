"""The OpenAPI document as the ecosystem's linters read it: Redocly CLI (recommended
rules) and Spectral (``spectral:oas``), both pinned in ``tests/node_tools/package.json``
and installed there by this module when missing (``npm ci``; CI has Node and npm).

Zero errors from either; a warning is only allowed if it is one of ``ACCEPTED`` — each
with its reason, also listed in the API reference — so a new warning fails the suite."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ON_POSTGRES
from tests.tooling import missing_tool

TOOLS = Path(__file__).parent / "node_tools"
BIN = TOOLS / "node_modules" / ".bin"

ACCEPTED_REDOCLY = {
    ("info-license", "#/info"),  # no licence is declared for batchd yet
    ("operation-4xx-response", "#/paths/~1health/get/responses"),  # a probe: 200 or nothing
    ("operation-4xx-response", "#/paths/~1ready/get/responses"),  # 200 or 503, never a 4xx
}
ACCEPTED_SPECTRAL = {
    ("info-contact", "info"),  # a self-hosted service: its operators are the contact
}


@pytest.fixture(scope="module")
def node_tools() -> Path:
    """The pinned tools, installed on first use (a minute from the npm registry)."""
    if ON_POSTGRES:
        pytest.skip("the document is the same on every backend: linted once, on SQLite")
    if not (BIN / "redocly").exists():
        npm = shutil.which("npm")
        if npm is None:
            missing_tool("npm is not installed (Node 20 + npm run the OpenAPI linters)")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=TOOLS,
            check=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
    return BIN


@pytest.fixture
async def document_file(client: httpx.AsyncClient, tmp_path: Path) -> Path:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    path = tmp_path / "openapi.json"
    path.write_text(r.text)
    return path


async def run_node_tool(*args: str | Path, cwd: Path, must_succeed: bool = False) -> str:
    """Run a pinned node tool and return what it printed on stdout (a linter exits
    non-zero when it has findings, so by default only an empty output fails; with
    ``must_succeed`` any non-zero exit fails, with everything it printed)."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, args),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    printed = out.decode(errors="replace") + err.decode(errors="replace")
    assert proc.returncode == 0 or not must_succeed, printed
    assert out or must_succeed, printed
    return out.decode(errors="replace")


async def test_redocly_recommended_finds_no_error(node_tools: Path, document_file: Path) -> None:
    out = await run_node_tool(
        node_tools / "redocly", "lint", document_file, "--format=json", cwd=document_file.parent
    )
    report: dict[str, Any] = json.loads(out)
    problems = {
        (p["ruleId"], p["location"][0]["pointer"], p["severity"]) for p in report["problems"]
    }
    errors = {p for p in problems if p[2] == "error"}
    assert errors == set(), errors
    assert {p[:2] for p in problems} <= ACCEPTED_REDOCLY, problems


async def test_spectral_oas_finds_no_error(node_tools: Path, document_file: Path) -> None:
    (document_file.parent / ".spectral.yaml").write_text('extends: ["spectral:oas"]\n')
    out = await run_node_tool(
        node_tools / "spectral", "lint", document_file, "-f", "json", cwd=document_file.parent
    )
    report: list[dict[str, Any]] = json.loads(out[out.index("[") :])
    problems = {(p["code"], ".".join(map(str, p["path"])), p["severity"]) for p in report}
    errors = {p for p in problems if p[2] == 0}
    assert errors == set(), errors
    assert {p[:2] for p in problems} <= ACCEPTED_SPECTRAL, problems
