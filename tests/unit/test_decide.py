"""What each instance operation decides for one permitted instance, and what approve's
gate says for one task — the sentences a user reads in a batch's details — without an
app or a database: rows are plain objects with the columns the type loads."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from app.domain import BatchRun, DetailStatus, Outcome
from app.errors import ValidationFailed
from app.operations import get_operation
from app.operations.instance_migrate import Plan
from app.workflow.approval import task_gate

PID = 7


def run_with(**params: Any) -> BatchRun:
    return BatchRun(batch_id=1, creator_id=2, params=params)


def instance(status: str, **columns: Any) -> SimpleNamespace:
    return SimpleNamespace(id=PID, status=status, **columns)


def decide(op_type: str, row: Any, run: BatchRun | None = None, prepared: Any = None) -> Outcome:
    op: Any = get_operation(op_type)
    outcome: Outcome = op.decide(run or run_with(), row, prepared)
    return outcome


def said(outcome: Outcome) -> tuple[DetailStatus, str | None, str | None]:
    return outcome.status, outcome.error_code, outcome.error


SUCCESS = (DetailStatus.SUCCESS, None, None)


# --------------------------------------------------------------------------- transitions


@pytest.mark.parametrize(
    ("op_type", "status", "expected"),
    [
        ("instance.suspend", "active", SUCCESS),
        (
            "instance.suspend",
            "suspended",
            (DetailStatus.IGNORED, None, f"Process {PID} is already suspended."),
        ),
        (
            "instance.suspend",
            "completed",
            (
                DetailStatus.FAILED,
                "wrong_state",
                f"Process {PID} is completed; only active processes can be suspended.",
            ),
        ),
        ("instance.resume", "suspended", SUCCESS),
        (
            "instance.resume",
            "active",
            (DetailStatus.IGNORED, None, f"Process {PID} is already active."),
        ),
        (
            "instance.resume",
            "terminated",
            (
                DetailStatus.FAILED,
                "wrong_state",
                f"Process {PID} is terminated; only suspended processes can be active.",
            ),
        ),
        ("instance.terminate", "active", SUCCESS),
        ("instance.terminate", "suspended", SUCCESS),
        (
            "instance.terminate",
            "terminated",
            (DetailStatus.IGNORED, None, f"Process {PID} is already terminated."),
        ),
        (
            "instance.terminate",
            "rejected",
            (
                DetailStatus.FAILED,
                "wrong_state",
                f"Process {PID} is rejected; only active or suspended processes can be terminated.",
            ),
        ),
        ("instance.complete", "suspended", SUCCESS),
        (
            "instance.complete",
            "completed",
            (DetailStatus.IGNORED, None, f"Process {PID} is already completed."),
        ),
        (
            "instance.complete",
            "terminated",
            (
                DetailStatus.FAILED,
                "wrong_state",
                f"Process {PID} is terminated; only active or suspended processes can be "
                "completed.",
            ),
        ),
    ],
)
def test_a_transition_decides_by_the_instance_state(
    op_type: str, status: str, expected: tuple[DetailStatus, str | None, str | None]
) -> None:
    assert said(decide(op_type, instance(status))) == expected


def test_terminate_takes_an_optional_reason_of_bounded_length() -> None:
    op = get_operation("instance.terminate")
    assert op.validate_params({}) == {}
    assert op.validate_params({"reason": "duplicate"}) == {"reason": "duplicate"}
    with pytest.raises(ValidationFailed) as caught:
        op.validate_params({"reason": "x" * 2001})
    assert caught.value.fields == [
        {
            "loc": ["params", "reason"],
            "msg": "String should have at most 2000 characters",
            "type": "string_too_long",
        }
    ]


def test_suspend_refuses_params_it_does_not_know() -> None:
    with pytest.raises(ValidationFailed) as caught:
        get_operation("instance.suspend").validate_params({"reason": "x"})
    assert caught.value.detail == (
        "Invalid params for instance.suspend: reason: Extra inputs are not permitted"
    )


@pytest.mark.parametrize("status", ["active", "suspended", "completed", "rejected", "terminated"])
def test_delete_takes_any_status(status: str) -> None:
    assert said(decide("instance.delete", instance(status))) == SUCCESS


# --------------------------------------------------------------------------- set_variables


def set_variables(row: Any, variables: dict[str, Any]) -> Outcome:
    return decide("instance.set_variables", row, run_with(variables=variables))


def test_set_variables_on_an_active_instance_with_new_values_succeeds() -> None:
    row = instance("active", variables={"amount": 10, "city": "Rome"})
    assert said(set_variables(row, {"amount": 12})) == SUCCESS
    assert said(set_variables(instance("suspended", variables=None), {"a": 1})) == SUCCESS


def test_set_variables_already_held_is_ignored() -> None:
    row = instance("active", variables={"amount": 10, "city": "Rome"})
    assert said(set_variables(row, {"city": "Rome"})) == (
        DetailStatus.IGNORED,
        None,
        f"Process {PID} already has these variables.",
    )


def test_set_variables_compares_as_json_so_one_and_true_differ() -> None:
    row = instance("active", variables={"flag": 1, "ratio": 1})
    assert set_variables(row, {"flag": True}).status == DetailStatus.SUCCESS
    assert set_variables(row, {"ratio": 1.0}).status == DetailStatus.SUCCESS
    assert set_variables(row, {"flag": 1}).status == DetailStatus.IGNORED


@pytest.mark.parametrize("status", ["completed", "rejected", "terminated"])
def test_set_variables_on_an_ended_instance_fails(status: str) -> None:
    assert said(set_variables(instance(status, variables={}), {"a": 1})) == (
        DetailStatus.FAILED,
        "wrong_state",
        f"Process {PID} is {status}; variables can only be set on active or suspended processes.",
    )


@pytest.mark.parametrize(
    ("params", "loc", "msg"),
    [
        ({}, ["params", "variables"], "Field required"),
        (
            {"variables": {}},
            ["params", "variables"],
            "Value should have at least 1 item after validation, not 0",
        ),
        (
            {"variables": {"a": float("nan")}},
            ["params", "variables", "a"],
            "must be a finite number",
        ),
    ],
)
def test_set_variables_params_are_checked(params: dict[str, Any], loc: list[str], msg: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        get_operation("instance.set_variables").validate_params(params)
    assert caught.value.fields is not None
    assert [(f["loc"], f["msg"]) for f in caught.value.fields] == [(loc, msg)]


# --------------------------------------------------------------------------- migrate

KEY = "expense"
TARGET_ID = 10
PLAN = Plan(
    target_id=TARGET_ID,
    target_version=2,
    target_nodes=frozenset({"review", "pay"}),
    versions={9: 1, TARGET_ID: 2},
    tasks={PID: [(70, "approve")]},
)


def migrate(
    row: Any, mapping: dict[str, str] | None = None, plan: Plan = PLAN
) -> tuple[DetailStatus, str | None, str | None]:
    run = run_with(definition_key=KEY, target_version=2, node_mapping=mapping or {})
    return said(decide("instance.migrate", row, run, plan))


def old_version(status: str = "active", node: str | None = "approve", key: str = KEY) -> Any:
    """An instance on version 1, at ``node``, waiting on a task at "approve" (``PLAN``)."""
    return instance(status, definition_key=key, definition_id=9, current_node_id=node)


def test_migrate_with_every_step_mapped_succeeds() -> None:
    assert migrate(old_version(), {"approve": "review"}) == SUCCESS


def test_migrate_of_a_step_missing_from_the_target_version_says_map_it() -> None:
    assert migrate(old_version(), {"other": "review"}) == (
        DetailStatus.FAILED,
        "validation",
        f"Step approve of process {PID} does not exist in version 2; map it in node_mapping.",
    )


def test_migrate_checks_the_steps_of_pending_tasks_too() -> None:
    """At a step the target has, but waiting on a task at one it lacks."""
    assert migrate(old_version(node="pay"))[0] == DetailStatus.FAILED
    assert migrate(old_version(node=None), {"approve": "pay"}) == SUCCESS


def test_migrate_of_another_definition_fails() -> None:
    assert migrate(old_version(key="travel")) == (
        DetailStatus.FAILED,
        "validation",
        f"Process {PID} is a process of travel, not {KEY}.",
    )


def test_migrate_of_an_ended_instance_fails() -> None:
    assert migrate(old_version(status="completed"), {"approve": "review"}) == (
        DetailStatus.FAILED,
        "wrong_state",
        f"Process {PID} is completed; only active or suspended processes can be migrated.",
    )


def test_migrate_to_the_version_it_is_on_is_ignored() -> None:
    row = instance("active", definition_key=KEY, definition_id=TARGET_ID, current_node_id="pay")
    assert migrate(row) == (
        DetailStatus.IGNORED,
        None,
        f"Process {PID} is already on version 2.",
    )


def test_migrate_to_a_purged_version_is_not_found() -> None:
    gone = Plan(target_id=None, target_version=2, target_nodes=frozenset(), versions={})
    assert migrate(old_version(), {"approve": "review"}, gone) == (
        DetailStatus.FAILED,
        "not_found",
        f"Definition {KEY} has no version 2.",
    )


def test_migrate_params_default_to_no_mapping() -> None:
    op = get_operation("instance.migrate")
    assert op.validate_params({"definition_key": KEY, "target_version": 2}) == {
        "definition_key": KEY,
        "target_version": 2,
        "node_mapping": {},
    }


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        (
            {"definition_key": KEY, "target_version": 0},
            [(["params", "target_version"], "Input should be greater than or equal to 1")],
        ),
        (
            {"definition_key": KEY, "target_version": 2**31},
            [(["params", "target_version"], "Input should be less than or equal to 2147483647")],
        ),
        (
            {"definition_key": "", "target_version": 1},
            [(["params", "definition_key"], "String should have at least 1 character")],
        ),
        (
            {
                "definition_key": KEY,
                "target_version": 2,
                "node_mapping": {f"n{i}": "x" for i in range(201)},
            },
            [(["params", "node_mapping"], "may hold at most 200 entries, got 201")],
        ),
    ],
)
def test_migrate_params_are_checked_before_anything_is_read(
    params: dict[str, Any], fields: list[tuple[list[str], str]]
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        get_operation("instance.migrate").validate_params(params)
    assert caught.value.detail.startswith("Invalid params for instance.migrate: ")
    assert caught.value.fields is not None
    assert [(f["loc"], f["msg"]) for f in caught.value.fields] == fields


# --------------------------------------------------------------------------- approve's gate

ALICE, BOB, TID = 2, 3, 55


def task(
    status: str = "pending", assignee: int | None = ALICE, locked_by: int | None = None
) -> Any:
    return SimpleNamespace(task_status=status, assignee_id=assignee, locked_by_batch_id=locked_by)


def gate(row: Any, *, actor: int = ALICE, admin: bool = False, batch: int | None = 9) -> Any:
    outcome = task_gate(TID, row, actor_id=actor, actor_is_admin=admin, batch_id=batch)
    return None if outcome is None else said(outcome)


def test_the_assignee_may_decide_a_pending_task_unlocked_or_locked_by_this_batch() -> None:
    assert gate(task()) is None
    assert gate(task(locked_by=9), batch=9) is None


def test_a_missing_and_a_hidden_task_fail_alike() -> None:
    missing = (DetailStatus.FAILED, "not_found", f"Task {TID} does not exist.")
    assert gate(None) == missing
    assert gate(task(assignee=BOB)) == missing
    assert gate(task(status="completed", assignee=BOB, locked_by=4)) == missing


def test_an_already_decided_task_is_ignored() -> None:
    assert gate(task(status="completed")) == (
        DetailStatus.IGNORED,
        None,
        f"Task {TID} is already completed.",
    )


def test_an_admin_sees_a_foreign_task_but_may_not_decide_it() -> None:
    assert gate(task(assignee=BOB), admin=True) == (
        DetailStatus.FAILED,
        "forbidden",
        f"Only the assignee may decide task {TID}.",
    )
    assert gate(task(status="approved", assignee=BOB), admin=True) == (
        DetailStatus.IGNORED,
        None,
        f"Task {TID} is already approved.",
    )


def test_a_cancelled_task_is_a_wrong_state_failure_not_ignored() -> None:
    """Decided elsewhere → nothing to do (ignored); cancelled with its process → there
    is nothing to decide, and a person should know (a failure no retry fixes)."""
    assert gate(task(status="cancelled")) == (
        DetailStatus.FAILED,
        "wrong_state",
        f"Task {TID} was cancelled when its process ended; there is nothing to decide.",
    )
    assert gate(task(status="rejected"))[:2] == (DetailStatus.IGNORED, None)


def test_a_task_locked_by_another_batch_fails_as_locked() -> None:
    assert gate(task(locked_by=4), batch=9) == (
        DetailStatus.FAILED,
        "locked",
        f"Task {TID} is locked by batch 4.",
    )
    assert gate(task(locked_by=4), batch=None)[1] == "locked"  # an approval outside a batch
