"""Each filter is declared once (``app/schemas/filters.py``) and everything else follows
from it, checked without a database: the SQL it becomes on both dialects, the list
endpoints' query parameters against the batch ``filter`` bodies, and the console's
filter forms."""

from __future__ import annotations

import inspect
from html.parser import HTMLParser
from typing import Any, get_args

import pytest
from sqlalchemy import ColumnElement, and_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from app.config import Settings
from app.main import create_app
from app.models import User
from app.schemas.batch import ArchiveFilter, InstanceFilter, TaskFilter
from app.schemas.common import NO_NUL, StrictModel
from app.schemas.filters import ARCHIVE_FILTERS, INSTANCE_FILTERS, TASK_FILTERS, FilterSet
from app.web.router import INSTANCES_FORM, TASKS_FORM, templates
from app.workflow.queries import filter_clauses, instance_filter_clauses, task_filter_clauses

DIALECTS: dict[str, Dialect] = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}

TARGETS: list[tuple[str, FilterSet, type[StrictModel]]] = [
    ("/api/v1/tasks", TASK_FILTERS, TaskFilter),
    ("/api/v1/instances", INSTANCE_FILTERS, InstanceFilter),
    ("/api/v1/archives", ARCHIVE_FILTERS, ArchiveFilter),
]
PAGING = {"page", "page_size"}


def sql(clauses: list[ColumnElement[bool]], dialect: str) -> str:
    """The clauses as the database would receive them, values inlined."""
    compiled = and_(*clauses).compile(
        dialect=DIALECTS[dialect], compile_kwargs={"literal_binds": True}
    )
    return str(compiled)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_task_filters_become_one_clause_each(dialect: str) -> None:
    values = {"node_id": "manager", "keyword": " 50%_off ", "department_id": 0, "ids": [4, 5]}
    text = sql(filter_clauses(TASK_FILTERS, values), dialect)
    like = {
        "postgresql": "process_instances.{} ILIKE '%%' || '50/%%/_off' || '%%' ESCAPE '/'",
        "sqlite": "lower(process_instances.{}) LIKE '%' || lower('50/%/_off') || '%' ESCAPE '/'",
    }[dialect]
    assert text == (
        "tasks.node_id = 'manager'"
        f" AND (({like.format('title')}) OR ({like.format('business_key')}))"
        " AND process_instances.department_id = 0"  # 0 is a department, not "no filter"
        " AND tasks.id IN (4, 5)"
    )


@pytest.mark.parametrize("dialect", DIALECTS)
def test_instance_bounds_are_utc_and_half_open(dialect: str) -> None:
    """A stored batch filter holds ISO text; a list gets a datetime: both bind in UTC."""
    values = {
        "status": "active",
        "started_after": "2026-01-01T01:00:00+01:00",
        "started_before": "2026-01-02T00:00:00Z",
    }
    text = sql(filter_clauses(INSTANCE_FILTERS, values), dialect)
    moment = {"postgresql": "{} 00:00:00+00:00", "sqlite": "{} 00:00:00.000000"}[dialect]
    assert text == (
        "process_instances.status = 'active'"
        f" AND process_instances.created_at >= '{moment.format('2026-01-01')}'"
        f" AND process_instances.created_at < '{moment.format('2026-01-02')}'"
    )


def test_blank_values_do_not_narrow_and_an_empty_id_list_matches_nothing() -> None:
    blank = {"status": "", "keyword": "   ", "definition_key": None, "node_id": ""}
    assert filter_clauses(TASK_FILTERS, blank) == []
    assert sql(filter_clauses(TASK_FILTERS, {"ids": []}), "postgresql") == "false"


def test_an_undeclared_name_is_refused() -> None:
    with pytest.raises(TypeError, match="business_key"):
        filter_clauses(TASK_FILTERS, {"business_key": "PO-7"})


def test_visibility_comes_before_the_filters() -> None:
    user = User(id=3, role="user")
    assert sql(task_filter_clauses(user, node_id="manager"), "sqlite") == (
        "tasks.assignee_id = 3 AND tasks.node_id = 'manager'"
    )
    admin = User(id=1, role="admin")
    assert instance_filter_clauses(admin) == []
    assert "process_instances.initiator_id = 3" in sql(instance_filter_clauses(user), "sqlite")


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///unused.db"), run_jobs=False)
    return app.openapi()


def list_parameters(openapi: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    """A list endpoint's filter parameters (paging aside): name → schema."""
    parameters = openapi["paths"][path]["get"]["parameters"]
    return {p["name"]: p["schema"] for p in parameters if p["name"] not in PAGING}


@pytest.mark.parametrize(("path", "declared", "model"), TARGETS)
def test_query_parameters_and_body_filter_agree(
    openapi: dict[str, Any], path: str, declared: FilterSet, model: type[StrictModel]
) -> None:
    """The list takes every declared field as a query parameter, a batch's ``filter``
    the batch fields; a field in both has the same name, type, bounds and description
    (the query side may add the no-NUL pattern: in a body, StrictModel refuses NUL)."""
    assert list(list_parameters(openapi, path)) == declared.names
    assert list(model.model_fields) == [f.name for f in declared.batch_fields]
    query = inspect.signature(declared.query_dependency()).parameters
    for name, field in model.model_fields.items():
        value_type, parameter = get_args(query[name].annotation)
        assert value_type == field.annotation, name
        assert all(bound in parameter.metadata for bound in field.metadata), name
        assert parameter.description == field.description, name


@pytest.mark.parametrize(("path", "declared"), [(path, declared) for path, declared, _ in TARGETS])
def test_bounded_query_text_refuses_nul(
    openapi: dict[str, Any], path: str, declared: FilterSet
) -> None:
    """As before the declaration: NUL in a bounded text parameter is a 422 by pattern."""
    parameters = list_parameters(openapi, path)
    for field in declared.fields:
        patterns = [s["pattern"] for s in parameters[field.name]["anyOf"] if "pattern" in s]
        assert patterns == ([NO_NUL] if field.max_length else []), field.name


class _Controls(HTMLParser):
    """The named controls of one form: name → its attributes."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.controls: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form":
            self.inside = found.get("id") == self.form_id
        elif self.inside and tag in ("input", "select") and found.get("name"):
            self.controls[str(found["name"])] = found

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False


def render(template: str, context: dict[str, Any]) -> str:
    """A console page as the router renders it (for a signed-out viewer: the form does
    not depend on who looks)."""
    return templates.get_template(template).render(
        request=None, viewer=None, title="t", script=None, static="/s", **context
    )


@pytest.mark.parametrize(
    ("template", "form_id", "context", "declared"),
    [
        ("tasks.html", "task-filters", TASKS_FORM, TASK_FILTERS),
        ("instances.html", "instance-filters", INSTANCES_FORM, INSTANCE_FILTERS),
    ],
)
def test_the_console_form_lists_exactly_the_declared_fields(
    template: str, form_id: str, context: dict[str, Any], declared: FilterSet
) -> None:
    parser = _Controls(form_id)
    parser.feed(render(template, context))
    controls = parser.controls
    assert list(controls) == [f.name for f in declared.console_fields]
    for field in declared.console_fields:
        control = controls[field.name]
        assert control["data-kind"] == field.kind
        assert ("data-batch" in control) == field.in_batch, field.name


def test_my_tasks_opens_on_pending_tasks() -> None:
    assert '<option value="pending" selected>' in render("tasks.html", TASKS_FORM)
