"""The batch state machine (``app.batches.state``) without an app or a database: the
transition table, ``move`` on a plain ``Batch`` object, the retry rule, what each
state wakes on each backend, and the monitor's failure threshold."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from app.batches.monitor import over_threshold
from app.batches.state import (
    TRANSITIONS,
    is_exhausted,
    may_move,
    move,
    move_values,
    sources_of,
    wakeups,
)
from app.config import Settings
from app.domain import FINAL, BatchStatus, Wakeup
from app.errors import Conflict
from app.models import Batch

S = BatchStatus
SQLITE = Settings(database_url="sqlite+aiosqlite:///unused.db", jobs_per_batch=3, poll_time=2.0)
POSTGRES = Settings(
    database_url="postgresql+asyncpg://u@localhost/unused", jobs_per_batch=3, poll_time=2.0
)
BATCH_ID = 41


def a_batch(status: BatchStatus) -> Batch:
    return Batch(id=BATCH_ID, status=status.value, progress_seq=5)


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("scheduled", S.CREATED, True),
        ("scheduled", S.RUNNING, False),
        ("created", S.COMPLETED, True),
        ("seeding", S.ABORTED, True),
        ("running", S.SEEDING, False),
        ("suspended", S.SCHEDULED, True),
        ("suspended", S.ABORTED, False),
        ("completed", S.RUNNING, True),  # retry
        ("completed", S.CANCELLED, False),
        ("aborted", S.RUNNING, True),
        ("cancelled", S.RUNNING, False),
    ],
)
def test_may_move_follows_the_table(source: str, target: BatchStatus, allowed: bool) -> None:
    assert may_move(source, target) is allowed


def test_an_unknown_source_status_is_an_error() -> None:
    with pytest.raises(ValueError, match="'paused' is not a valid BatchStatus"):
        may_move("paused", S.RUNNING)


def test_sources_of_lists_every_status_that_may_move_there_sorted() -> None:
    assert sources_of(S.RUNNING) == ["aborted", "completed", "created", "seeding", "suspended"]
    assert sources_of(S.CANCELLED) == ["created", "running", "scheduled", "seeding", "suspended"]
    assert sources_of(S.SCHEDULED) == ["suspended"]
    assert sources_of(S.ABORTED) == ["running", "seeding"]


def test_sources_of_agrees_with_may_move_for_every_pair() -> None:
    for target in S:
        expected = sorted(s.value for s in S if may_move(s.value, target))
        assert sources_of(target) == expected, target
        assert all(target in TRANSITIONS[S(source)] for source in expected)


# --------------------------------------------------------------------------- move


def test_moving_to_running_starts_the_clock_and_bumps_the_sequence() -> None:
    batch = a_batch(S.CREATED)
    move(batch, S.RUNNING)
    assert batch.status == "running"
    assert isinstance(batch.started_at, datetime) and batch.started_at.tzinfo is UTC
    assert batch.finished_at is None
    assert batch.updated_at == batch.started_at
    assert batch.progress_seq == 6


def test_a_second_start_keeps_the_first_start_time() -> None:
    first = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    batch = a_batch(S.SUSPENDED)
    batch.started_at = first
    move(batch, S.RUNNING)
    assert batch.started_at == first


def test_a_final_move_stamps_the_end_and_a_retry_clears_it() -> None:
    batch = a_batch(S.RUNNING)
    move(batch, S.COMPLETED)
    assert batch.status == "completed"
    assert batch.finished_at is not None
    assert batch.started_at is None  # completing is not starting
    move(batch, S.RUNNING)
    assert batch.finished_at is None
    assert batch.started_at is not None
    assert batch.progress_seq == 7


def test_suspending_touches_but_neither_starts_nor_ends() -> None:
    batch = a_batch(S.SCHEDULED)
    move(batch, S.SUSPENDED)
    assert (batch.status, batch.started_at, batch.finished_at) == ("suspended", None, None)
    assert batch.updated_at is not None
    assert batch.progress_seq == 6


def test_a_forbidden_move_is_a_conflict_and_changes_nothing() -> None:
    batch = a_batch(S.CANCELLED)
    with pytest.raises(Conflict) as caught:
        move(batch, S.RUNNING, why="Cancelled batches cannot be retried.")
    assert caught.value.detail == (
        f"Batch {BATCH_ID} is cancelled; it cannot become running. "
        "Cancelled batches cannot be retried."
    )
    assert (batch.status, batch.progress_seq, batch.updated_at) == ("cancelled", 5, None)


def test_a_forbidden_move_without_a_reason_ends_at_the_sentence() -> None:
    with pytest.raises(Conflict) as caught:
        move(a_batch(S.RUNNING), S.SCHEDULED)
    assert caught.value.detail == f"Batch {BATCH_ID} is running; it cannot become scheduled."


def test_move_values_are_the_same_move_as_columns() -> None:
    now = datetime(2026, 5, 6, tzinfo=UTC)
    running = move_values(S.RUNNING, now)
    assert sorted(running) == ["progress_seq", "started_at", "status", "updated_at"]
    assert (running["status"], running["updated_at"]) == ("running", now)
    assert str(running["progress_seq"]) == "batches.progress_seq + :progress_seq_1"
    assert str(running["started_at"]) == "coalesce(batches.started_at, :coalesce_1)"
    ended = move_values(S.ABORTED, now)
    assert sorted(ended) == ["finished_at", "progress_seq", "status", "updated_at"]
    assert ended["finished_at"] == now


# --------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    ("retry_count", "max_retries", "exhausted"),
    [(0, 3, False), (2, 3, False), (3, 3, True), (5, 3, True), (0, 0, True)],
)
def test_is_exhausted(retry_count: int, max_retries: int, exhausted: bool) -> None:
    assert is_exhausted(retry_count, max_retries) is exhausted


# --------------------------------------------------------------------------- wake-ups


def jobs(found: list[Wakeup]) -> list[str]:
    assert all(w.batch_id == BATCH_ID and w.priority == "high" for w in found)
    return [w.job for w in found]


def woken(
    settings: Settings,
    status: BatchStatus,
    *,
    seeding_done: bool = False,
    targets_resolved: bool = True,
) -> list[str]:
    return jobs(
        wakeups(
            settings,
            BATCH_ID,
            status.value,
            "high",
            seeding_done=seeding_done,
            targets_resolved=targets_resolved,
        )
    )


@pytest.mark.parametrize(("settings", "executors"), [(SQLITE, 1), (POSTGRES, 3)])
def test_each_state_wakes_what_moves_it_on(settings: Settings, executors: int) -> None:
    """One executor on SQLite (a single writer), ``jobs_per_batch`` on PostgreSQL."""
    run = ["execute"] * executors + ["monitor"]
    assert woken(settings, S.CREATED) == ["seed"]
    assert woken(settings, S.CREATED, seeding_done=True) == ["seed"]
    assert woken(settings, S.SEEDING) == ["seed", *run]
    assert woken(settings, S.RUNNING) == ["seed", *run]
    assert woken(settings, S.RUNNING, seeding_done=True) == run
    assert woken(settings, S.SUSPENDED) == ["seed"]  # finishes resolving its targets
    assert woken(settings, S.SUSPENDED, seeding_done=True) == []
    assert woken(settings, S.SUSPENDED, targets_resolved=False) == []  # scheduled filter
    assert woken(settings, S.SCHEDULED) == []


@pytest.mark.parametrize("status", sorted(FINAL))
@pytest.mark.parametrize("settings", [SQLITE, POSTGRES])
def test_a_final_state_wakes_nothing(settings: Settings, status: BatchStatus) -> None:
    assert woken(settings, status) == []
    assert woken(settings, status, seeding_done=True) == []


def test_the_monitor_is_deferred_one_poll_and_keyed_per_poll_slot() -> None:
    found = wakeups(POSTGRES, BATCH_ID, "running", "low", seeding_done=True)
    monitor = found[-1]
    assert monitor.job == "monitor"
    assert monitor.defer == POSTGRES.poll_time
    assert monitor.key is not None and monitor.key.startswith(f"monitor:{BATCH_ID}:")
    assert monitor.key.rsplit(":", 1)[1].isdigit()
    executors = found[:-1]
    assert all(w.defer is None and w.key is None for w in executors)


# --------------------------------------------------------------------------- monitor


def counters(
    *, failed: int, success: int = 0, ignored: int = 0, threshold: float | None = 0.5
) -> SimpleNamespace:
    return SimpleNamespace(
        status="running",
        failure_threshold=threshold,
        success=success,
        failed=failed,
        ignored=ignored,
    )


def test_over_threshold_needs_twenty_finished_items() -> None:
    assert not over_threshold(counters(failed=19))
    assert over_threshold(counters(failed=20))


def test_over_threshold_is_strictly_above_the_rate() -> None:
    assert not over_threshold(counters(failed=10, success=10))  # 0.5 is not above 0.5
    assert over_threshold(counters(failed=11, success=9))
    assert not over_threshold(counters(failed=10, success=5, ignored=5))  # ignored count


def test_no_threshold_or_not_running_never_aborts() -> None:
    assert not over_threshold(counters(failed=100, threshold=None))
    suspended = counters(failed=100)
    suspended.status = "suspended"
    assert not over_threshold(suspended)
    seeding = counters(failed=100)
    seeding.status = "seeding"
    assert over_threshold(seeding)
