"""``batchd batch …`` and ``batchd watch`` as a user runs them: a subprocess
(``python -m app.cli``) against a real uvicorn server on a loopback port, on whichever
backend the suite runs. Exit codes: 0 done/completed, 1 a watched batch that ended
aborted or cancelled, 2 usage, 3 server or network error (with the server's sentence).

The live server runs in the test's event loop, so every CLI run is an asyncio
subprocess (a blocking call would starve the server)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cli.client import parse_ids, parse_pairs, parse_value
from app.models import Task
from tests.batch_helpers import count, eventually, expense_setup, wait_for
from tests.conftest import Actor, LiveServer, free_port

ROOT = Path(__file__).resolve().parents[1]
APPROVE_ARGS = ("--param", "decision=approve", "--param", "form_data.category=travel")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


def cli_env(url: str | None, token: str | None, columns: int = 200) -> dict[str, str]:
    """The caller's environment minus every BATCH_*/BATCHD_*, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "BATCHD_"))}
    env.update(PYTHONUNBUFFERED="1", COLUMNS=str(columns), NO_COLOR="1")
    if url is not None:
        env["BATCHD_URL"] = url
    if token is not None:
        env["BATCHD_TOKEN"] = token
    return env


async def start(
    url: str | None, token: str | None, *args: str, columns: int = 200
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        cwd=ROOT,
        env=cli_env(url, token, columns),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, wait_s: float = 120) -> Result:
    out, err = await asyncio.wait_for(proc.communicate(), wait_s)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def batchd(url: str | None, token: str | None, *args: str, columns: int = 200) -> Result:
    return await finish(await start(url, token, *args, columns=columns))


def shown_field(out: str, key: str) -> str:
    """The value of one line of ``batch show`` (a two-column table: key, value)."""
    found = re.search(rf"^{re.escape(key)}\s+(.*?)\s*$", out, re.MULTILINE)
    assert found is not None, (key, out)
    return found.group(1)


@pytest.fixture
async def ready(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> tuple[LiveServer, list[int]]:
    """The live server and 30 expense tasks waiting for alice (bob is finance)."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 30)
    return live_server, setup.task_ids


# --------------------------------------------------------------------------- parsing


def test_values_are_json_scalars_or_strings() -> None:
    assert [parse_value(v) for v in ("10", "2.5", "true", "null", '"10"', "travel")] == [
        10,
        2.5,
        True,
        None,
        "10",
        "travel",
    ]
    # Not scalars, not finite: kept as text.
    assert [parse_value(v) for v in ("[1]", "{}", "NaN", "1e999", "")] == [
        "[1]",
        "{}",
        "NaN",
        "1e999",
        "",
    ]
    deep = "[" * 100_000  # too deep for the JSON parser: still just text
    assert parse_value(deep) == deep


def test_pairs_nest_on_dotted_keys_over_a_base() -> None:
    base = {"comment": "x", "form_data": {"city": "Rome"}}
    got = parse_pairs(["form_data.category=travel", "decision=approve", "a=b=c"], "--param", base)
    assert got == {
        "comment": "x",
        "decision": "approve",
        "a": "b=c",
        "form_data": {"city": "Rome", "category": "travel"},
    }
    assert base == {"comment": "x", "form_data": {"city": "Rome"}}  # not changed
    assert parse_ids("1, 2,3 4") == [1, 2, 3, 4]


# --------------------------------------------------------------------------- create


async def test_create_watch_follows_the_batch_to_completion(
    ready: tuple[LiveServer, list[int]],
    alice: Actor,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    server, ids = ready
    r = await batchd(
        server.url,
        alice.token,
        "batch",
        "create",
        "task.approve",
        "--filter",
        "definition_key=expense",
        "--filter",
        "node_id=manager",
        *APPROVE_ARGS,
        "--chunk-size",
        "7",
        "--watch",
    )
    assert r.code == 0, r.err
    assert "created: task.approve, 30 items" in r.out
    assert "completed: 30 success, 0 failed" in r.out
    stmt = select(Task).where(
        Task.id.in_(ids), Task.status == "completed", Task.decision == "approve"
    )
    assert await count(sessionmaker, stmt) == 30


async def test_json_output_is_the_apis_json(
    ready: tuple[LiveServer, list[int]], alice: Actor
) -> None:
    server, ids = ready
    args = ("task.approve", "--ids", ",".join(map(str, ids[:5])), *APPROVE_ARGS)
    created = await batchd(server.url, alice.token, "batch", "--json", "create", *args)
    assert created.code == 0, created.err
    batch = created.json
    assert (batch["type"], batch["total"], batch["chunk_size"] > 0) == ("task.approve", 5, True)
    assert batch["params"] == {"decision": "approve", "form_data": {"category": "travel"}}
    await wait_for(alice, batch["id"])

    # --json after the command name too; --watch --json prints only the final batch.
    watched = await batchd(
        server.url, alice.token, "batch", "create", *args[:1], "--ids", str(ids[5]),
        *APPROVE_ARGS, "--watch", "--json",
    )  # fmt: skip
    assert watched.code == 0, watched.err
    assert (watched.json["status"], watched.json["success"]) == ("completed", 1)

    shown = await batchd(server.url, alice.token, "batch", "show", str(batch["id"]), "--json")
    assert shown.code == 0 and shown.json["status"] == "completed"
    listed = await batchd(server.url, alice.token, "batch", "list", "--json", "--page-size", "1")
    assert listed.code == 0, listed.err
    assert (listed.json["total"], listed.json["page_size"]) == (2, 1)
    assert listed.json["items"][0]["id"] == watched.json["id"]  # newest first
    details = await batchd(
        server.url, alice.token, "batch", "details", str(batch["id"]), "--json", "--status",
        "success",
    )  # fmt: skip
    assert details.code == 0 and details.json["total"] == 5
    assert {d["item_id"] for d in details.json["items"]} == set(ids[:5])


async def test_human_tables_and_failed_items(
    ready: tuple[LiveServer, list[int]], alice: Actor
) -> None:
    server, ids = ready
    created = await batchd(
        server.url, alice.token, "batch", "--json", "create", "task.approve",
        "--ids", f"{ids[0]},999999", *APPROVE_ARGS,
    )  # fmt: skip
    assert created.code == 0, created.err
    batch_id = created.json["id"]
    await wait_for(alice, batch_id)

    shown = await batchd(server.url, alice.token, "batch", "show", str(batch_id))
    assert shown.code == 0, shown.err
    assert "completed" in shown.out and "1 success" in shown.out and "1 failed" in shown.out
    assert shown_field(shown.out, "creator") == f"Alice (user {alice.id})"  # not a bare id
    assert "skipped" not in shown.out  # not an import
    listed = await batchd(server.url, alice.token, "batch", "list", "--status", "completed")
    assert listed.code == 0 and "task.approve" in listed.out and "1 in all" in listed.out
    failed = await batchd(
        server.url, alice.token, "batch", "details", str(batch_id), "--status", "failed"
    )
    assert failed.code == 0, failed.err
    assert "success" not in failed.out
    header = next(line for line in failed.out.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.split("┃")[1:-1]] == [
        "item",
        "title",
        "row",
        "status",
        "retries",
        "code",
        "error",
    ]
    rows = [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in failed.out.splitlines()
        if line.startswith("│")
    ]
    assert rows == [
        ["999999", "", "", "failed", "0", "not_found", "Task 999999 does not exist."]
    ]  # a missing task has no title
    done = await batchd(
        server.url, alice.token, "batch", "details", str(batch_id), "--status", "success"
    )
    assert done.code == 0, done.err
    [row] = [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in done.out.splitlines()
        if line.startswith("│")
    ]
    assert row[:4] == [str(ids[0]), "Trip 1", "", "success"]

    retried = await batchd(server.url, alice.token, "batch", "retry", str(batch_id))
    assert retried.code == 0, retried.err
    assert f"Batch {batch_id}: 1 items back to pending" in retried.out


async def test_tables_fit_an_80_column_terminal(
    ready: tuple[LiveServer, list[int]], alice: Actor
) -> None:
    """At ``COLUMNS=80`` every header of ``batch list`` and every row's id and counters
    are there (rich used to squeeze the numeric columns to nothing), and no line of
    ``list``, ``show`` or ``details`` is wider than the terminal."""
    server, ids = ready
    made = []
    for items in (ids[:3], [ids[3], 999_999, 999_998]):
        r = await batchd(
            server.url, alice.token, "batch", "--json", "create", "task.approve",
            "--ids", ",".join(map(str, items)), *APPROVE_ARGS,
        )  # fmt: skip
        assert r.code == 0, r.err
        made.append(await wait_for(alice, r.json["id"]))
    assert made[1]["failed"] == 2

    listed = await batchd(server.url, alice.token, "batch", "list", columns=80)
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    header = lines[0].split()
    assert header == [
        "id",
        "type",
        "status",
        "total",
        "success",
        "failed",
        "ignored",
        "done",
        "created",
    ]
    for b in made:
        row = next((line.split() for line in lines if line.split()[:1] == [str(b["id"])]), None)
        assert row is not None, (b["id"], listed.out)
        counters = [str(b[k]) for k in ("total", "success", "failed", "ignored")]
        assert row[3:7] == counters, (row, listed.out)
    shown = await batchd(server.url, alice.token, "batch", "show", str(made[1]["id"]), columns=80)
    details = await batchd(
        server.url, alice.token, "batch", "details", str(made[1]["id"]), columns=80
    )
    for result in (listed, shown, details):
        assert result.code == 0, result.err
        too_wide = [line for line in result.out.splitlines() if len(line) > 80]
        assert too_wide == [], result.out
    errors = " ".join(
        line.split("│")[-2].strip() for line in details.out.splitlines() if line.startswith("│")
    )  # the error cells, folded onto two lines each at 80 columns
    assert "Task 999999 does not exist." in errors
    assert "not_found" in details.out  # the code is never folded away


async def test_lifecycle_commands(ready: tuple[LiveServer, list[int]], alice: Actor) -> None:
    server, ids = ready

    async def create_suspended(*items: int) -> int:
        r = await batchd(
            server.url, alice.token, "batch", "create", "task.approve", "--json",
            "--ids", ",".join(map(str, items)), *APPROVE_ARGS, "--start-suspended",
        )  # fmt: skip
        assert r.code == 0, r.err
        assert r.json["status"] == "suspended"
        return int(r.json["id"])

    first = await create_suspended(*ids[:3])
    r = await batchd(server.url, alice.token, "batch", "activate", str(first))
    assert r.code == 0, r.err
    assert f"Batch {first} is" in r.out
    done = await wait_for(alice, first)
    assert done["status"] == "completed"

    second = await create_suspended(*ids[3:6])
    r = await batchd(server.url, alice.token, "batch", "suspend", str(second))
    assert r.code == 3 and "suspend" in r.err.lower()  # already suspended: a 409 sentence
    r = await batchd(server.url, alice.token, "batch", "cancel", str(second))
    assert r.code == 0, r.err
    assert f"Batch {second} is cancelled: 3 items cancelled." in r.out

    r = await batchd(server.url, alice.token, "batch", "cancel", str(second), "--purge")
    assert (r.code, r.out.strip()) == (0, f"Batch {second} purged."), r.err
    r = await batchd(server.url, alice.token, "batch", "show", str(second))
    assert r.code == 3 and f"Batch {second} does not exist." in r.err


# --------------------------------------------------------------------------- errors


async def test_errors_exit_3_with_the_servers_sentence(
    ready: tuple[LiveServer, list[int]], alice: Actor
) -> None:
    server, ids = ready
    r = await batchd(server.url, alice.token + "x", "batch", "list")
    assert r.code == 3 and "The bearer token is not valid." in r.err and r.out == ""
    r = await batchd(server.url, alice.token, "batch", "show", "424242")
    assert r.code == 3 and "Batch 424242 does not exist." in r.err
    shown = r
    r = await batchd(server.url, alice.token, "watch", "424242")
    # watch: the same code and the same one line, with no progress bar drawn before it
    assert (r.code, r.err, r.out) == (3, shown.err, ""), (r.err, shown.err, r.out)
    assert r.err == "batchd: Batch 424242 does not exist. (HTTP 404 NotFound)\n"

    r = await batchd(
        server.url, alice.token, "batch", "create", "task.approve", "--ids", str(ids[0]),
        "--param", "decision=maybe",
    )  # fmt: skip
    assert r.code == 3, r.err
    assert "Invalid params for task.approve" in r.err
    assert "params.decision: Input should be 'approve' or 'reject'" in r.err

    closed = f"http://127.0.0.1:{free_port()}"
    r = await batchd(closed, alice.token, "batch", "show", "1")
    assert r.code == 3 and f"cannot reach {closed}" in r.err


async def test_usage_errors_exit_2() -> None:
    url = "http://127.0.0.1:9"  # never contacted
    cases = [
        ("batch", "create", "task.approve"),  # neither --ids nor --filter
        ("batch", "create", "task.approve", "--ids", "1", "--filter", "status=pending"),
        ("batch", "create", "task.approve", "--ids", "1,x"),
        ("batch", "create", "task.approve", "--ids", "1", "--param", "novalue"),
        ("batch", "create", "task.approve", "--ids", "1", "--params-json", "[1]"),
        ("batch", "create", "task.approve", "--ids", "1", "--priority", "urgent"),
        ("batch", "create", "task.approve", "--ids", "1", "--dry-run", "--watch"),
        ("batch", "details", "1", "--status", "weird"),
    ]
    for args in cases:
        r = await batchd(url, "tok", *args)
        assert r.code == 2, (args, r.out, r.err)
    r = await batchd(url, None, "batch", "list")
    assert r.code == 2 and "BATCHD_TOKEN" in r.err


async def test_values_json_cannot_carry_are_one_line_usage_errors() -> None:
    """NaN, Infinity, 1e999 or text that is not Unicode cannot be sent as JSON: exit 2
    with one line naming the option, before anything is sent (never a traceback)."""
    url = "http://127.0.0.1:9"  # never contacted
    create = ("batch", "create", "task.approve", "--ids", "1")
    cases = {
        "--params-json is not valid JSON: NaN is not a JSON value.": ('{"a":NaN}',),
        "--params-json is not valid JSON: Infinity is not a JSON value.": ('{"a":Infinity}',),
        "--params-json is not valid JSON: -Infinity is not a JSON value.": ('{"a":[-Infinity]}',),
        "--params-json is not valid JSON: 1e999 is out of range for a number.": ('{"a":1e999}',),
        "--params-json is not valid JSON: nested too deeply.": ("[" * 100_000,),
        "--params-json is not valid JSON: Expecting value: line 1 column 6 (char 5).": ('{"a":',),
        "--params-json must be a JSON object, not a list.": ("[1]",),
        "--params-json must be a JSON object, not null.": ("null",),
    }
    runs = [batchd(url, "tok", *create, "--params-json", arg) for (arg,) in cases.values()]
    expected = list(cases)
    runs.append(batchd(url, "tok", *create, "--max-rate", "nan"))
    expected.append("--max-rate must be a finite number, not nan.")
    runs.append(batchd(url, "tok", *create, "--max-rate", "inf"))
    expected.append("--max-rate must be a finite number, not inf.")
    runs.append(batchd(url, "tok", *create, "--param", "comment=\udcff"))  # the byte 0xff
    expected.append("cannot send this request:")
    for message, r in zip(expected, await asyncio.gather(*runs), strict=True):
        assert (r.code, r.out) == (2, ""), (message, r.err)
        assert len(r.err.splitlines()) == 1 and r.err.startswith(f"batchd: {message}"), r.err


# --------------------------------------------------------------------------- token


async def test_token_rotate_prints_only_the_new_token(
    live_server: LiveServer, admin: Actor, alice: Actor, bob: Actor
) -> None:
    url = live_server.url
    r = await batchd(url, alice.token, "token", "rotate")
    assert (r.code, r.err) == (0, ""), r.err
    new = r.out.strip()
    assert r.out == new + "\n" and new.startswith("bd_") and new != alice.token
    r = await batchd(url, alice.token, "batch", "list")
    assert r.code == 3 and "The bearer token is not valid." in r.err
    assert (await batchd(url, new, "batch", "list")).code == 0

    r = await batchd(url, None, "token", "--url", url, "--token", new, "--json", "rotate")
    assert r.code == 0, r.err
    assert set(r.json) == {"token"} and r.json["token"] != new
    assert (await batchd(url, new, "batch", "list")).code == 3

    # Someone else's token: an admin's business only.
    r = await batchd(url, r.json["token"], "token", "rotate", "--user", str(bob.id))
    assert r.code == 3 and "Only an admin may do this." in r.err and r.out == ""
    assert (await batchd(url, bob.token, "batch", "list")).code == 0
    r = await batchd(url, admin.token, "token", "rotate", "--user", str(bob.id))
    assert r.code == 0 and r.out.strip().startswith("bd_"), r.err
    assert (await batchd(url, bob.token, "batch", "list")).code == 3
    assert (await batchd(url, r.out.strip(), "batch", "list")).code == 0

    r = await batchd(url, None, "token", "rotate")
    assert r.code == 2 and "BATCHD_TOKEN" in r.err


async def test_global_options_before_the_command(
    ready: tuple[LiveServer, list[int]], alice: Actor
) -> None:
    server, _ids = ready
    r = await batchd(
        None, None, "batch", "--url", server.url, "--token", alice.token, "--json", "list"
    )
    assert r.code == 0, r.err
    assert r.json["total"] == 0
    # A command's own --token wins over the environment's.
    r = await batchd(server.url, "bd_wrong", "batch", "list", "--token", alice.token)
    assert r.code == 0, r.err


# --------------------------------------------------------------------------- watch


async def test_watched_batch_cancelled_exits_1(
    ready: tuple[LiveServer, list[int]], alice: Actor
) -> None:
    server, ids = ready
    proc = await start(
        server.url, alice.token, "batch", "create", "task.approve",
        "--ids", ",".join(map(str, ids[:4])), *APPROVE_ARGS, "--start-suspended", "--watch",
    )  # fmt: skip

    # Find the batch the command made, then cancel it while the command watches.
    async def newest() -> int | None:
        listed = (await alice.get("/api/v1/batches")).json()["items"]
        return int(listed[0]["id"]) if listed else None

    batch_id = await eventually(newest, "the command creates its batch", 60)

    async def listeners() -> int:
        return int(server.app.state.progress.listener_count(batch_id))

    # The watch's stream is open (subscribed to the batch's progress): it sees the cancel.
    await eventually(listeners, "the watch connects its stream", 60)
    r = await alice.delete(f"/api/v1/batches/{batch_id}")
    assert r.status_code == 200, r.text
    result = await finish(proc)
    assert result.code == 1, (result.out, result.err)
    assert f"Batch {batch_id} cancelled: 0 success" in result.out

    again = await batchd(server.url, alice.token, "watch", str(batch_id))
    assert again.code == 1 and f"Batch {batch_id} cancelled" in again.out


# --------------------------------------------------------------------------- extensions


async def test_dry_run_prints_the_prediction(
    ready: tuple[LiveServer, list[int]],
    alice: Actor,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    server, ids = ready
    args = ("batch", "create", "task.approve", "--ids", f"{ids[0]},{ids[1]},999999")
    r = await batchd(server.url, alice.token, *args, *APPROVE_ARGS, "--dry-run", "--json")
    assert r.code == 0, r.err
    body = r.json
    assert (body["dry_run"], body["total"], body["success"], body["failed"]) == (True, 3, 2, 1)
    assert body["problems"] == [
        {
            "item_id": 999999,
            "title": None,
            "status": "failed",
            "error": "Task 999999 does not exist.",
            "error_code": "not_found",
        }
    ]
    human = await batchd(server.url, alice.token, *args, *APPROVE_ARGS, "--dry-run")
    assert human.code == 0, human.err
    assert "2 would succeed" in human.out and "Task 999999 does not exist." in human.out
    assert (await alice.get("/api/v1/batches")).json()["total"] == 0  # nothing written


async def test_start_at_and_max_rate_are_sent(
    ready: tuple[LiveServer, list[int]], alice: Actor
) -> None:
    server, ids = ready
    at = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds")
    r = await batchd(
        server.url, alice.token, "batch", "create", "task.approve", "--json",
        "--ids", str(ids[0]), *APPROVE_ARGS, "--start-at", at, "--max-rate", "25",
        "--priority", "low",
    )  # fmt: skip
    assert r.code == 0, r.err
    body = r.json
    assert (body["status"], body["priority"], body["max_items_per_second"]) == (
        "scheduled",
        "low",
        25,
    )
    assert datetime.fromisoformat(body["start_at"]) == datetime.fromisoformat(at)


# --------------------------------------------------------------------------- results


async def test_results_stream_to_stdout_or_a_file(
    ready: tuple[LiveServer, list[int]], alice: Actor, tmp_path: Path
) -> None:
    server, ids = ready
    created = await batchd(
        server.url, alice.token, "batch", "--json", "create", "task.approve",
        "--ids", f"{ids[0]},{ids[1]},999999", *APPROVE_ARGS, "--watch",
    )  # fmt: skip
    batch_id = created.json["id"]
    r = await batchd(server.url, alice.token, "batch", "results", str(batch_id), "--format", "csv")
    assert r.code == 0, r.err
    lines = r.out.strip().splitlines()
    assert "item_id" in lines[0] and len(lines) == 4
    r = await batchd(
        server.url, alice.token, "batch", "results", str(batch_id), "--status", "failed"
    )
    assert r.code == 0 and len(r.out.strip().splitlines()) == 2
    assert "Task 999999 does not exist." in r.out

    target = tmp_path / "results.xlsx"
    r = await batchd(
        server.url, alice.token, "batch", "results", str(batch_id), "--format", "xlsx",
        "--output", str(target),
    )  # fmt: skip
    assert r.code == 0, r.err
    assert target.read_bytes()[:2] == b"PK" and not (tmp_path / "results.xlsx.part").exists()

    r = await batchd(server.url, alice.token, "batch", "results", "424242", "-o", str(target))
    assert r.code == 3 and "Batch 424242 does not exist." in r.err

    nowhere = tmp_path / "missing" / "results.csv"
    r = await batchd(server.url, alice.token, "batch", "results", str(batch_id), "-o", str(nowhere))
    assert r.code == 2 and r.err == f"batchd: cannot write {nowhere}: No such file or directory\n"


# --------------------------------------------------------------------------- failures


async def test_failure_groups_table_show_and_retry_by_group(
    ready: tuple[LiveServer, list[int]],
    alice: Actor,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """``batch failures`` prints one row per group, largest first; ``batch show`` the
    three largest; ``batch retry --code`` requeues one group."""
    from tests.batch_helpers import create
    from tests.test_failure_groups import LOCKED, SUSPENDED, Failure, fail_items

    server, ids = ready
    ids = sorted(ids)
    body = {"type": "task.approve", "ids": ids, "params": {"decision": "approve"}}
    batch_id = (await create(alice, {**body, "start_suspended": True}))["id"]
    await fail_items(
        sessionmaker,
        batch_id,
        {i: Failure(SUSPENDED, "wrong_state", False) for i in ids[:14]}
        | {i: Failure(LOCKED, "locked", True) for i in ids[14:17]}
        | {ids[17]: Failure("Boom {}", None, None), ids[18]: Failure("Bad", "validation", False)},
    )

    r = await batchd(server.url, alice.token, "batch", "failures", str(batch_id))
    assert r.code == 0, r.err
    rows = [line.split() for line in r.out.splitlines()]
    table = [row[:3] for row in rows if len(row) > 2 and row[0].isdigit()]
    table = [row for row in table if row[1] != "failed"]
    assert table == [
        ["14", "wrong_state", "no"],
        ["3", "locked", "yes"],
        ["1", "validation", "no"],
        ["1", "internal", "no"],
    ]
    assert "The process of task N is suspended, not active." in r.out
    assert "Boom N" in r.out and "19 failed in 4 groups" in r.out
    assert ", ".join(map(str, ids[:10])) in r.out and str(ids[10]) not in r.out

    r = await batchd(server.url, alice.token, "batch", "failures", str(batch_id), "--json")
    assert r.code == 0, r.err
    api = await alice.get(f"/api/v1/batches/{batch_id}/failures")
    assert r.json == api.json()

    r = await batchd(server.url, alice.token, "batch", "show", str(batch_id))
    assert r.code == 0, r.err
    assert "suspended" in r.out and "Task N is locked by batch 5." in r.out
    assert "validation" in r.out and "internal" not in r.out  # the three largest only
    assert "19 failed in 4 groups · the largest 3 shown" in r.out

    r = await batchd(server.url, alice.token, "batch", "retry", str(batch_id), "--code", "locked")
    assert r.code == 0, r.err
    assert f"Batch {batch_id}: 3 items back to pending" in r.out
    assert (await alice.get(f"/api/v1/batches/{batch_id}/failures")).json()["total_failed"] == 16

    r = await batchd(server.url, alice.token, "batch", "retry", str(batch_id), "--message", "Bad")
    assert (r.code, r.out) == (2, "")
    assert "--message needs --code" in r.err


async def test_show_says_how_many_rows_an_import_skipped(
    ready: tuple[LiveServer, list[int]], alice: Actor
) -> None:
    """A template of 30 tasks with 2 decided: ``batch show`` says 28 rows were skipped
    (the count is not an item, so it has a line of its own)."""
    import io

    from openpyxl import load_workbook

    from tests.test_excel_import import upload
    from tests.test_partial_templates import by_header, saved, template

    server, _ids = ready
    wb = load_workbook(io.BytesIO(await template(alice)))
    ws = wb["Tasks"]
    col = by_header(ws)
    for r in (2, 3):
        ws.cell(r, col["Decision"]).value = "reject"
    batch = await upload(alice, saved(wb))
    await wait_for(alice, batch["id"])

    shown = await batchd(server.url, alice.token, "batch", "show", str(batch["id"]))
    assert shown.code == 0, shown.err
    assert shown_field(shown.out, "items").startswith("2 total · 2 success")
    assert shown_field(shown.out, "skipped rows") == "28 (no Decision: not imported)"
    assert shown_field(shown.out, "creator") == f"Alice (user {alice.id})"
