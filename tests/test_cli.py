"""The ``batchd`` command, run for real as a subprocess (``python -m app.cli``) on a
temporary SQLite file, whatever backend the rest of the suite uses; and ``watch``
in-process against a scripted SSE stream (reconnects, exit codes, the parser)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from app.cli import iter_sse, watch_batch
from app.demo import EXPENSE_COUNT, LEAVE_COUNT
from app.main import create_app
from tests.batch_helpers import eventually
from tests.conftest import ON_POSTGRES, make_settings

TOKEN_LINE = re.compile(r"^bd_[A-Za-z0-9_\-]{20,}$")
DEMO_LINE = re.compile(r"^(admin|manager|finance|employee)\s+(admin|user)\s+(bd_\S+)$")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli_db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"


def cli_env(database_url: str) -> dict[str, str]:
    """The caller's environment minus every BATCH_* (no Redis, no test URLs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env["BATCH_DATABASE_URL"] = database_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def run_cli(database_url: str, *args: str, cwd: Path, wait_s: float = 120) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        cwd=cwd,
        env=cli_env(database_url),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), wait_s)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]


def count(url: str, table: str) -> int:
    with sqlite3.connect(sqlite_path(url)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def api_get(url: str, path: str, token: str) -> httpx.Response:
    """One request through the real app (auth dependency included) on ``url``'s DB."""
    return await api_request(url, "GET", path, headers={"Authorization": f"Bearer {token}"})


async def api_request(url: str, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request through the real app on ``url``'s DB (``cookies=`` for a browser)."""
    app = create_app(make_settings(url, redis_url=None))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        cookies = kw.pop("cookies", None)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", cookies=cookies
        ) as client:
            return await client.request(method, path, **kw)


# --------------------------------------------------------------------------- commands


async def test_console_script_and_module_agree(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("batchd")
    assert script.exists(), "the console script comes from `pip install -e .`"
    proc = await asyncio.create_subprocess_exec(
        str(script), "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    commands = ("serve", "worker", "migrate", "create-user", "rotate-token", "seed-demo")
    for command in (*commands, "watch", "batch", "token"):
        assert command in out.decode()


async def test_migrate_creates_the_tables(cli_db: str, tmp_path: Path) -> None:
    r = await run_cli(cli_db, "migrate", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "latest schema" in r.stdout
    with sqlite3.connect(sqlite_path(cli_db)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"users", "process_definitions", "process_instances", "tasks"} <= tables
    assert {"batches", "batch_details", "alembic_version"} <= tables
    # Running it again is a no-op.
    r = await run_cli(cli_db, "migrate", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


async def test_create_user_prints_only_a_working_token(cli_db: str, tmp_path: Path) -> None:
    r = await run_cli(
        cli_db, "create-user", "Grace Hopper", "--role", "admin", "--department", "7", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and TOKEN_LINE.match(lines[0]), r.stdout
    token = lines[0]

    resp = await api_get(cli_db, "/api/v1/users/me", token)
    assert resp.status_code == 200, resp.text
    me = resp.json()
    assert (me["name"], me["role"], me["department_id"]) == ("Grace Hopper", "admin", 7)
    assert (await api_get(cli_db, "/api/v1/users/me", token + "x")).status_code == 401


async def test_create_user_rejects_a_bad_role(cli_db: str, tmp_path: Path) -> None:
    r = await run_cli(cli_db, "create-user", "Mallory", "--role", "boss", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "role" in r.stderr and "admin" in r.stderr


async def test_rotate_token_prints_only_a_new_token_and_ends_the_old(
    cli_db: str, tmp_path: Path
) -> None:
    r = await run_cli(cli_db, "rotate-token", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "batchd: there is no admin yet: batchd create-user NAME --role admin.\n"
    ada = (await run_cli(cli_db, "create-user", "Ada", "--role", "admin", cwd=tmp_path)).stdout
    bob = (await run_cli(cli_db, "create-user", "Bob", cwd=tmp_path)).stdout
    ada, bob = ada.strip(), bob.strip()
    signed_in = await api_request(cli_db, "POST", "/api/v1/session", json={"token": ada})
    assert signed_in.status_code == 200
    cookies = dict(signed_in.cookies)

    r = await run_cli(cli_db, "rotate-token", cwd=tmp_path)  # the only admin's
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and TOKEN_LINE.match(lines[0]), r.stdout
    assert (await api_get(cli_db, "/api/v1/users/me", ada)).status_code == 401
    assert (await api_get(cli_db, "/api/v1/users/me", lines[0])).json()["name"] == "Ada"
    browser = await api_request(cli_db, "GET", "/api/v1/users/me", cookies=cookies)
    assert browser.status_code == 401  # her browser session ended too

    bob_id = (await api_get(cli_db, "/api/v1/users/me", bob)).json()["id"]
    r = await run_cli(cli_db, "rotate-token", "--user", str(bob_id), cwd=tmp_path)
    assert r.returncode == 0 and TOKEN_LINE.match(r.stdout.strip()), r.stderr
    assert (await api_get(cli_db, "/api/v1/users/me", bob)).status_code == 401
    assert (await api_get(cli_db, "/api/v1/users/me", r.stdout.strip())).json()["name"] == "Bob"

    r = await run_cli(cli_db, "rotate-token", "--user", "999", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", "batchd: there is no user 999.\n")
    await run_cli(cli_db, "create-user", "Grace", "--role", "admin", cwd=tmp_path)
    r = await run_cli(cli_db, "rotate-token", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert "several admins (1 Ada, 3 Grace): pass --user ID." in r.stderr


async def test_rotate_token_refuses_a_single_sign_on_user(cli_db: str, tmp_path: Path) -> None:
    """Like the API: a user of the identity provider gets no bd_ token, whose role would
    outlive the provider's say; the message points at a break-glass admin instead."""
    carol = (await run_cli(cli_db, "create-user", "Carol", "--role", "admin", cwd=tmp_path)).stdout
    carol_id = (await api_get(cli_db, "/api/v1/users/me", carol.strip())).json()["id"]
    with sqlite3.connect(sqlite_path(cli_db)) as conn:
        conn.execute(
            "UPDATE users SET oidc_issuer = 'https://idp.example', oidc_subject = 'carol' "
            "WHERE id = ?",
            (carol_id,),
        )
    logged = count(cli_db, "action_logs")
    r = await run_cli(cli_db, "rotate-token", "--user", str(carol_id), cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        f"batchd: User {carol_id} signs in through the single sign-on provider, so batchd "
        "makes no bd_ token for them: sign in with the provider (its tokens work on the API "
        "and the CLI). A break-glass admin of its own: batchd create-user NAME --role admin.\n"
    )
    r = await run_cli(cli_db, "rotate-token", cwd=tmp_path)  # the only admin, but SSO
    assert (r.returncode, r.stdout) == (2, "")
    assert "single sign-on provider" in r.stderr
    assert count(cli_db, "action_logs") == logged  # nothing rotated, nothing logged
    assert (await api_get(cli_db, "/api/v1/users/me", carol.strip())).status_code == 200


async def test_worker_needs_redis(cli_db: str, tmp_path: Path) -> None:
    r = await run_cli(cli_db, "worker", cwd=tmp_path)
    assert r.returncode == 2
    assert "BATCH_REDIS_URL" in r.stderr


async def test_watch_needs_a_token(cli_db: str, tmp_path: Path) -> None:
    r = await run_cli(cli_db, "watch", "1", cwd=tmp_path)
    assert r.returncode == 2
    assert "BATCH_TOKEN" in r.stderr


async def test_seed_demo_is_idempotent_and_reissues_tokens(cli_db: str, tmp_path: Path) -> None:
    first = await run_cli(cli_db, "seed-demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    tables = ("users", "process_definitions", "process_instances", "tasks", "monitor_grants")
    counts = {t: count(cli_db, t) for t in tables}
    assert counts["users"] == 4 and counts["process_definitions"] == 3
    assert counts["process_instances"] >= 300 and counts["tasks"] == counts["process_instances"]

    second = await run_cli(cli_db, "seed-demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert {t: count(cli_db, t) for t in tables} == counts

    def tokens(out: str) -> dict[str, str]:
        matches = [DEMO_LINE.match(line) for line in out.splitlines()]
        assert all(matches) and len(matches) == 4, out
        return {m.group(1): m.group(3) for m in matches if m}

    old, new = tokens(first.stdout), tokens(second.stdout)
    assert set(new) == {"admin", "manager", "finance", "employee"}
    assert all(old[name] != new[name] for name in new)
    assert (await api_get(cli_db, "/api/v1/users/me", new["finance"])).json()["name"] == "finance"
    assert (await api_get(cli_db, "/api/v1/users/me", old["finance"])).status_code == 401


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(ON_POSTGRES, reason="serve --demo is the embedded (SQLite) mode")
async def test_serve_demo_answers_and_its_tokens_work(cli_db: str, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--demo",
            "--port",
            str(port),
            cwd=tmp_path,
            env=cli_env(cli_db),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            banner = await _wait_for_banner(proc, client, log_path)
            assert f"{base}/docs" in banner
            assert f'{base}/api/v1/tasks?status=pending"' in banner
            tokens = {
                m.group(1): m.group(3)
                for m in (DEMO_LINE.match(line.strip()) for line in banner.splitlines())
                if m
            }
            assert set(tokens) == {"admin", "manager", "finance", "employee"}
            auth = {"Authorization": f"Bearer {tokens['manager']}"}
            me = (await client.get("/api/v1/users/me", headers=auth)).json()
            assert me["name"] == "manager"

            r = await client.get("/api/v1/tasks", params={"status": "pending"}, headers=auth)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["total"] == EXPENSE_COUNT + LEAVE_COUNT
            assert {t["status"] for t in body["items"]} == {"pending"}
            assert {t["assignee_id"] for t in body["items"]} == {me["id"]}
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode in (0, -15), read_log(log_path)


def read_log(path: Path) -> str:
    return path.read_text(errors="replace")


async def _wait_for_banner(
    proc: asyncio.subprocess.Process, client: httpx.AsyncClient, log_path: Path
) -> str:
    """Poll /health, then the log for the banner, both bounded; fail with the log."""
    healthy = False

    async def banner() -> str | None:
        nonlocal healthy
        if proc.returncode is not None:
            pytest.fail(f"serve exited with {proc.returncode}:\n{read_log(log_path)}")
        if not healthy:
            with contextlib.suppress(httpx.TransportError):
                healthy = (await client.get("/health")).status_code == 200
        text = read_log(log_path)
        return text if healthy and "curl -H" in text else None

    try:
        text = await eventually(banner, "serve --demo comes up", 60)
    except AssertionError:
        pytest.fail(f"serve --demo did not come up within 60 s:\n{read_log(log_path)}")
    assert text is not None
    return text


# --------------------------------------------------------------------------- watch


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def test_sse_parser_handles_comments_multiline_data_and_crlf() -> None:
    events = [
        e
        async for e in iter_sse(
            _lines(
                ": ping",
                "",
                "event: progress\r",
                "id: 4",
                'data: {"a":',
                "data: 1}",
                "",
                "data:plain",
                "",
                "event: end",
                "data: {}",
            )
        )
    ]
    assert [(e.event, e.id, e.data) for e in events] == [
        ("progress", "4", '{"a":\n1}'),
        ("message", None, "plain"),
    ]  # the last event has no terminating blank line, so it is not dispatched


def batch(status: str, **counts: int) -> dict[str, Any]:
    values = {"success": 0, "failed": 0, "ignored": 0, "cancelled": 0, "pending": 0, "running": 0}
    values.update(counts)
    return {"id": 7, "type": "task.approve", "status": status, "total": 10, **values}


def sse(event: str, seq: int, body: dict[str, Any]) -> bytes:
    return f"event: {event}\nid: {seq}\ndata: {json.dumps(body)}\n\n".encode()


class ScriptedServer:
    """Answers successive requests to the events URL with the given scripts and records
    them; a script item that is an exception is raised mid-stream, a script that is an
    exception is raised on connect. ``GET /batches/7`` (the probe after a stream ends
    early) answers ``probe``."""

    def __init__(
        self,
        *scripts: list[bytes | Exception] | httpx.Response | Exception,
        probe: httpx.Response | None = None,
        probe_drops: int = 0,
    ) -> None:
        self.scripts = list(scripts)
        self.probe = probe or httpx.Response(200, json=batch("running"))
        self.requests: list[httpx.Request] = []
        self.probes = 0
        self.probe_drops = probe_drops

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/batches/7":
            self.probes += 1
            if self.probes <= self.probe_drops:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response")
            return self.probe
        assert request.url.path == "/api/v1/batches/7/events"
        self.requests.append(request)
        script = self.scripts.pop(0)
        if isinstance(script, httpx.Response):
            return script
        if isinstance(script, Exception):
            raise script

        async def body() -> AsyncIterator[bytes]:
            for item in script:
                if isinstance(item, Exception):
                    raise item
                yield item

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


async def _watch(server: ScriptedServer) -> tuple[int, str]:
    out = io.StringIO()
    console = Console(file=out, width=200)
    code = await watch_batch(
        7,
        "http://api.test",
        "tok",
        console=console,
        err_console=console,
        transport=server.transport(),
        backoff_cap=0,
        max_failures=3,
    )
    return code, out.getvalue()


async def test_watch_exits_0_when_the_batch_completes() -> None:
    server = ScriptedServer(
        [
            b": ping\n\n",
            sse("progress", 1, batch("running", success=4, failed=1)),
            sse("end", 2, batch("completed", success=8, failed=1, ignored=1)),
        ]
    )
    code, out = await _watch(server)
    assert code == 0
    assert "Batch 7 completed: 8 success, 1 failed, 1 ignored" in out
    assert server.requests[0].headers["authorization"] == "Bearer tok"


@pytest.mark.parametrize("status", ["aborted", "cancelled"])
async def test_watch_exits_1_when_the_batch_does_not_complete(status: str) -> None:
    server = ScriptedServer([sse("end", 5, batch(status, failed=10))])
    code, out = await _watch(server)
    assert code == 1
    assert f"Batch 7 {status}" in out


async def test_watch_reconnects_with_last_event_id() -> None:
    server = ScriptedServer(
        [sse("progress", 3, batch("running", success=2)), httpx.ReadError("connection reset")],
        [sse("progress", 5, batch("running", success=6))],  # closed without an end event
        [sse("end", 9, batch("completed", success=10))],
    )
    code, out = await _watch(server)
    assert code == 0, out
    assert "last-event-id" not in server.requests[0].headers
    assert [r.headers["last-event-id"] for r in server.requests[1:]] == ["3", "5"]


async def test_watch_gives_up_on_a_refused_request() -> None:
    refused = httpx.Response(404, json={"error": "NotFound", "detail": "Batch 7 does not exist."})
    server = ScriptedServer(refused)
    code, out = await _watch(server)
    assert code == 3 and len(server.requests) == 1
    # one line, worded as every client command words a refusal; no bar drawn before it
    assert out == "batchd: Batch 7 does not exist. (HTTP 404 NotFound)\n"


async def test_watch_gives_up_after_bounded_retries() -> None:
    server = ScriptedServer(
        [sse("progress", 1, batch("running"))],  # works once, then the server is gone
        *([httpx.ConnectError("All connection attempts failed")] * 3),
    )
    code, out = await _watch(server)
    assert code == 3
    assert out.splitlines()[-1] == (
        "batchd: giving up after 3 retries: All connection attempts failed"
    )
    assert len(server.requests) == 4  # the stream that worked, then 3 retries


async def test_watch_reports_a_refusal_found_after_an_empty_stream() -> None:
    """A stream that ends at once is checked with a plain GET: a 404 there is final."""
    gone = httpx.Response(404, json={"error": "NotFound", "detail": "Batch 7 does not exist."})
    server = ScriptedServer([], probe=gone, probe_drops=1)  # a dead pooled connection first
    code, out = await _watch(server)
    assert code == 3
    assert "Batch 7 does not exist." in out
    assert len(server.requests) == 1 and server.probes == 2


async def test_watch_finishes_from_the_probe_when_the_stream_ends_early() -> None:
    server = ScriptedServer(
        [sse("progress", 1, batch("running", success=3))],
        probe=httpx.Response(200, json=batch("completed", success=10)),
    )
    code, out = await _watch(server)
    assert code == 0
    assert "Batch 7 completed: 10 success" in out
    assert len(server.requests) == 1
