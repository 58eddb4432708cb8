"""The shipped operations files: alert rules (promtool), the Prometheus configuration, the
Grafana dashboard and its provisioning, and docker-compose's wiring of them.

Every PromQL expression, in the dashboard and in the rules, may name only metrics the
switch or the settlement scheduler exports (read from their prometheus_client registries,
by type), or Prometheus's own `up`.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import settlement
import switch
from settlement import metrics as settlement_metrics
from switch.config import Settings
from tests import logscan
from tests.conftest import ROOT

OPS = ROOT / "ops"
DASHBOARD = OPS / "grafana" / "loyalty-switch.json"
SETTLEMENT_LAG = "loyalty_settlement_lag_working_seconds"
# Metrics Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
             "gauge": ("",), "summary": ("_count", "_sum", "")}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in braces or in by/on/... lists), strings or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (mti, response_code) (rate(loyalty_messages_total{mti="0100"}[5m]))',
     {"loyalty_messages_total"}),
    ("histogram_quantile(0.99, sum by (phase, le) (rate(a_bucket[$__rate_interval])))",
     {"a_bucket"}),
    ("x > 0 and on (instance, job) y{state=\"in_use\"} >= on (job) z", {"x", "y", "z"}),
    ("max(lag) / 3600 > 20 * 3600", {"lag"}),
    ('up{job="a b"} == 0 or vector(1)', {"up"}),
])
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def _import_all(package: Any) -> None:
    """Import every module of a package, so each metric it defines is in the registry."""
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)


def exported_names() -> set[str]:
    """What the switch's registry and the settlement scheduler's serve."""
    _import_all(switch)
    _import_all(settlement)
    names = set()
    for registry in (REGISTRY, settlement_metrics.REGISTRY):
        for family in registry.collect():
            for suffix in _SUFFIXES.get(family.type, ("",)):
                names.add(family.name + suffix)
    return names


def allowed_names() -> set[str]:
    return exported_names() | PROMETHEUS_OWN


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            yield from walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]
    yield from walk(json.loads(DASHBOARD.read_text())["panels"])


def rule_exprs() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load((OPS / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def test_dashboard_queries_name_only_exported_metrics() -> None:
    allowed = allowed_names()
    exprs = list(dashboard_exprs())
    assert len(exprs) >= 15
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= allowed, f"{title}: unknown {names - allowed} in {expr!r}"


def test_dashboard_shows_each_area_the_operators_watch() -> None:
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    for name in ("loyalty_messages_total", "loyalty_request_duration_seconds_bucket",
                 "loyalty_requests_in_flight", "loyalty_connections_open",
                 "loyalty_connections_rejected_total", "loyalty_security_failures_total",
                 "loyalty_holds_pending", "loyalty_holds_expired_total",
                 "loyalty_db_pool_connections", "loyalty_db_pool_waiting",
                 "loyalty_db_errors_total", SETTLEMENT_LAG):
        assert name in used, name


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(
        (OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources}
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids, panel["title"]


def test_alert_rules_name_only_exported_metrics() -> None:
    allowed = allowed_names()
    for name, expr in rule_exprs():
        assert metric_names(expr) <= allowed, f"{name}: {metric_names(expr) - allowed}"


def test_the_settlement_lag_the_alerts_watch_is_exported() -> None:
    assert SETTLEMENT_LAG in exported_names()
    assert {SETTLEMENT_LAG} <= set().union(*(metric_names(e) for _, e in rule_exprs()))


def test_the_alerts_cover_the_required_conditions() -> None:
    alerts = {name for name, _ in rule_exprs()}
    assert {"LoyaltyDeclineRateSpike", "LoyaltySecurityFailureSpike", "LoyaltyLatencyP99High",
            "LoyaltyDatabaseUnavailable", "LoyaltySettlementLag"} <= alerts
    runbooks = (ROOT / "docs/operations.md").read_text()
    for alert in alerts:
        assert f"### {alert}" in runbooks, f"no runbook for {alert} in docs/operations.md"


def _promtool(*args: str, cwd: Path = OPS) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool missing: run scripts/install (Debian's prometheus)"
    return logscan.run_logged([binary, *args], cwd=cwd, timeout=60)


def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests() -> None:
    """ops/alerts_test.yml: each alert fires on its series and stays quiet on a near miss."""
    done = _promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((OPS / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    assert tested == {name for name, _ in rule_exprs()}


def test_promtool_check_config_loads_the_rules() -> None:
    done = _promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check is real: a rule with a PromQL syntax error fails it."""
    (tmp_path / "bad.yml").write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Bad\n        expr: sum(rate(x[5m])\n")
    assert _promtool("check", "rules", "bad.yml", cwd=tmp_path).returncode != 0


def test_docker_compose_mounts_rules_dashboard_and_provisioning() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prometheus = services["prometheus"]["volumes"]
    assert "./ops/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus
    grafana = services["grafana"]["volumes"]
    assert "./ops/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    mounted = [v.split(":")[1] for v in grafana if v.startswith("./ops/grafana/loyalty")]
    provider = yaml.safe_load(
        (OPS / "grafana/provisioning/dashboards/loyalty.yml").read_text())["providers"][0]
    assert mounted and all(Path(m).parent == Path(provider["options"]["path"])
                           for m in mounted)
    for volume in [*prometheus, *grafana]:
        assert (ROOT / volume.split(":")[0]).exists(), volume


def test_prometheus_scrapes_the_switch_and_the_scheduler_where_compose_runs_them() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in
            yaml.safe_load((OPS / "prometheus.yml").read_text())["scrape_configs"]}
    defaults = Settings()
    assert jobs == {"loyalty-switch": [f"switch:{defaults.metrics_port}"],
                    "loyalty-settlement": [f"settlement:{defaults.settlement_metrics_port}"]}
    assert services["settlement"]["command"][:2] == ["settle", "schedule"]
    assert services["settlement"]["environment"]["LOYALTY_SETTLEMENT_METRICS_HOST"] == \
        "0.0.0.0"
