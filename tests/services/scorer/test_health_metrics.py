"""Liveness, readiness and metrics endpoints with both feature stores unreachable."""

from __future__ import annotations

from collections.abc import Callable

from services.scorer.settings import ScorerSettings
from tests.services.scorer.conftest import ServedScorer
from tests.services.scorer.test_score_requests import VALID


def test_healthz_ok_without_model_or_stores(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
) -> None:
    served = run_scorer(offline_settings)

    response = served.client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_503_without_model(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
) -> None:
    served = run_scorer(offline_settings)

    response = served.client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["status"] == "not_ready"
    assert response.json()["reason"] == "no model is loaded yet."


def test_readyz_503_when_no_store_answers(offline_scorer: ServedScorer) -> None:
    response = offline_scorer.client.get("/readyz")

    assert response.status_code == 503
    payload = response.json()
    assert payload["model_version"] == "test-model"
    assert payload["reason"] == "neither Redis nor PostgreSQL responds."


def test_metrics_exposes_scorer_series(offline_scorer: ServedScorer) -> None:
    offline_scorer.score(VALID)
    offline_scorer.client.post("/score", content=b"[]")

    response = offline_scorer.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'fraud_score_request_duration_seconds_bucket{le="0.005"}' in text
    assert "fraud_score_request_duration_seconds_count 2.0" in text
    assert 'fraud_score_decisions_total{decision="' in text
    assert 'model_version="test-model"' in text
    assert 'fraud_score_feature_source_total{source="default"} 1.0' in text
    assert 'fraud_score_errors_total{kind="invalid_request"} 1.0' in text
    assert 'fraud_score_errors_total{kind="redis_unavailable"} 1.0' in text
    assert 'fraud_score_errors_total{kind="postgres_unavailable"} 1.0' in text


def test_latency_buckets_fine_below_20ms(offline_scorer: ServedScorer) -> None:
    text = offline_scorer.client.get("/metrics").text

    bounds = [
        float(line.split('le="')[1].split('"')[0])
        for line in text.splitlines()
        if line.startswith("fraud_score_request_duration_seconds_bucket")
        and "+Inf" not in line
    ]
    assert sum(1 for bound in bounds if bound <= 0.02) >= 10
    assert max(bounds) >= 1.0
