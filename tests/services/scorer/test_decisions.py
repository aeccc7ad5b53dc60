"""Review and block decisions over HTTP: rules, reasons, the log and feature age."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from fraudcore.features import MODEL_INPUTS, CustomerEvent, DeviceEvent, TerminalLabel
from fraudcore.timeutil import parse_timestamp_ms
from services.scorer.clients import create_redis
from services.scorer.feature_store import HistoryLookup
from services.scorer.settings import ScorerSettings
from tests.services.scorer.conftest import (
    ExplainedModel,
    SeededStores,
    ServedScorer,
    closed_port,
    register_model,
    unique_transaction,
)

pytestmark = pytest.mark.integration

AMOUNT_CAP = {
    "name": "amount_cap",
    "feature": "TX_AMOUNT",
    "op": ">=",
    "value": 350,
    "decision": "review",
}


@pytest.fixture
def explained_settings(
    live_settings: ScorerSettings,
    store_dsn: str,
    tmp_path: Path,
    explained_model: ExplainedModel,
    registered_versions: list[str],
) -> ScorerSettings:
    """Live settings serving a model with its text model, thresholds and a rule."""
    folder = tmp_path / "explained"
    folder.mkdir()
    row = register_model(
        store_dsn,
        folder,
        explained_model.onnx,
        lightgbm_text=explained_model.lightgbm_text,
        threshold=0.9,
        review_threshold=0.4,
        rules=[AMOUNT_CAP],
    )
    registered_versions.append(row.version)
    return live_settings.model_copy(
        update={"model_dir": folder, "model_version": row.version}
    )


def risky_history(stores: SeededStores, event_ms: int) -> None:
    """Give the terminal a history of frauds, which raises the score."""
    labels = [
        TerminalLabel(event_ms - 3_600_000 * (i + 1), f"label-{i}", 1) for i in range(4)
    ]
    earlier = CustomerEvent(event_ms - 60_000, "earlier", 10.0, stores.terminal_id)
    stores.seed_redis([earlier], labels)


def test_high_amount_hits_rule_with_reasons(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    explained_settings: ScorerSettings,
    stores: SeededStores,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = unique_transaction(stores, amount=390.0)
    risky_history(stores, parse_timestamp_ms(str(body["timestamp"])))
    served = run_scorer(explained_settings)
    caplog.set_level(logging.INFO, logger="services.scorer.decisions")

    payload = served.decision(body)

    assert payload["decision"] in {"review", "block"}
    assert payload["rules"] == ["amount_cap"]
    assert 1 <= len(payload["reasons"]) <= 3
    for reason in payload["reasons"]:
        assert reason["feature"] in MODEL_INPUTS
        assert reason["contribution"] > 0
        assert reason["value"] == payload["features"][reason["feature"]]
    contributions = [reason["contribution"] for reason in payload["reasons"]]
    assert contributions == sorted(contributions, reverse=True)
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("decisions")]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["reasons"] == payload["reasons"]
    assert entry["rules"] == ["amount_cap"]


def test_allow_has_no_reasons(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    explained_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    served = run_scorer(explained_settings)

    payload = served.decision(unique_transaction(stores, amount=5.0))
    metrics = served.client.get("/metrics").text

    assert payload["decision"] == "allow"
    assert payload["reasons"] == []
    assert payload["rules"] == []
    assert 'fraud_score_stage_duration_seconds_count{stage="explain"}' not in metrics
    assert 'fraud_score_stage_duration_seconds_count{stage="inference"} 1.0' in metrics


def test_feature_age_is_newest_event_used(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    body = unique_transaction(stores)
    event_ms = parse_timestamp_ms(str(body["timestamp"]))
    events = [
        CustomerEvent(event_ms - 90_000, "older", 1.0, stores.terminal_id),
        CustomerEvent(event_ms + 5_000, "after", 1.0, "t2"),  # not used: later
    ]
    labels = [
        TerminalLabel(event_ms - 40_000, "known", 0),
        TerminalLabel(event_ms + 1, "unknown-yet", 1),  # not used: known later
    ]
    stores.seed_redis(events, labels)
    served = run_scorer(live_settings)

    payload = served.decision(body)

    assert payload["feature_source"] == "redis"
    assert payload["feature_age_ms"] == 40_000
    assert payload["degraded"] is False


def test_feature_age_counts_device_events(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    body = unique_transaction(stores, device_id=stores.device_id)
    event_ms = parse_timestamp_ms(str(body["timestamp"]))
    events = [CustomerEvent(event_ms - 90_000, "older", 1.0, stores.terminal_id)]
    devices = [
        DeviceEvent(event_ms - 20_000, "on-device", "another-customer"),
        DeviceEvent(event_ms + 1, "device-later", "another-customer"),  # not used
    ]
    stores.seed_redis(events, [], devices)
    served = run_scorer(live_settings)

    payload = served.decision(body)

    assert payload["feature_source"] == "redis"
    assert payload["feature_age_ms"] == 20_000


def test_feature_age_null_without_events(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    body = unique_transaction(stores)
    stores.seed_redis([], [TerminalLabel(1, "too-old", 1)])
    served = run_scorer(live_settings)

    payload = served.decision(body)

    assert payload["feature_source"] == "redis"
    assert payload["feature_age_ms"] is None


def test_degraded_review_has_no_reasons(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    explained_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    served = run_scorer(explained_settings)
    assert served.runtime.model is not None
    closed = closed_port()
    served.runtime.histories = HistoryLookup(
        create_redis(
            explained_settings.model_copy(
                update={"redis_url": f"redis://127.0.0.1:{closed}/0"}
            )
        ),
        served.runtime.pg_pool,
        "unused",
        redis_timeout_seconds=0.05,
        pg_timeout_seconds=0.0001,
        metrics=served.runtime.metrics,
    )

    payload = served.decision(unique_transaction(stores, amount=5.0))

    assert payload["degraded"] is True
    assert payload["decision"] == "review"
    assert payload["reasons"] == []
