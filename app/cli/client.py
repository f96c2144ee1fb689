"""``batchd batch …``, ``batchd webhook …`` and ``batchd token rotate``: the client
commands, over the HTTP API.

Why a client at all when curl works: the commands parse ``key=value`` options into the
request bodies, print rich tables (or, with ``--json``, the API's JSON as is), follow
a new batch to its end, and turn every outcome into an exit code a script can use:
0 done (or completed), 1 the watched batch ended aborted or cancelled, 2 a usage error
(one ``batchd: …`` line on stderr, never a traceback: values JSON cannot carry, such as
NaN, are refused here), 3 a server or network error (the server's sentence on stderr).
"""

from __future__ import annotations

import asyncio
import copy
import enum
import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from app.cli import ui
from app.cli.base import cli, fail
from app.cli.sse import (
    StreamLost,
    WatchError,
    error_sentence,
    exit_code,
    follow_batch,
    stream_timeout,
    watch_batch,
)
from app.cli.watch import DEFAULT_URL

SERVER_ERROR = 3
SHOW_GROUPS = 3
"""Failure groups ``batch show`` lists under the batch."""

batch_app = typer.Typer(
    name="batch",
    help="Create, inspect and control batches over the HTTP API.",
    no_args_is_help=True,
)
cli.add_typer(batch_app, name="batch")
token_app = typer.Typer(
    name="token",
    help="Your bearer token over the HTTP API: rotate it.",
    no_args_is_help=True,
)
cli.add_typer(token_app, name="token")


class Priority(enum.StrEnum):
    high = "high"
    normal = "normal"
    low = "low"


class DetailStatus(enum.StrEnum):
    pending = "pending"
    running = "running"
    success = "success"
    failed = "failed"
    ignored = "ignored"
    cancelled = "cancelled"


class BatchStatus(enum.StrEnum):
    scheduled = "scheduled"
    created = "created"
    seeding = "seeding"
    running = "running"
    suspended = "suspended"
    completed = "completed"
    cancelled = "cancelled"
    aborted = "aborted"


class ResultFormat(enum.StrEnum):
    csv = "csv"
    xlsx = "xlsx"


# --------------------------------------------------------------------------- options


@dataclass
class Connection:
    """Where and as whom: set by the group's options, overridable per command."""

    url: str = DEFAULT_URL
    token: str | None = None
    as_json: bool = False


UrlOpt = Annotated[
    str | None, typer.Option("--url", help="Base URL of the API.", show_default=False)
]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Bearer token.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON as is.")]
IdArg = Annotated[int, typer.Argument(help="The batch id.", metavar="ID", min=1)]


GroupUrlOpt = Annotated[
    str, typer.Option("--url", help="Base URL of the API.", envvar="BATCHD_URL")
]
GroupTokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Bearer token.", envvar="BATCHD_TOKEN", show_default=False),
]


def connection_options(
    ctx: typer.Context,
    url: GroupUrlOpt = DEFAULT_URL,
    token: GroupTokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Where and as whom every command of a group talks to the API."""
    ctx.obj = Connection(url, token, as_json)


batch_app.callback(
    help="Create, inspect and control batches (--url/--token, or BATCHD_URL/BATCHD_TOKEN)."
)(connection_options)
token_app.callback(help="Your bearer token (--url/--token, or BATCHD_URL/BATCHD_TOKEN).")(
    connection_options
)


class ServerError(Exception):
    """A request the server refused, or one that never reached it: exit 3."""

    def __init__(self, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or []

    @classmethod
    def from_response(cls, response: httpx.Response) -> ServerError:
        """The server's sentence (``detail``) and, for a 422, its fields."""
        message, fields = error_sentence(response)
        return cls(message, fields)


class Api:
    """A synchronous httpx client that raises ``ServerError`` for any answer ≥ 400."""

    def __init__(self, conn: Connection) -> None:
        if not conn.token:
            raise fail("pass --token or set BATCHD_TOKEN.")
        self.conn = conn
        self.token = conn.token
        self.url = conn.url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {conn.token}"},
            timeout=httpx.Timeout(30.0, read=300.0),
        )

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            request = self.client.build_request(method, path, **kw)
        except ValueError as exc:  # a value JSON cannot carry (text that is not Unicode)
            raise fail(f"cannot send this request: {exc}") from None
        try:
            response = self.client.send(request)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from exc
        if response.status_code >= 400:
            raise ServerError.from_response(response)
        return response

    @contextmanager
    def stream(self, path: str, **kw: Any) -> Iterator[httpx.Response]:
        try:
            with self.client.stream("GET", path, **kw) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ServerError.from_response(response)
                yield response
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from exc


def _unreachable(url: str, exc: Exception) -> ServerError:
    return ServerError(f"cannot reach {url}: {exc or exc.__class__.__name__}")


@contextmanager
def _api(ctx: typer.Context, url: str | None, token: str | None, as_json: bool) -> Iterator[Api]:
    """The command's ``Api``; a ``ServerError`` anywhere inside becomes exit 3."""
    group: Connection = ctx.obj if isinstance(ctx.obj, Connection) else Connection()
    conn = Connection(url or group.url, token or group.token, as_json or group.as_json)
    api = Api(conn)
    try:
        yield api
    except ServerError as exc:
        typer.echo(f"batchd: {exc}", err=True)
        for line in exc.fields:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(SERVER_ERROR) from None
    finally:
        api.client.close()


def _out() -> Console:
    return Console()


def _print_json(response: httpx.Response) -> None:
    if response.content:
        typer.echo(response.text)


# --------------------------------------------------------------------------- parsing


def load_json(text: str) -> Any:
    """``json.loads`` for what will be sent as JSON: NaN, Infinity and numbers too large
    for a float (1e999) are refused, which JSON cannot carry (the request could not be
    sent); any problem is a ``ValueError``."""

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):
            raise ValueError(f"{number} is out of range for a number")
        return value

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        return json.loads(text, parse_float=finite, parse_constant=no_constants)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_value(text: str) -> Any:
    """A JSON scalar (number, true/false/null, "quoted string") if the text is one, else
    the text itself: ``10`` → 10, ``true`` → True, ``travel`` → "travel"."""
    try:
        value = load_json(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, bool | int | float | str) else text


def set_dotted(target: dict[str, Any], key: str, value: Any, option: str) -> None:
    """``form_data.category`` sets ``target["form_data"]["category"]``."""
    parts = key.split(".")
    if not all(parts):
        raise fail(f"{option}: bad key {key!r}.")
    node = target
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise fail(f"{option}: {key!r}: {part!r} is not an object.")
        node = child
    node[parts[-1]] = value


def parse_pairs(
    pairs: list[str] | None, option: str, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``key=value`` options into an object (on top of ``base``)."""
    out = copy.deepcopy(base or {})
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"{option}: expected KEY=VALUE, got {pair!r}.")
        set_dotted(out, key.strip(), parse_value(value), option)
    return out


def parse_ids(text: str, option: str = "--ids") -> list[int]:
    """``1,2,3`` (commas and/or spaces) → [1, 2, 3]."""
    ids: list[int] = []
    for part in text.replace(",", " ").split():
        try:
            ids.append(int(part))
        except ValueError:
            raise fail(f"{option}: {part!r} is not an integer id.") from None
    if not ids:
        raise fail(f"{option}: no ids given.")
    return ids


def _json_kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def parse_params_json(text: str | None) -> dict[str, Any]:
    """``--params-json``: a JSON object, or a usage error that says what is wrong."""
    if text is None:
        return {}
    try:
        value = load_json(text)
    except ValueError as exc:
        raise fail(f"--params-json is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise fail(f"--params-json must be a JSON object, not {_json_kind(value)}.")
    return value


# --------------------------------------------------------------------------- commands


@batch_app.command("create")
def create(
    ctx: typer.Context,
    type_: Annotated[
        str, typer.Argument(help="Operation type, e.g. task.approve.", metavar="TYPE")
    ],
    ids: Annotated[
        str | None, typer.Option("--ids", help="Item ids, comma-separated.", metavar="1,2,3")
    ] = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help="Select items by filter (repeat).", metavar="KEY=VALUE"),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="A param (repeat); a.b=v sets nested keys; JSON scalars are typed.",
            metavar="KEY=VALUE",
        ),
    ] = None,
    params_json: Annotated[
        str | None,
        typer.Option(
            "--params-json", help="Params as a JSON object (--param adds to it).", metavar="JSON"
        ),
    ] = None,
    priority: Annotated[Priority | None, typer.Option(help="Queue priority.")] = None,
    start_suspended: Annotated[
        bool, typer.Option("--start-suspended", help="Resolve and lock, run on activate.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Predict the outcome; write nothing.")
    ] = False,
    start_at: Annotated[
        str | None,
        typer.Option(
            "--start-at", help="Start later (ISO 8601 with an offset).", metavar="ISO8601"
        ),
    ] = None,
    max_rate: Annotated[
        float | None,
        typer.Option("--max-rate", help="At most N items per second.", metavar="N"),
    ] = None,
    chunk_size: Annotated[
        int | None, typer.Option("--chunk-size", help="Items per chunk.", metavar="N", min=1)
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Sent as Idempotency-Key: a repeat returns the same batch.",
            metavar="KEY",
        ),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the batch to its end.")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a batch (202), or with --dry-run predict it; --watch follows it to the end."""
    if (ids is None) == (not filter_):
        raise fail("pass exactly one of --ids and --filter.")
    if dry_run and watch:
        raise fail("--dry-run writes nothing, so there is nothing to --watch.")
    if max_rate is not None and not math.isfinite(max_rate):
        raise fail(f"--max-rate must be a finite number, not {max_rate}.")
    body: dict[str, Any] = {"type": type_}
    if ids is not None:
        body["ids"] = parse_ids(ids)
    else:
        body["filter"] = parse_pairs(filter_, "--filter")
    params = parse_pairs(param, "--param", parse_params_json(params_json))
    if params:
        body["params"] = params
    extras = {
        "priority": priority.value if priority else None,
        "start_suspended": start_suspended or None,
        "dry_run": dry_run or None,
        "start_at": start_at,
        "max_items_per_second": max_rate,
        "chunk_size": chunk_size,
    }
    body.update({k: v for k, v in extras.items() if v is not None})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}

    with _api(ctx, url, token, as_json) as api:
        response = api.request("POST", "/api/v1/batches", json=body, headers=headers)
        created = response.json()
        if created.get("dry_run"):
            if api.conn.as_json:
                _print_json(response)
            else:
                ui.dry_run(_out(), created)
            return
        if not watch:
            if api.conn.as_json:
                _print_json(response)
            else:
                _print_created(created, replayed=response.status_code == 200)
            return
        if api.conn.as_json:
            final = _follow_quietly(api, int(created["id"]))
            typer.echo(json.dumps(final))
            raise typer.Exit(exit_code(final))
        _print_created(created, replayed=response.status_code == 200, hint=False)
        code = asyncio.run(
            watch_batch(
                int(created["id"]),
                api.url,
                api.token,
                refused_code=SERVER_ERROR,
                lost_code=SERVER_ERROR,
            )
        )
    raise typer.Exit(code)


def _print_created(batch: dict[str, Any], *, replayed: bool, hint: bool = True) -> None:
    verb = "already exists (same idempotency key)" if replayed else "created"
    console = _out()
    console.print(
        f"Batch {batch.get('id')} {verb}: {batch.get('type')}, {batch.get('total')} items, "
        f"status {ui._styled(batch.get('status'))}."
    )
    if hint:
        console.print(f"Follow it: batchd watch {batch.get('id')}")


def _follow_quietly(api: Api, batch_id: int) -> dict[str, Any]:
    """``--json --watch``: no bar; reconnect notes on stderr; the final batch object."""

    def note(reason: str, delay: float) -> None:
        typer.echo(f"batchd: connection lost ({reason}); reconnecting in {delay:.1f}s", err=True)

    async def run() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=api.url, timeout=stream_timeout()) as client:
            return await follow_batch(client, batch_id, api.token, on_reconnect=note)

    try:
        return asyncio.run(run())
    except WatchError as exc:
        raise ServerError(str(exc)) from None
    except StreamLost as exc:
        raise ServerError(f"giving up after {exc.attempts} retries: {exc.reason}") from None


@batch_app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[BatchStatus | None, typer.Option(help="Only batches in this status.")] = None,
    type_: Annotated[
        str | None, typer.Option("--type", help="Only this operation type.", metavar="TYPE")
    ] = None,
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Batches per page.")] = 50,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List batches, newest first (yours; an admin sees all)."""
    params: dict[str, Any] = {"page": page, "page_size": page_size}
    if status:
        params["status"] = status.value
    if type_:
        params["type"] = type_
    with _api(ctx, url, token, as_json) as api:
        response = api.request("GET", "/api/v1/batches", params=params)
        if api.conn.as_json:
            _print_json(response)
        else:
            console = _out()
            console.print(ui.batches_table(response.json(), console.width))


@batch_app.command("show")
def show(
    ctx: typer.Context,
    batch_id: IdArg,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One batch with its counters, and its three largest failure groups."""
    with _api(ctx, url, token, as_json) as api:
        response = api.request("GET", f"/api/v1/batches/{batch_id}")
        if api.conn.as_json:
            _print_json(response)
            return
        console = _out()
        batch = response.json()
        console.print(ui.batch_table(batch))
        if batch.get("failed"):
            groups = api.request("GET", f"/api/v1/batches/{batch_id}/failures").json()
            console.print(ui.failures_table(groups, top=SHOW_GROUPS))


@batch_app.command("details")
def details(
    ctx: typer.Context,
    batch_id: IdArg,
    status: Annotated[DetailStatus | None, typer.Option(help="Only items in this status.")] = None,
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Items per page.")] = 50,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-item results (the error sentence of each failed item)."""
    params: dict[str, Any] = {"page": page, "page_size": page_size}
    if status:
        params["status"] = status.value
    with _api(ctx, url, token, as_json) as api:
        response = api.request("GET", f"/api/v1/batches/{batch_id}/details", params=params)
        if api.conn.as_json:
            _print_json(response)
        else:
            _out().print(ui.details_table(response.json()))


@batch_app.command("failures")
def failures(
    ctx: typer.Context,
    batch_id: IdArg,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Failed items in groups, largest first: 97 alike failures are one row of 97."""
    with _api(ctx, url, token, as_json) as api:
        response = api.request("GET", f"/api/v1/batches/{batch_id}/failures")
        if api.conn.as_json:
            _print_json(response)
        else:
            _out().print(ui.failures_table(response.json()))


@batch_app.command("retry")
def retry(
    ctx: typer.Context,
    batch_id: IdArg,
    items: Annotated[
        str | None,
        typer.Option("--items", help="Only these failed item ids.", metavar="1,2,3"),
    ] = None,
    error_code: Annotated[
        str | None,
        typer.Option(
            "--code",
            help="Only the failure group of this code (see batch failures).",
            metavar="CODE",
        ),
    ] = None,
    message: Annotated[
        str | None,
        typer.Option(help="With --code: only the group with this message.", metavar="TEXT"),
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Put failed items back to pending (items that used up their retries are let go)."""
    if message is not None and error_code is None:
        raise fail("--message needs --code: a failure group is a code and a message")
    if items and error_code:
        raise fail("give --items or --code, not both")
    body: dict[str, Any] = {"item_ids": parse_ids(items, "--items")} if items else {}
    if error_code:
        body = {"error_code": error_code, **({"message": message} if message is not None else {})}
    kw: dict[str, Any] = {"json": body} if body else {}
    with _api(ctx, url, token, as_json) as api:
        response = api.request("POST", f"/api/v1/batches/{batch_id}/retry", **kw)
        if api.conn.as_json:
            _print_json(response)
            return
        body = response.json()
        batch = body.get("batch", {})
        _out().print(
            f"Batch {batch_id}: {body.get('requeued', 0)} items back to pending, "
            f"{body.get('exhausted', 0)} exhausted; status {ui._styled(batch.get('status'))}."
        )


def _lifecycle(ctx: typer.Context, batch_id: int, action: str, conn: tuple[Any, ...]) -> None:
    with _api(ctx, *conn) as api:
        response = api.request("POST", f"/api/v1/batches/{batch_id}/{action}")
        if api.conn.as_json:
            _print_json(response)
        else:
            status = response.json().get("status")
            _out().print(f"Batch {batch_id} is {ui._styled(status)}.")


@batch_app.command("suspend")
def suspend(
    ctx: typer.Context,
    batch_id: IdArg,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pause: nothing new is claimed; chunks already running finish."""
    _lifecycle(ctx, batch_id, "suspend", (url, token, as_json))


@batch_app.command("activate")
def activate(
    ctx: typer.Context,
    batch_id: IdArg,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume a suspended batch (or start one created with --start-suspended)."""
    _lifecycle(ctx, batch_id, "activate", (url, token, as_json))


@batch_app.command("cancel")
def cancel(
    ctx: typer.Context,
    batch_id: IdArg,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the batch and its items.")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel (pending items → cancelled, locks released), keeping the history."""
    params = {"cascade": "true"} if purge else {}
    with _api(ctx, url, token, as_json) as api:
        response = api.request("DELETE", f"/api/v1/batches/{batch_id}", params=params)
        if api.conn.as_json:
            _print_json(response)
        elif response.status_code == 204:
            _out().print(f"Batch {batch_id} purged.")
        else:
            body = response.json()
            _out().print(
                f"Batch {batch_id} is {ui._styled(body.get('status'))}: "
                f"{body.get('cancelled', 0)} items cancelled."
            )


@batch_app.command("results")
def results(
    ctx: typer.Context,
    batch_id: IdArg,
    format_: Annotated[
        ResultFormat, typer.Option("--format", help="csv or xlsx.")
    ] = ResultFormat.csv,
    status: Annotated[DetailStatus | None, typer.Option(help="Only items in this status.")] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="File to write, or - for stdout.", metavar="FILE")
    ] = "-",
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every item's result as a file, streamed (flat memory however large the batch)."""
    if output == "-" and format_ is ResultFormat.xlsx and sys.stdout.isatty():
        raise fail("xlsx is binary: pass --output FILE (or pipe stdout).")
    params = {"format": format_.value}
    if status:
        params["status"] = status.value
    with _api(ctx, url, token, as_json) as api:
        path = f"/api/v1/batches/{batch_id}/results"
        if output == "-":
            with api.stream(path, params=params) as response:
                sink = sys.stdout.buffer
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                sink.flush()
            return
        target = Path(output)
        partial = target.with_name(target.name + ".part")
        written = 0
        try:
            with partial.open("wb") as f, api.stream(path, params=params) as response:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    written += len(chunk)
            os.replace(partial, target)  # never a half file under the real name
        except OSError as exc:
            raise fail(f"cannot write {target}: {exc.strerror or exc}") from None
        finally:
            partial.unlink(missing_ok=True)
        typer.echo(f"Wrote {written} bytes to {target}.", err=True)


# --------------------------------------------------------------------------- token


@token_app.command("rotate")
def rotate(
    ctx: typer.Context,
    user: Annotated[
        int | None,
        typer.Option(
            "--user", help="(admin) Rotate this user's token instead.", metavar="ID", min=1
        ),
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replace your bearer token and print only the new one (shown once). The old token
    and your browser sessions stop working at once: update BATCHD_TOKEN."""
    path = "/api/v1/users/me/token" if user is None else f"/api/v1/users/{user}/token"
    with _api(ctx, url, token, as_json) as api:
        response = api.request("POST", path)
        if api.conn.as_json:
            _print_json(response)
            return
        body = response.json()
        new = body.get("token") if isinstance(body, dict) else None
        if not isinstance(new, str):
            raise ServerError(f"the answer holds no token: {response.text[:200]}")
        typer.echo(new)


# --------------------------------------------------------------------------- webhook

webhook_app = typer.Typer(
    name="webhook",
    help="Webhook subscriptions to your batches' events, over the HTTP API.",
    no_args_is_help=True,
)
cli.add_typer(webhook_app, name="webhook")
webhook_app.callback(
    help="Subscribe URLs to batch events, read delivery logs, redeliver "
    "(--url/--token, or BATCHD_URL/BATCHD_TOKEN)."
)(connection_options)

WEBHOOK_EVENTS = (
    "batch.created",
    "batch.started",
    "batch.suspended",
    "batch.resumed",
    "batch.completed",
    "batch.aborted",
    "batch.cancelled",
    "batch.failures",
)
WebhookIdArg = Annotated[int, typer.Argument(help="The webhook id.", metavar="ID", min=1)]


@webhook_app.command("add")
def webhook_add(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(help="The http(s) URL to POST events to.", metavar="URL")
    ],
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            help="Only this event type (repeat); default: all. One of "
            + ", ".join(WEBHOOK_EVENTS)
            + ".",
            metavar="E",
        ),
    ] = None,
    all_batches: Annotated[
        bool, typer.Option("--all-batches", help="(admin) Every batch's events.")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Subscribe URL to your batches' events; prints the signing secret once."""
    body: dict[str, Any] = {"url": target, "all_batches": all_batches}
    if event:
        body["events"] = event
    with _api(ctx, url, token, as_json) as api:
        response = api.request("POST", "/api/v1/webhooks", json=body)
        if api.conn.as_json:
            _print_json(response)
            return
        created = response.json()
        console = _out()
        console.print(ui.webhooks_table([created], "Webhook added"))
        typer.echo(f"secret: {created.get('secret')}")
        typer.echo("Keep the secret: it is shown only now.", err=True)


@webhook_app.command("list")
def webhook_list(
    ctx: typer.Context,
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Webhooks per page.")] = 50,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your webhook subscriptions."""
    with _api(ctx, url, token, as_json) as api:
        response = api.request(
            "GET", "/api/v1/webhooks", params={"page": page, "page_size": page_size}
        )
        if api.conn.as_json:
            _print_json(response)
            return
        body = response.json()
        _out().print(ui.webhooks_table(body.get("items", []), f"{body.get('total', 0)} webhooks"))


@webhook_app.command("deliveries")
def webhook_deliveries(
    ctx: typer.Context,
    webhook_id: WebhookIdArg,
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Deliveries per page.")] = 50,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A webhook's delivery log, newest first."""
    with _api(ctx, url, token, as_json) as api:
        response = api.request(
            "GET",
            f"/api/v1/webhooks/{webhook_id}/deliveries",
            params={"page": page, "page_size": page_size},
        )
        if api.conn.as_json:
            _print_json(response)
            return
        _out().print(ui.deliveries_table(response.json()))


@webhook_app.command("redeliver")
def webhook_redeliver(
    ctx: typer.Context,
    webhook_id: WebhookIdArg,
    delivery_id: Annotated[
        int, typer.Argument(help="The delivery id.", metavar="DELIVERY_ID", min=1)
    ],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a delivery again (same webhook-id and body), now."""
    with _api(ctx, url, token, as_json) as api:
        response = api.request(
            "POST", f"/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"
        )
        if api.conn.as_json:
            _print_json(response)
            return
        d = response.json()
        typer.echo(f"Delivery {d.get('id')} ({d.get('event')}) queued for another attempt.")
