"""The SSE client behind ``batchd watch`` and ``batch create --watch``.

Why its own module: following a batch is more than reading a stream — a dropped
connection is resumed with ``Last-Event-ID`` (the server then sends the current state
at once if it changed), and a stream that ends without its ``end`` event is checked
with a plain GET, so a refusal or an already finished batch is told apart from a
network blip. The display is a pair of callbacks, so the same loop drives the
progress bar and the quiet ``--json`` mode.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console

from app.cli import ui

Batch = dict[str, Any]


@dataclass
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass
class _SSEBuffer:
    event: str | None = None
    data: list[str] = field(default_factory=list)
    id: str | None = None


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """Server-sent events from a line stream: ``event:``/``data:``/``id:`` lines
    accumulate until a blank line; ``:`` lines are comments (pings)."""
    buf = _SSEBuffer()
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if buf.data or buf.event:
                yield SSEEvent(event=buf.event or "message", data="\n".join(buf.data), id=buf.id)
            buf = _SSEBuffer()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            buf.event = value
        elif name == "data":
            buf.data.append(value)
        elif name == "id":
            buf.id = value


class WatchError(Exception):
    """A problem that reconnecting cannot fix (bad token, unknown batch, …)."""


class StreamLost(Exception):
    """The stream could not be resumed within the allowed number of reconnects."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


def _ignore(_batch: Batch) -> None:
    return None


async def follow_batch(
    client: httpx.AsyncClient,
    batch_id: int,
    token: str,
    *,
    on_progress: Callable[[Batch], None] = _ignore,
    on_reconnect: Callable[[str, float], None] = lambda _reason, _delay: None,
    max_failures: int = 20,
    backoff_cap: float = 5.0,
) -> Batch:
    """Follow ``/batches/{id}/events`` until the ``end`` event; return the final batch.

    Raises ``WatchError`` when the server refuses (4xx) and ``StreamLost`` after
    ``max_failures`` reconnects in a row without a single event in between.
    """
    headers = {"Authorization": f"Bearer {token}"}
    last_id: str | None = None
    failures = 0
    while True:
        try:
            stream_headers = {**headers, "Accept": "text/event-stream"}
            if last_id is not None:
                stream_headers["Last-Event-ID"] = last_id
            async with client.stream(
                "GET", f"/api/v1/batches/{batch_id}/events", headers=stream_headers
            ) as response:
                await _raise_for_status(response)
                async for ev in iter_sse(response.aiter_lines()):
                    failures = 0  # the stream works: a later drop starts afresh
                    if ev.id is not None:
                        last_id = ev.id
                    if ev.event not in ("progress", "end") or not ev.data:
                        continue
                    batch = json.loads(ev.data)
                    if ev.event == "end":
                        return dict(batch)
                    on_progress(batch)
            reason = "the server closed the stream before the end event"
            current = await _probe(client, batch_id, headers)
            if current is not None and ui.is_final(current.get("status")):
                return current
        except (httpx.TransportError, json.JSONDecodeError) as exc:
            reason = str(exc) or exc.__class__.__name__
        failures += 1
        if failures > max_failures:
            raise StreamLost(reason, max_failures)
        delay = min(backoff_cap, 0.25 * 2**failures)
        on_reconnect(reason, delay)
        await asyncio.sleep(delay)


async def watch_batch(
    batch_id: int,
    url: str,
    token: str,
    *,
    console: Console | None = None,
    err_console: Console | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    max_failures: int = 20,
    backoff_cap: float = 5.0,
    refused_code: int = 3,
    lost_code: int = 3,
) -> int:
    """Follow a batch with a progress bar until it ends; return the exit code.

    0 = completed, 1 = aborted/cancelled, ``lost_code`` = the stream could not be
    resumed, ``refused_code`` = a request the server refuses — 3 by default for both, a
    server or network error, like every client command.
    """
    console = console or Console()
    err_console = err_console or Console(stderr=True)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), timeout=stream_timeout(), transport=transport
    ) as client:
        view = ui.BatchProgress(console, batch_id)
        with view:
            try:
                final = await follow_batch(
                    client,
                    batch_id,
                    token,
                    on_progress=view.show,
                    on_reconnect=view.reconnecting,
                    max_failures=max_failures,
                    backoff_cap=backoff_cap,
                )
            except WatchError as exc:
                view.stop()
                _error_line(err_console, str(exc))
                return refused_code
            except StreamLost as exc:
                view.stop()
                _error_line(err_console, f"giving up after {exc.attempts} retries: {exc.reason}")
                return lost_code
            view.show(final)
            view.stop()
    return ui.print_outcome(console, final)


def _error_line(console: Console, message: str) -> None:
    """``batchd: …`` on one line, as every client command reports an error."""
    console.print(f"batchd: {message}", markup=False, highlight=False, soft_wrap=True)


def stream_timeout() -> httpx.Timeout:
    """Reads may idle up to 60 s: the server pings every 15 s."""
    return httpx.Timeout(10.0, read=60.0)


def exit_code(batch: Batch) -> int:
    """0 when the batch completed, 1 when it ended aborted or cancelled."""
    return 0 if batch.get("status") == "completed" else 1


async def _raise_for_status(response: httpx.Response) -> None:
    """4xx → WatchError (reconnecting will not help); 5xx → retry like a dropped line."""
    if response.status_code < 400:
        return
    await response.aread()
    if response.status_code < 500:
        raise WatchError(_error_text(response))
    raise httpx.TransportError(_error_text(response))


async def _probe(client: httpx.AsyncClient, batch_id: int, headers: dict[str, str]) -> Batch | None:
    """The batch by plain GET after a stream ended early (None if that fails too).

    Tried twice: a stream that ended abruptly can leave a dead keep-alive connection in
    the pool, which fails the first request on it.
    """
    for attempt in range(2):
        try:
            response = await client.get(f"/api/v1/batches/{batch_id}", headers=headers)
            break
        except httpx.TransportError:
            if attempt:
                return None
    await _raise_for_status(response)
    body = response.json() if response.status_code == 200 else None
    return body if isinstance(body, dict) else None


def _error_text(response: httpx.Response) -> str:
    return error_sentence(response)[0]


def error_sentence(response: httpx.Response) -> tuple[str, list[str]]:
    """The server's sentence for an answer ≥ 400 — ``detail (HTTP 404 NotFound)`` — and,
    for a 422, its fields as ``loc: msg`` lines: the one wording of every client error."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    detail = body.get("detail")
    if not isinstance(detail, str):
        detail = response.text.strip() or response.reason_phrase
    code = body.get("error")
    suffix = f"HTTP {response.status_code}" + (f" {code}" if isinstance(code, str) else "")
    fields = []
    for f in body.get("fields") or []:
        if isinstance(f, dict):
            loc = ".".join(str(p) for p in f.get("loc") or [])
            fields.append(f"{loc}: {f.get('msg', '')}" if loc else str(f.get("msg", "")))
    return f"{detail} ({suffix})", fields
