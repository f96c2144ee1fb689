"""The client CLI's parsing, in process and without a server: usage errors (exit 2
with one sentence), where the token and URL come from, and the request a command
builds from its options. ``Api.request`` is replaced by a recorder that stops each
command with a server error (exit 3) once it has seen what would be sent."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from app.cli import cli
from app.cli.base import safe_url
from app.cli.client import (
    Api,
    ServerError,
    load_json,
    parse_ids,
    parse_pairs,
    parse_params_json,
    set_dotted,
)
from app.cli.watch import DEFAULT_URL

STOP = "stopped before sending"


def batchd(*args: str, **env: str) -> Result:
    """``batchd …`` with no BATCHD_* from the caller's environment, only ``env``."""
    environ: dict[str, str | None] = {"BATCHD_URL": None, "BATCHD_TOKEN": None, "COLUMNS": "200"}
    environ.update(env)
    return CliRunner().invoke(cli, list(args), env=environ, prog_name="batchd")


@dataclass
class Sent:
    """What the command would have sent, and as whom."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def only(self) -> dict[str, Any]:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    record = Sent()

    def request(api: Api, method: str, path: str, **kw: Any) -> Any:
        record.calls.append(
            {"url": api.url, "token": api.token, "method": method, "path": path, **kw}
        )
        raise ServerError(STOP, ["params.x: bad"])

    monkeypatch.setattr(Api, "request", request)
    return record


def stopped(result: Result) -> None:
    """The recorder's server error: exit 3, its sentence and field lines on stderr."""
    assert result.exit_code == 3, result.stderr
    assert result.stderr == f"batchd: {STOP}\n  params.x: bad\n"


# --------------------------------------------------------------------------- help, usage


def test_help_lists_every_batch_command() -> None:
    result = batchd("batch", "--help")
    assert result.exit_code == 0
    listed = re.findall(r"^│ (\w+)\s", result.stdout, flags=re.MULTILINE)
    assert listed == [
        "create",
        "list",
        "show",
        "details",
        "failures",
        "retry",
        "suspend",
        "activate",
        "cancel",
        "results",
    ]
    assert "BATCHD_URL/BATCHD_TOKEN" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("batch", "list", "--page", "0"),
            "Invalid value for '--page': 0 is not in the range x>=1.",
        ),
        (
            ("batch", "list", "--page-size", "1001"),
            "Invalid value for '--page-size': 1001 is not in the range 1<=x<=1000.",
        ),
        (("batch", "show", "0"), "Invalid value for 'ID': 0 is not in the range x>=1."),
        (("batch", "show", "abc"), "Invalid value for 'ID': 'abc' is not a valid int range."),
        (("batch", "show", "1", "--colour"), "No such option: --colour"),
        (("batch", "frobnicate"), "No such command 'frobnicate'."),
        (
            ("batch", "details", "1", "--status", "weird"),
            "Invalid value for '--status': 'weird' is not one of",
        ),
        (
            ("batch", "results", "1", "--format", "pdf"),
            "Invalid value for '--format': 'pdf' is not one of 'csv', 'xlsx'.",
        ),
    ],
)
def test_a_bad_argument_is_exit_2_with_the_reason(args: tuple[str, ...], message: str) -> None:
    result = batchd(*args, BATCHD_TOKEN="tok")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("batch", "create", "task.approve"), "pass exactly one of --ids and --filter."),
        (
            ("batch", "create", "task.approve", "--ids", "1", "--filter", "status=pending"),
            "pass exactly one of --ids and --filter.",
        ),
        (
            ("batch", "create", "task.approve", "--ids", "1", "--dry-run", "--watch"),
            "--dry-run writes nothing, so there is nothing to --watch.",
        ),
        (
            ("batch", "create", "task.approve", "--ids", "1", "--max-rate", "inf"),
            "--max-rate must be a finite number, not inf.",
        ),
        (("batch", "create", "task.approve", "--ids", "1,x"), "--ids: 'x' is not an integer id."),
        (("batch", "retry", "5", "--items", " , "), "--items: no ids given."),
    ],
)
def test_a_usage_error_is_one_line_before_any_request(
    sent: Sent, args: tuple[str, ...], message: str
) -> None:
    result = batchd(*args, BATCHD_TOKEN="tok")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"batchd: {message}\n"
    assert sent.calls == []


# --------------------------------------------------------------------------- token, url


def test_without_a_token_nothing_is_sent(sent: Sent) -> None:
    result = batchd("batch", "show", "1")
    assert (result.exit_code, result.stderr) == (2, "batchd: pass --token or set BATCHD_TOKEN.\n")
    assert sent.calls == []


def test_the_token_and_url_come_from_the_environment(sent: Sent) -> None:
    stopped(batchd("batch", "show", "12", BATCHD_TOKEN="env-tok", BATCHD_URL="http://h:1/"))
    assert sent.only == {
        "url": "http://h:1",
        "token": "env-tok",
        "method": "GET",
        "path": "/api/v1/batches/12",
    }


def test_the_default_url_is_used_without_one(sent: Sent) -> None:
    stopped(batchd("batch", "show", "1", BATCHD_TOKEN="tok"))
    assert sent.only["url"] == DEFAULT_URL.rstrip("/")


def test_group_options_override_the_environment(sent: Sent) -> None:
    args = ("batch", "--token", "group-tok", "--url", "http://g:2", "show", "1")
    stopped(batchd(*args, BATCHD_TOKEN="env-tok", BATCHD_URL="http://e:1"))
    assert (sent.only["token"], sent.only["url"]) == ("group-tok", "http://g:2")


def test_command_options_override_the_group(sent: Sent) -> None:
    args = ("batch", "--token", "group-tok", "show", "1", "--token", "own-tok")
    stopped(batchd(*args, BATCHD_URL="http://e:1"))
    assert (sent.only["token"], sent.only["url"]) == ("own-tok", "http://e:1")


# --------------------------------------------------------------------------- requests


def test_create_builds_the_body_from_its_options(sent: Sent) -> None:
    args = (
        "batch",
        "create",
        "task.approve",
        "--ids",
        "3, 1 2",
        "--params-json",
        '{"comment": "ok", "form_data": {"city": "Rome"}}',
        "--param",
        "decision=approve",
        "--param",
        "form_data.amount=12.5",
        "--priority",
        "high",
        "--max-rate",
        "5",
        "--chunk-size",
        "50",
        "--idempotency-key",
        "k-1",
    )
    stopped(batchd(*args, BATCHD_TOKEN="tok"))
    assert (sent.only["method"], sent.only["path"]) == ("POST", "/api/v1/batches")
    assert sent.only["headers"] == {"Idempotency-Key": "k-1"}
    assert sent.only["json"] == {
        "type": "task.approve",
        "ids": [3, 1, 2],
        "params": {
            "comment": "ok",
            "decision": "approve",
            "form_data": {"city": "Rome", "amount": 12.5},
        },
        "priority": "high",
        "max_items_per_second": 5.0,
        "chunk_size": 50,
    }


def test_create_by_filter_sends_typed_values(sent: Sent) -> None:
    args = ("batch", "create", "instance.suspend", "--filter", "definition_key=expense")
    stopped(batchd(*args, "--filter", "created_before=null", "--start-suspended", BATCHD_TOKEN="t"))
    assert sent.only["json"] == {
        "type": "instance.suspend",
        "filter": {"definition_key": "expense", "created_before": None},
        "start_suspended": True,
    }
    assert sent.only["headers"] == {}


def test_list_sends_its_filters_as_query_parameters(sent: Sent) -> None:
    args = ("batch", "list", "--status", "running", "--type", "task.approve", "--page", "3")
    stopped(batchd(*args, BATCHD_TOKEN="tok"))
    assert sent.only["params"] == {
        "page": 3,
        "page_size": 50,
        "status": "running",
        "type": "task.approve",
    }


def test_retry_of_chosen_items_and_cancel_with_purge(sent: Sent) -> None:
    stopped(batchd("batch", "retry", "5", "--items", "8,9", BATCHD_TOKEN="tok"))
    stopped(batchd("batch", "cancel", "5", "--purge", BATCHD_TOKEN="tok"))
    retry, cancel = sent.calls
    assert (retry["method"], retry["path"], retry["json"]) == (
        "POST",
        "/api/v1/batches/5/retry",
        {"item_ids": [8, 9]},
    )
    assert (cancel["method"], cancel["path"], cancel["params"]) == (
        "DELETE",
        "/api/v1/batches/5",
        {"cascade": "true"},
    )


def test_token_rotate_for_another_user(sent: Sent) -> None:
    stopped(batchd("token", "rotate", "--user", "4", BATCHD_TOKEN="tok"))
    assert (sent.only["method"], sent.only["path"]) == ("POST", "/api/v1/users/4/token")


# --------------------------------------------------------------------------- helpers


def usage_error(capsys: pytest.CaptureFixture[str], exc: pytest.ExceptionInfo[typer.Exit]) -> str:
    assert exc.value.exit_code == 2
    return capsys.readouterr().err


def test_parse_ids_refuses_what_is_not_an_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_ids("7") == [7]
    with pytest.raises(typer.Exit) as caught:
        parse_ids("1,2.5", "--items")
    assert usage_error(capsys, caught) == "batchd: --items: '2.5' is not an integer id.\n"
    with pytest.raises(typer.Exit) as caught:
        parse_ids("")
    assert usage_error(capsys, caught) == "batchd: --ids: no ids given.\n"


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("novalue", "--param: expected KEY=VALUE, got 'novalue'."),
        ("=v", "--param: expected KEY=VALUE, got '=v'."),
        ("a..b=1", "--param: bad key 'a..b'."),
        ("comment.x=1", "--param: 'comment.x': 'comment' is not an object."),
    ],
)
def test_parse_pairs_refuses_bad_keys(
    capsys: pytest.CaptureFixture[str], pair: str, message: str
) -> None:
    with pytest.raises(typer.Exit) as caught:
        parse_pairs(["comment=hi", pair], "--param")
    assert usage_error(capsys, caught) == f"batchd: {message}\n"


def test_set_dotted_builds_nested_objects() -> None:
    target: dict[str, Any] = {}
    set_dotted(target, "a.b.c", 1, "--param")
    set_dotted(target, "a.d", "x", "--param")
    assert target == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[1]", "a list"), ('"s"', "a string"), ("true", "a boolean"), ("1", "a number")],
)
def test_params_json_must_be_an_object(
    capsys: pytest.CaptureFixture[str], text: str, kind: str
) -> None:
    with pytest.raises(typer.Exit) as caught:
        parse_params_json(text)
    assert (
        usage_error(capsys, caught) == f"batchd: --params-json must be a JSON object, not {kind}.\n"
    )


def test_params_json_absent_or_an_object() -> None:
    assert parse_params_json(None) == {}
    assert parse_params_json('{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": NaN}', "NaN is not a JSON value"),
        ("[-Infinity]", "-Infinity is not a JSON value"),
        ("1e999", "1e999 is out of range for a number"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_load_json_refuses_what_json_cannot_carry(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_json(text)


def test_safe_url_hides_the_password() -> None:
    assert safe_url("postgresql+asyncpg://app:s3cret@db:5432/batchd") == (
        "postgresql+asyncpg://app:***@db:5432/batchd"
    )
    assert safe_url("sqlite+aiosqlite:///./batchd.db") == "sqlite+aiosqlite:///./batchd.db"
    assert safe_url("not a url") == "not a url"


def test_webhook_tables_print_receiver_text_as_text() -> None:
    """A delivery's last error is the receiver's or the network's text, and a URL is the
    user's: printed literally, never read as rich markup (which would restyle the
    terminal or fail on an unbalanced tag)."""
    from rich.console import Console

    from app.cli import ui

    console = Console(record=True, width=200, color_system=None)
    console.print(
        ui.deliveries_table(
            {
                "items": [
                    {
                        "id": 7,
                        "event": "batch.completed",
                        "batch_id": 3,
                        "status": "pending",
                        "attempts": 2,
                        "last_status_code": 500,
                        "last_error": "HTTP 500: [/bold] oops",
                        "next_attempt_at": None,
                    }
                ],
                "total": 1,
                "page": 1,
                "page_size": 50,
            }
        )
    )
    console.print(
        ui.webhooks_table(
            [{"id": 1, "url": "https://x.example/[red]hook", "status": "active"}], "1 webhooks"
        )
    )
    text = console.export_text()
    assert "HTTP 500: [/bold] oops" in text
    assert "https://x.example/[red]hook" in text
