"""deploy/: the Prometheus alert rules, their unit tests, the example scrape config and the
Grafana dashboard stay valid, and query only metrics batchd really exports.

With ``promtool`` on PATH (Debian's ``prometheus`` package; ``.ci/run`` installs it) the
rules, their unit tests (``batchd-alerts.test.yml``), the example config and every
dashboard query go through promtool; without it those tests skip and the structural
checks (dashboard JSON, metric names against prometheus-client's registry) still run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import app.main  # noqa: F401  (every module the app imports has registered its collectors)
import app.metrics  # noqa: F401  (the batchd_* collectors)
from app.config import Settings
from tests.tooling import missing_tool

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "batchd-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "batchd-alerts.test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "batchd-dashboard.json"

PROMTOOL = shutil.which("promtool")


@pytest.fixture
def require_promtool() -> None:
    """Skip without promtool — fail under CI, which installs it (``tests.tooling``)."""
    if PROMTOOL is None:
        missing_tool("promtool is not on PATH (Debian: apt-get install prometheus; .ci/run has it)")


needs_promtool = pytest.mark.usefixtures("require_promtool")

SCRAPE_JOBS = {"batchd-api", "batchd-worker"}

METRIC_NAME = re.compile(r"\b((?:batchd|process)_[a-z_]+)")
SELECTED = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
"""A metric selected with a matcher or a range (``name{…}``, ``name[5m]``)."""


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def exported_names() -> set[str]:
    """Sample names the processes' /metrics show, from the registry's collectors (a
    labelled metric without children shows no sample yet, so names come from its type)."""
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["", "_sum", "_count", "_created"],
        "info": ["_info"],
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert [g["name"] for g in groups] == ["batchd"]
    return list(groups[0]["rules"])


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    return [str(r["expr"]) for r in rules()]


# ---- promtool ---------------------------------------------------------------------


@needs_promtool
def test_the_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_the_example_scrape_config_passes_promtool_check() -> None:
    result = promtool("check", "config", CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(CONFIG.read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == SCRAPE_JOBS
    assert config["rule_files"] == [RULES.name]


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's $__ variables replaced
    by the durations Grafana would put there)."""
    exprs = [e.replace("$__rate_interval", "1m") for e in dashboard_exprs()]
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)
                        ],
                    }
                ]
            }
        )
    )
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


# ---- without promtool -------------------------------------------------------------


def test_every_alert_has_a_duration_a_severity_and_text() -> None:
    for rule in rules():
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in rules()}
    assert names >= {
        "BatchdBatchStuck",
        "BatchdHighFailureRate",
        "BatchdQueueGrowing",
        "BatchdWebhookBacklog",
        "BatchdWebhookDeliveriesFailing",
        "BatchdNoWorker",
    }
    assert fires == names
    assert quiet == names


def test_the_stuck_alert_watches_each_batch_at_the_settings_limits() -> None:
    """``BatchdBatchStuck`` reads the per-status age of the batch that has gone longest
    without progress — so one stuck batch fires while others progress — against the
    defaults of ``BATCH_STUCK_AFTER`` (running) and ``BATCH_START_TIMEOUT`` (created,
    seeding), not a global "no item at all" condition."""
    rule = next(r for r in rules() if r["alert"] == "BatchdBatchStuck")
    expr = " ".join(str(rule["expr"]).split())
    fields = Settings.model_fields
    stuck_after = fields["stuck_after"].default
    start_timeout = fields["start_timeout"].default
    assert (
        f'max by (status) (batchd_batch_heartbeat_age_seconds{{status="running"}}) > '
        f"{stuck_after:g}"
    ) in expr
    assert (
        "max by (status) "
        f'(batchd_batch_heartbeat_age_seconds{{status=~"created|seeding"}}) > {start_timeout:g}'
    ) in expr
    assert "batchd_items_processed_total" not in expr


def test_the_rules_expect_the_documented_scrape_jobs() -> None:
    jobs = {job for expr in rule_exprs() for job in re.findall(r'job="([^"]+)"', expr)}
    assert jobs == SCRAPE_JOBS


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    data = dashboard()
    assert 36 <= data["schemaVersion"] <= 41
    assert [i["name"] for i in data["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert panel["title"].strip(), panel
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_the_dashboard_has_the_promised_panels() -> None:
    exprs = "\n".join(dashboard_exprs())
    for needle in [
        "batchd_items_processed_total",
        'outcome="failed"',
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "batchd_batches",
        "batchd_queue_depth",
        "batchd_sse_subscribers",
        "batchd_webhook_deliveries_total",
        "batchd_webhook_outbox_backlog",
        "batchd_webhook_oldest_pending_seconds",
        "batchd_batch_heartbeat_age_seconds",
        'up{job="batchd-worker"}',
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ]:
        assert needle in exprs, needle


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_only_metrics_batchd_exports_are_queried(source: str) -> None:
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    text = RULES.read_text() if source == "rules" else "\n".join(exprs)
    used = set(METRIC_NAME.findall(text))
    assert "batchd_items_processed_total" in used or "batchd_queue_depth" in used
    exported = exported_names()
    unknown = sorted(used - exported)
    assert not unknown, (
        f"{source} query metrics that no batchd process exports (not in prometheus-client's "
        f"registry after importing app.main): {unknown}"
    )
    selected = {name for expr in exprs for name in SELECTED.findall(expr)}
    strangers = {n for n in selected if n != "up" and not METRIC_NAME.fullmatch(n)}
    assert not strangers, (
        f"{source} select metrics other than batchd_*, process_* and up: {strangers}"
    )


def test_the_name_check_catches_a_misspelt_metric() -> None:
    exported = exported_names()
    assert "batchd_items_processed_total" in exported
    assert "batchd_chunk_duration_seconds_bucket" in exported
    assert "batchd_items_processed" not in exported  # the family name is not a sample
    assert "batchd_item_processed_total" not in exported
