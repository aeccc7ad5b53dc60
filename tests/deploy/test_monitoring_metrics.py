"""The dashboard's and the alerting rules' queries against the metrics in the code.

The exposed names come from the code itself: the scorer's registry as
``ScorerMetrics`` builds it, and the feature job's collector fed one value of
every exported Flink metric. A renamed metric or label fails here before a
panel goes blank or an alert goes silent.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client import CollectorRegistry

from fraudcore.settings import REPO_ROOT
from services.scorer.metrics import ScorerMetrics
from streaming.job_metrics import EXPORTED, FlinkJobCollector, MetricValue

DASHBOARD = REPO_ROOT / "k8s" / "monitoring" / "fraud-slo-dashboard.json"
RULES = REPO_ROOT / "k8s" / "monitoring" / "fraud-slo.rules.yml"
SCORER_SOURCES = sorted((REPO_ROOT / "services" / "scorer").rglob("*.py"))

METRIC_NAME = re.compile(r"\bfraud_[a-z0-9_]+\b")
RECORDED_NAME = re.compile(r"\bfraud:[a-z0-9_:]+")
GROUPING = re.compile(r"\b(?:by|without|ignoring|on)\s*\(([^)]*)\)")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
# Labels that Prometheus adds to every series or every bucket.
BUILTIN_LABELS = {"le", "job", "instance"}


class FixedClient:
    """A Flink REST client that returns one value of every exported metric."""

    def vertex_metrics(self) -> list[MetricValue]:
        values = []
        for suffix, (_, _, label) in EXPORTED.items():
            if label == "task":
                values.append(MetricValue("task", suffix, 1_000.0))
            else:
                values.append(MetricValue("task", f"operator.{suffix}", 1.0))
        return values

    def checkpoint_state_bytes(self) -> float:
        return 1.0


def series_labels(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Map each series name that ``registry`` exposes to its label names."""
    exposed: dict[str, set[str]] = {}
    for family in registry.collect():
        labels = set(getattr(family, "_labelnames", ()))
        for sample in family.samples:
            labels |= set(sample.labels)
        names = {
            "counter": [f"{family.name}_total"],
            "histogram": [
                f"{family.name}_{part}" for part in ("bucket", "sum", "count")
            ],
        }.get(family.type, [family.name])
        for name in names:
            exposed.setdefault(name, set()).update(labels)
    return exposed


@pytest.fixture(scope="module")
def code_metrics() -> dict[str, set[str]]:
    scorer = ScorerMetrics()
    exposed = series_labels(scorer.registry)
    # Labelled families without samples list no labels, so they come from the
    # metric objects themselves.
    for metric in vars(scorer).values():
        labelnames = getattr(metric, "_labelnames", None)
        if labelnames is None:
            continue
        for name in exposed:
            if name.startswith(metric._name):
                exposed[name].update(labelnames)
    job = CollectorRegistry(auto_describe=False)
    job.register(FlinkJobCollector(FixedClient()))
    exposed.update(series_labels(job))
    return exposed


def dashboard_queries() -> list[tuple[str, str, str]]:
    """Return (panel title, expression, legend format) of every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append(
                (panel["title"], target["expr"], target.get("legendFormat", ""))
            )
    return queries


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]  # fmt: skip


def rule_queries() -> list[tuple[str, str, str]]:
    """Return (rule name, expression, annotation text) of every rule."""
    queries = []
    for rule in rules():
        text = " ".join(rule.get("annotations", {}).values())
        queries.append((rule.get("alert") or rule["record"], rule["expr"], text))
    return queries


def all_queries() -> list:
    """Return every query as a pytest parameter named by its panel or rule."""
    named = [("dashboard: " + q[0], *q[1:]) for q in dashboard_queries()]
    named += [("rules: " + q[0], *q[1:]) for q in rule_queries()]
    return [pytest.param(*query, id=query[0]) for query in named]


def scorer_string_literals() -> set[str]:
    """Return every double-quoted string in the scorer's source."""
    found: set[str] = set()
    for path in SCORER_SOURCES:
        found.update(re.findall(r'"([a-z0-9_]+)"', path.read_text()))
    return found


def test_code_metrics_found(code_metrics):
    # Guards the fixture: an empty registry would let every check below pass.
    assert "fraud_score_request_duration_seconds_bucket" in code_metrics
    assert "fraud_score_errors_total" in code_metrics
    assert code_metrics["fraud_score_errors_total"] == {"kind"}
    assert "fraud_stream_watermark_seconds" in code_metrics
    assert code_metrics["fraud_stream_dead_letters_total"] == {"operator"}


def test_dashboard_has_queries():
    queries = dashboard_queries()
    assert len(queries) >= 15
    assert all(expr.strip() for _, expr, _ in queries)


@pytest.mark.parametrize("where, expr, _", all_queries())
def test_query_metric_names_exist(code_metrics, where, expr, _):
    names = set(METRIC_NAME.findall(expr))
    assert names or RECORDED_NAME.search(expr), f"{where}: no metric in {expr!r}"
    missing = names - set(code_metrics)
    assert not missing, f"{where}: {sorted(missing)} not exposed by the code"


@pytest.mark.parametrize("where, expr, legend", all_queries())
def test_query_labels_exist(code_metrics, where, expr, legend):
    names = set(METRIC_NAME.findall(expr))
    if not names:
        return
    available = set().union(*(code_metrics.get(name, set()) for name in names))
    available |= BUILTIN_LABELS
    used = {
        label.strip()
        for group in GROUPING.findall(expr)
        for label in group.split(",")
        if label.strip()
    }
    used |= {label for label, _, _ in MATCHER.findall(expr)}
    used |= set(LEGEND_LABEL.findall(legend))
    unknown = used - available
    assert not unknown, f"{where}: labels {sorted(unknown)} not on {sorted(names)}"


@pytest.mark.parametrize("where, expr, _", all_queries())
def test_query_label_values_exist(where, expr, _):
    if "fraud_score_" not in expr:
        return
    literals = scorer_string_literals()
    for label, _operator, pattern in MATCHER.findall(expr):
        for value in pattern.split("|"):
            assert value in literals, (
                f"{where}: {label} value {value!r} appears nowhere in services/scorer"
            )


def test_recorded_names_defined():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for name, expr, _ in rule_queries():
        used = set(RECORDED_NAME.findall(expr))
        assert used <= recorded, f"{name}: {sorted(used - recorded)} is not recorded"


def test_alerts_have_summary():
    for rule in rules():
        if "alert" in rule:
            assert rule.get("annotations", {}).get("summary"), rule["alert"]
            assert rule.get("labels", {}).get("severity"), rule["alert"]


def test_compose_mounts_shipped_files():
    # docker-compose.yml mounts the same files that kustomize ships.
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    grafana = [mount.split(":")[0] for mount in services["grafana"]["volumes"]]
    prometheus = [mount.split(":")[0] for mount in services["prometheus"]["volumes"]]
    assert "./" + str(DASHBOARD.relative_to(REPO_ROOT)) in grafana
    assert "./" + str(RULES.relative_to(REPO_ROOT)) in prometheus
