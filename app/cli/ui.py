"""Human output of the client commands: rich tables, the progress bar, one-line outcomes.

Why apart from the commands: ``--json`` prints the API's JSON as is, so everything a
person reads is here and nothing here is needed to script batchd.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table

Body = dict[str, Any]

FINISHED = ("success", "failed", "ignored", "cancelled")
STATUS_STYLE = {
    "completed": "green",
    "success": "green",
    "running": "cyan",
    "failed": "red",
    "aborted": "red",
    "cancelled": "yellow",
    "ignored": "yellow",
    "suspended": "magenta",
}


def _styled(status: Any) -> str:
    text = escape(str(status if status is not None else ""))
    style = STATUS_STYLE.get(str(status))
    return f"[{style}]{text}[/]" if style else text


def _cell(value: Any) -> str:
    return "" if value is None else escape(str(value))


def describe(batch: Body) -> str:
    """The progress bar's label: id, type, status and the outcome counters."""
    return (
        f"batch {batch.get('id')} {escape(str(batch.get('type', '')))} "
        f"[bold]{escape(str(batch.get('status', '?')))}[/] "
        f"[green]✓ {batch.get('success', 0)}[/] [red]✗ {batch.get('failed', 0)}[/] "
        f"[yellow]↷ {batch.get('ignored', 0)}[/]"
    )


def print_outcome(console: Console, batch: Body) -> int:
    """The last line of a watch; returns 0 for completed, 1 otherwise."""
    status = batch.get("status")
    console.print(
        f"Batch {batch.get('id')} {status}: {batch.get('success', 0)} success, "
        f"{batch.get('failed', 0)} failed, {batch.get('ignored', 0)} ignored, "
        f"{batch.get('cancelled', 0)} cancelled (of {batch.get('total', 0)})."
    )
    return 0 if status == "completed" else 1


class BatchProgress:
    """A rich progress bar fed with batch objects (from SSE ``progress`` events)."""

    def __init__(self, console: Console, batch_id: int) -> None:
        self.progress = Progress(
            # The label wraps and the bar narrows in an 80-column terminal; the numbers
            # and the elapsed time are never cut.
            TextColumn("{task.description}", table_column=Column(overflow="fold")),
            BarColumn(bar_width=20),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TaskProgressColumn(table_column=Column(no_wrap=True)),
            TimeElapsedColumn(table_column=Column(no_wrap=True)),
            console=console,
            transient=False,
        )
        self.bar = self.progress.add_task(describe({"id": batch_id}), total=None)
        self.started = False
        self.stopped = False

    def __enter__(self) -> BatchProgress:
        """Nothing is drawn yet: the bar appears with the first batch object, so a
        refused watch (unknown batch, bad token) prints its error line and nothing else."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def show(self, batch: Body) -> None:
        if not self.started:
            self.started = True
            self.progress.start()
        total = int(batch.get("total") or 0)
        done = sum(int(batch.get(k) or 0) for k in FINISHED)
        final = is_final(batch.get("status"))
        self.progress.update(
            self.bar,
            description=describe(batch),
            total=total or 1,
            completed=done if total else int(final),
        )

    def reconnecting(self, reason: str, delay: float) -> None:
        self.progress.console.log(
            f"connection lost ({escape(reason)}); reconnecting in {delay:.1f}s"
        )

    def stop(self) -> None:
        """Idempotent: each extra ``Progress.stop`` (or one on a bar never started)
        would print blank lines after the last word."""
        if self.started and not self.stopped:
            self.stopped = True
            self.progress.stop()


def batch_table(batch: Body) -> Table:
    """One batch as a two-column table (``batch show``, ``batch create``)."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # a long filter or error file name wraps, never cut
    table.add_row("id", _cell(batch.get("id")))
    table.add_row("type", _cell(batch.get("type")))
    table.add_row("status", _styled(batch.get("status")))
    table.add_row("priority", _cell(batch.get("priority")))
    progress = batch.get("progress")
    table.add_row(
        "progress",
        f"{float(progress):.1%}" if isinstance(progress, int | float) else _cell(progress),
    )
    table.add_row(
        "items",
        f"{batch.get('total', 0)} total · [green]{batch.get('success', 0)} success[/] · "
        f"[red]{batch.get('failed', 0)} failed[/] · {batch.get('ignored', 0)} ignored · "
        f"{batch.get('cancelled', 0)} cancelled · {batch.get('pending', 0)} pending",
    )
    if batch.get("skipped_rows"):
        table.add_row("skipped rows", f"{batch['skipped_rows']} (no Decision: not imported)")
    for key in ("filter", "params"):
        if batch.get(key):
            table.add_row(key, _cell(json.dumps(batch[key], ensure_ascii=False)))
    if batch.get("creator_name"):
        table.add_row("creator", f"{_cell(batch['creator_name'])} (user {batch.get('creator_id')})")
    elif batch.get("creator_id") is not None:
        table.add_row("creator", f"user {batch['creator_id']}")
    for key in (
        "chunk_size",
        "max_retries",
        "failure_threshold",
        "max_items_per_second",
        "start_at",
        "created_at",
        "started_at",
        "finished_at",
        "error_file",
    ):
        if batch.get(key) is not None:
            table.add_row(key, _cell(batch[key]))
    return table


LIST_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "right", "no_wrap"),
    ("type", "left", "fold"),
    ("status", "left", "fold"),
    ("total", "right", "fold"),
    ("success", "right", "fold"),
    ("failed", "right", "fold"),
    ("ignored", "right", "fold"),
    ("done", "right", "fold"),
    ("created", "left", "fold"),
)
"""``batch list``'s columns: (header, justify, overflow). Only the id never wraps: in a
narrow terminal rich narrows the widest wrappable columns (type, created) first, and a
cell folds onto a second line rather than lose a digit or vanish."""


WIDE = 100
"""Below this many columns ``batch list`` puts a batch's creation time under its date."""


def batches_table(page: Body, width: int | None = None) -> Table:
    """A page of ``GET /batches``, fitting an 80-column terminal: no vertical rules, one
    space of padding and a short ``done`` header leave room for every column; in a
    terminal ``width`` columns wide (below ``WIDE``) the created date and time take two
    lines, so the type column keeps the room (rich would narrow both alike)."""
    table = Table(
        caption=page_caption(page),
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for name, justify, overflow in LIST_COLUMNS:
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=overflow == "no_wrap",
            overflow="fold" if overflow == "fold" else "ellipsis",
            max_width=10 if name == "created" and width is not None and width < WIDE else None,
        )
    for b in page.get("items", []):
        table.add_row(
            _cell(b.get("id")),
            _cell(b.get("type")),
            _styled(b.get("status")),
            _cell(b.get("total")),
            _cell(b.get("success")),
            _cell(b.get("failed")),
            _cell(b.get("ignored")),
            f"{float(b.get('progress') or 0):.0%}",
            _cell(str(b.get("created_at") or "")[:16].replace("T", " ")),
        )
    return table


def details_table(page: Body) -> Table:
    """A page of ``GET /batches/{id}/details``: one row per item with its title (what
    people know it by; blank when the item is hidden), the failure's code (what ``batch
    failures`` and ``batch retry --code`` name) and its sentence in full."""
    table = Table(caption=page_caption(page), caption_justify="left")
    table.add_column("item", justify="right")
    table.add_column("title", overflow="fold")
    table.add_column("row", justify="right")
    table.add_column("status")
    table.add_column("retries", justify="right")
    table.add_column("code", no_wrap=True)
    table.add_column("error", overflow="fold")
    for d in page.get("items", []):
        table.add_row(
            _cell(d.get("item_id")),
            _cell(d.get("title")),
            _cell(d.get("row")),
            _styled(d.get("status")),
            _cell(d.get("retry_count")),
            _cell(d.get("error_code")),
            _cell(d.get("error")),
        )
    return table


def failures_table(body: Body, top: int | None = None) -> Table:
    """``GET /batches/{id}/failures``: one row per failure group, largest first — the
    code, whether a rerun may cure it, the sentence (the item's own id as N) and the first
    item ids. ``top`` keeps only the largest groups (``batch show``)."""
    groups = body.get("groups") or []
    shown = groups[:top] if top is not None else groups
    total = int(body.get("total_failed") or 0)
    caption = f"{total} failed in {len(groups)} group{'s' if len(groups) != 1 else ''}"
    if len(shown) < len(groups) or body.get("groups_truncated"):
        caption += f" · the largest {len(shown)} shown (batchd batch failures)"
    table = Table(caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("code", no_wrap=True)
    table.add_column("retryable", no_wrap=True)
    table.add_column("message", overflow="fold", ratio=3)
    table.add_column("sample items", overflow="fold", ratio=1)
    for g in shown:
        table.add_row(
            _cell(g.get("count")),
            f"[red]{_cell(g.get('error_code'))}[/]",
            "yes" if g.get("retryable") else "no",
            _cell(g.get("message")),
            _cell(", ".join(str(i) for i in g.get("sample_item_ids") or [])),
        )
    return table


def webhooks_table(items: list[Body], title: str) -> Table:
    """Webhook subscriptions: where they post, which events, whose batches, status
    (with the reason a subscription was disabled)."""
    table = Table(title=escape(title))
    for column in ("id", "url", "events", "scope", "status"):
        table.add_column(column)
    for w in items:
        status = _styled(w.get("status"))
        if w.get("disabled_reason"):
            status += f" ({_cell(w['disabled_reason'])})"
        table.add_row(
            _cell(w.get("id")),
            _cell(w.get("url")),
            _cell(", ".join(w.get("events") or ["all"])),
            "all batches" if w.get("all_batches") else "own batches",
            status,
        )
    return table


def deliveries_table(page: Body) -> Table:
    """A page of a webhook's delivery log. The last error is the receiver's or the
    network's text: printed as it is, never read as markup."""
    table = Table(title=f"{page.get('total', 0)} deliveries", caption=page_caption(page))
    for column in ("id", "event", "batch", "status", "attempts", "code", "last error", "next"):
        table.add_column(column)
    for d in page.get("items", []):
        table.add_row(
            _cell(d.get("id")),
            _cell(d.get("event")),
            _cell(d.get("batch_id")),
            _styled(d.get("status")),
            _cell(d.get("attempts")),
            _cell(d.get("last_status_code")),
            _cell(d.get("last_error")),
            _cell(d.get("next_attempt_at")),
        )
    return table


def page_caption(page: Body) -> str:
    size = int(page.get("page_size") or 1)
    total = int(page.get("total") or 0)
    pages = max(1, -(-total // size))
    return f"page {page.get('page', 1)} of {pages} · {total} in all"


def dry_run(console: Console, body: Body) -> None:
    """The prediction of ``--dry-run``: counts, then the first problems."""
    console.print(
        f"Dry run of {escape(str(body.get('type')))}: {body.get('total', 0)} items — "
        f"[green]{body.get('success', 0)} would succeed[/], "
        f"[red]{body.get('failed', 0)} would fail[/], "
        f"[yellow]{body.get('ignored', 0)} would be ignored[/]. Nothing was written."
    )
    problems = body.get("problems") or []
    if problems:
        table = Table(title=f"First {len(problems)} problems", title_justify="left")
        table.add_column("item", justify="right")
        table.add_column("status")
        table.add_column("error", overflow="fold")
        for p in problems:
            table.add_row(_cell(p.get("item_id")), _styled(p.get("status")), _cell(p.get("error")))
        console.print(table)


def is_final(status: object) -> bool:
    """Whether a batch in ``status`` is over. The statuses come from their one owner,
    imported late: it loads the ORM, which the client commands otherwise never need."""
    from app.batches.state import FINAL

    return status in {s.value for s in FINAL}
