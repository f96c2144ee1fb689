"""The vocabulary (``app.domain``) without an app or a database: what an outcome holds,
the retry rule in Python and in SQL, and how the status sets relate to the
transition table."""

from __future__ import annotations

import pytest
from sqlalchemy import column

from app.batches.state import TRANSITIONS
from app.domain import (
    FINAL,
    FINISHED_DETAILS,
    OUTCOME_STATUSES,
    RUNNABLE,
    STARTING,
    SUSPENDABLE,
    BatchStatus,
    DetailStatus,
    ErrorCode,
    Outcome,
    may_retry,
)

# --------------------------------------------------------------------------- outcomes


def test_success_has_no_error() -> None:
    outcome = Outcome.success()
    assert outcome.status is DetailStatus.SUCCESS
    assert (outcome.error, outcome.error_code, outcome.fields) == (None, None, None)
    assert outcome.retryable is None


def test_ignored_carries_its_reason_and_no_code() -> None:
    outcome = Outcome.ignored("Task 7 is already completed.")
    assert outcome.status is DetailStatus.IGNORED
    assert outcome.error == "Task 7 is already completed."
    assert (outcome.error_code, outcome.retryable) == (None, None)


def test_failed_carries_code_reason_and_fields() -> None:
    fields = [{"loc": ["form_data", "amount"], "msg": "required"}]
    outcome = Outcome.failed(ErrorCode.VALIDATION, "Amount is required.", fields)
    assert outcome.status is DetailStatus.FAILED
    assert (outcome.error_code, outcome.error, outcome.fields, outcome.retryable) == (
        "validation",
        "Amount is required.",
        fields,
        False,
    )
    assert Outcome.failed(ErrorCode.CONFLICT, "no").fields is None


@pytest.mark.parametrize("code", list(ErrorCode))
def test_only_transient_and_locked_failures_are_retryable(code: ErrorCode) -> None:
    """What the automatic retries touch follows from the code alone."""
    retryable = Outcome.failed(code, "why").retryable
    assert retryable is (code in {ErrorCode.TRANSIENT, ErrorCode.LOCKED})


def test_a_failure_without_a_code_is_internal_and_an_unknown_code_is_refused() -> None:
    assert Outcome(DetailStatus.FAILED, "boom").error_code is ErrorCode.INTERNAL
    with pytest.raises(ValueError, match="'invalid' is not a valid ErrorCode"):
        Outcome.failed("invalid", "no")  # type: ignore[arg-type]


def test_a_status_given_as_text_becomes_a_detail_status() -> None:
    """Outcomes built from a database string compare as the enum everywhere."""
    outcome = Outcome("failed", "boom", "transient")  # type: ignore[arg-type]
    assert isinstance(outcome.status, DetailStatus)
    assert outcome.status is DetailStatus.FAILED
    assert (outcome.error_code, outcome.retryable) == (ErrorCode.TRANSIENT, True)


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="'done' is not a valid DetailStatus"):
        Outcome("done")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    ("retry_count", "max_retries", "expected"),
    [(0, 3, True), (2, 3, True), (3, 3, False), (4, 3, False), (0, 0, False)],
)
def test_may_retry_on_numbers(retry_count: int, max_retries: int, expected: bool) -> None:
    assert may_retry(retry_count, max_retries) is expected


def test_may_retry_compiles_to_the_same_comparison_in_sql() -> None:
    """The same function builds the WHERE clause, so Python and SQL never disagree."""
    expr = may_retry(column("retry_count"), column("max_retries"))
    assert str(expr) == "retry_count < max_retries"
    bound = may_retry(column("retry_count"), 3)
    assert str(bound.compile(compile_kwargs={"literal_binds": True})) == "retry_count < 3"


# --------------------------------------------------------------------------- status sets


def test_final_and_runnable_never_overlap() -> None:
    assert frozenset() == FINAL & RUNNABLE
    assert frozenset() == FINAL & STARTING
    assert frozenset() == FINAL & SUSPENDABLE


def test_the_status_sets_are_what_the_engine_expects() -> None:
    s = BatchStatus
    assert {s.COMPLETED, s.CANCELLED, s.ABORTED} == FINAL
    assert {s.SEEDING, s.RUNNING} == RUNNABLE
    assert {s.CREATED, s.SEEDING} == STARTING
    assert set(BatchStatus) - FINAL - {s.SUSPENDED} == SUSPENDABLE
    assert {DetailStatus.PENDING, DetailStatus.RUNNING} == set(DetailStatus) - FINISHED_DETAILS
    assert FINISHED_DETAILS - {DetailStatus.CANCELLED} == OUTCOME_STATUSES


@pytest.mark.parametrize("status", sorted(FINAL))
def test_a_final_status_moves_only_to_running_by_a_retry(status: BatchStatus) -> None:
    assert TRANSITIONS[status] <= {BatchStatus.RUNNING}


def test_cancelled_is_the_end() -> None:
    assert TRANSITIONS[BatchStatus.CANCELLED] == frozenset()
    assert TRANSITIONS[BatchStatus.COMPLETED] == {BatchStatus.RUNNING}
    assert TRANSITIONS[BatchStatus.ABORTED] == {BatchStatus.RUNNING}


def test_every_status_has_a_row_and_every_unfinished_one_may_be_cancelled() -> None:
    assert set(TRANSITIONS) == set(BatchStatus)
    for status in set(BatchStatus) - FINAL:
        assert BatchStatus.CANCELLED in TRANSITIONS[status], status
