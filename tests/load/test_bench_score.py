"""The scorer benchmark's reading of the scorer's own metrics."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from load.bench_score import MetricsSnapshot, histogram_quantile, server_figures
from services.scorer.metrics import ScorerMetrics


def snapshot(metrics: ScorerMetrics) -> MetricsSnapshot:
    return MetricsSnapshot.parse(generate_latest(metrics.registry).decode())


def test_quantile_interpolates_within_bucket():
    before = {0.001: 0.0, 0.002: 0.0, float("inf"): 0.0}
    after = {0.001: 50.0, 0.002: 100.0, float("inf"): 100.0}

    assert histogram_quantile(before, after, 0.5) == pytest.approx(0.001)
    assert histogram_quantile(before, after, 0.75) == pytest.approx(0.0015)


def test_server_figures_count_only_the_interval():
    metrics = ScorerMetrics()
    metrics.request_duration.observe(0.2)
    metrics.feature_sources.labels(source="redis").inc(5)
    before = snapshot(metrics)
    for _ in range(99):
        metrics.request_duration.observe(0.0009)
        metrics.stage_duration.labels(stage="inference").observe(0.0002)
    metrics.request_duration.observe(0.004)
    metrics.feature_sources.labels(source="redis").inc(99)
    metrics.feature_sources.labels(source="default").inc()
    metrics.errors.labels(kind="redis_unavailable").inc()

    figures = server_figures(before, snapshot(metrics))

    assert 0.75 < figures["server_p99_ms"] <= 1.0
    assert 0.1 < figures["server_stage_p99_ms"]["inference"] <= 0.25
    assert "feature_fetch" not in figures["server_stage_p99_ms"]
    assert figures["feature_sources"] == {
        '{source="redis"}': 99.0,
        '{source="default"}': 1.0,
    }
    assert figures["errors_by_kind"] == {'{kind="redis_unavailable"}': 1.0}
