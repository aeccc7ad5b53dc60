"""POST /score over HTTP with both feature stores unreachable.

Bad bodies are rejected before any store is read, so these tests need no servers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from fraudcore.features import MODEL_INPUTS, transaction_features
from fraudcore.schema import TransactionRecord
from services.scorer.model import ScoringModel
from services.scorer.registry import ServedModel
from services.scorer.routes.score import DirectScoreRoute
from services.scorer.settings import ScorerSettings
from tests.services.scorer.conftest import ServedScorer

VALID = {
    "transaction_id": "4242",
    "customer_id": "c-17",
    "terminal_id": "t-3",
    "amount": 57.16,
    "timestamp": "2024-04-06T01:30:00.250Z",
}
RESPONSE_FIELDS = {
    "transaction_id",
    "probability",
    "decision",
    "model_version",
    "shadow_versions",
    "feature_source",
    "degraded",
    "feature_age_ms",
    "segment",
    "rules",
    "reasons",
    "decided_at",
}


def with_fields(**changes: object) -> bytes:
    body = {**VALID, **changes}
    return json.dumps(body).encode()


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in VALID.items() if k != field}).encode()


BAD_BODIES = [
    ("empty body", b"", "request body is empty"),
    ("blank body", b"  \n", "request body is empty"),
    ("invalid json", b'{"transaction_id": ', "not valid JSON"),
    ("trailing comma", b'{"amount": 1,}', "not valid JSON"),
    ("array", b"[1, 2]", "must be a JSON object, got an array"),
    ("string", b'"score me"', "must be a JSON object, got a string"),
    ("number", b"12.5", "must be a JSON object, got a number"),
    ("null", b"null", "must be a JSON object, got null"),
    ("nan amount", with_fields(amount=float("nan")), "NaN or Infinity"),
    ("infinite amount", with_fields(amount=float("inf")), "NaN or Infinity"),
    ("minus infinity", with_fields(amount=float("-inf")), "NaN or Infinity"),
    ("nan identifier", with_fields(terminal_id=float("nan")), "NaN or Infinity"),
    ("overflowing amount", b'{"amount": 1e999}', "not valid JSON"),
    ("negative amount", with_fields(amount=-0.01), "field 'amount'"),
    ("amount as text", with_fields(amount="12.5"), "field 'amount'"),
    ("amount as boolean", with_fields(amount=True), "field 'amount'"),
    ("missing transaction", without("transaction_id"), "field 'transaction_id'"),
    ("missing customer", without("customer_id"), "field 'customer_id"),
    ("missing terminal", without("terminal_id"), "field 'terminal_id"),
    ("missing amount", without("amount"), "field 'amount'"),
    ("missing timestamp", without("timestamp"), "field 'timestamp'"),
    ("id as boolean", with_fields(transaction_id=True), "field 'transaction_id'"),
    ("id as float", with_fields(transaction_id=1.5), "field 'transaction_id'"),
    ("empty id", with_fields(customer_id=""), "field 'customer_id"),
    ("unparseable timestamp", with_fields(timestamp="yesterday"), "ISO-8601"),
    ("timestamp as number", with_fields(timestamp=1712367000), "field 'timestamp'"),
    ("timestamp out of range", with_fields(timestamp="1970-01-01T00:00:00"), "outside"),
    ("unknown field", with_fields(country="NL"), "field 'country'"),
    ("both aliases", with_fields(user_id="c-17"), "either customer_id or user_id"),
    ("invalid utf-8", b'{"transaction_id": "\xff"}', "not valid JSON"),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [(body, expected) for _, body, expected in BAD_BODIES],
    ids=[name for name, _, _ in BAD_BODIES],
)
def test_bad_body_rejected_with_422(
    offline_scorer: ServedScorer, body: bytes, expected: str
) -> None:
    response = offline_scorer.client.post(
        "/score", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    payload = response.json()
    assert set(payload) == {"detail"}
    detail = payload["detail"]
    assert expected in detail
    assert detail.endswith(".")
    assert "\n" not in detail
    assert detail.count(". ") == 0, detail


def test_oversized_body_rejected_with_413(offline_scorer: ServedScorer) -> None:
    limit = offline_scorer.runtime.settings.max_body_bytes
    body = with_fields(device_id="d" * 100, padding="x" * limit)

    response = offline_scorer.client.post("/score", content=body)

    assert response.status_code == 413
    assert response.json() == {"detail": f"request body is larger than {limit} bytes."}


def test_score_returns_contract_fields(offline_scorer: ServedScorer) -> None:
    response = offline_scorer.score(VALID)

    assert response.status_code == 200
    payload = response.json()
    assert set(payload) == RESPONSE_FIELDS
    assert payload["transaction_id"] == "4242"
    assert 0.0 <= payload["probability"] <= 1.0
    assert payload["decision"] in {"allow", "review", "block"}
    assert payload["model_version"] == "test-model"
    assert payload["degraded"] is True
    assert payload["feature_age_ms"] is None
    assert payload["segment"] is None


def test_score_accepts_user_and_merchant_aliases(
    offline_scorer: ServedScorer,
) -> None:
    body = {k: v for k, v in VALID.items() if k not in ("customer_id", "terminal_id")}
    body |= {"user_id": "c-17", "merchant_id": "t-3", "device_id": "phone-1"}

    aliased = offline_scorer.score(body)
    canonical = offline_scorer.score(VALID)

    assert aliased.status_code == 200
    assert aliased.json() | {"decided_at": None} == canonical.json() | {
        "decided_at": None
    }


def test_score_accepts_integer_ids(offline_scorer: ServedScorer) -> None:
    response = offline_scorer.score(VALID | {"transaction_id": 4242, "customer_id": 17})

    assert response.status_code == 200
    assert response.json()["transaction_id"] == "4242"


def test_calendar_features_use_feature_timezone(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
    scoring_model: ScoringModel,
) -> None:
    update = {"return_features": True, "feature_timezone": "Asia/Tokyo"}
    served = run_scorer(offline_settings.model_copy(update=update))
    served.runtime.install(ServedModel(scoring_model, None, (), None))

    # 01:30 UTC is night in UTC and 10:30 in Tokyo.
    payload = served.decision(VALID)

    assert payload["features"]["TX_DURING_NIGHT"] == 0.0


def test_default_features_when_stores_down(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
    scoring_model: ScoringModel,
) -> None:
    settings = offline_settings.model_copy(update={"return_features": True})
    served = run_scorer(settings)
    served.runtime.install(ServedModel(scoring_model, None, (), None))
    record = TransactionRecord.model_validate(VALID)
    expected = transaction_features(
        record.event_ms,
        record.transaction_id,
        record.amount,
        [],
        [],
        customer_id=record.customer_id,
        terminal_id=record.terminal_id,
        device_id=record.device_id,
    )

    payload = served.decision(VALID)

    assert payload["feature_source"] == "default"
    assert list(payload["features"]) == list(MODEL_INPUTS)
    assert payload["features"] == expected
    assert payload["probability"] == pytest.approx(
        scoring_model.predict(list(expected.values())), abs=0.0
    )


def test_features_omitted_by_default(offline_scorer: ServedScorer) -> None:
    payload = offline_scorer.decision(VALID)

    assert "features" not in payload
    assert payload["feature_source"] == "default"


@pytest.mark.parametrize(("threshold", "decision"), [(0.0, "block"), (1.0, "allow")])
def test_threshold_setting_overrides_model(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
    scoring_model: ScoringModel,
    threshold: float,
    decision: str,
) -> None:
    settings = offline_settings.model_copy(
        update={
            "block_threshold": threshold,
            "review_threshold": threshold,
            "degraded_decision": "allow",
        }
    )
    served = run_scorer(settings)
    served.runtime.install(ServedModel(scoring_model, None, (), None))

    payload = served.decision(VALID)

    assert payload["probability"] < 1.0
    assert payload["decision"] == decision


def test_score_without_model_returns_503(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
) -> None:
    served = run_scorer(offline_settings)

    response = served.score(VALID)

    assert response.status_code == 503
    assert "no model is loaded" in response.json()["detail"]


class ExplodingModel:
    """Stands in for a model whose inference fails with an internal message."""

    version = "exploding"
    threshold = 0.5

    def predict(self, features: object) -> float:
        raise RuntimeError("secret internal state 0xdeadbeef")


def test_internal_error_hides_exception_text(
    offline_scorer: ServedScorer, caplog: pytest.LogCaptureFixture
) -> None:
    exploding = ServedModel(ExplodingModel(), None, (), None)  # type: ignore[arg-type]
    offline_scorer.runtime.install(exploding)
    caplog.set_level(logging.CRITICAL, logger="uvicorn.error")

    response = offline_scorer.score(VALID)

    assert response.status_code == 500
    assert response.json() == {"detail": "internal error."}
    assert "deadbeef" not in response.text


def test_decision_log_hashes_ids(
    offline_scorer: ServedScorer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.scorer.decisions")

    offline_scorer.score(VALID | {"device_id": "phone-77"})

    lines = [r.getMessage() for r in caplog.records if r.name.endswith("decisions")]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["event"] == "score_decision"
    assert entry["transaction_id"] == "4242"
    assert entry["decision"] in {"allow", "review", "block"}
    assert entry["feature_source"] == "default"
    assert entry["customer"] == offline_scorer.runtime.decision_log.pseudonym("c-17")
    for raw in ("c-17", "t-3", "phone-77"):
        assert raw not in lines[0]


def test_unknown_route_returns_404(offline_scorer: ServedScorer) -> None:
    response = offline_scorer.client.get("/nothing-here")

    assert response.status_code == 404
    assert set(response.json()) == {"detail"}


def test_get_on_score_returns_405(offline_scorer: ServedScorer) -> None:
    response = offline_scorer.client.get("/score")

    assert response.status_code == 405


def test_openapi_documents_score_body(offline_scorer: ServedScorer) -> None:
    spec = offline_scorer.client.get("/openapi.json").json()

    body = spec["paths"]["/score"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert "transaction_id" in schema["properties"]


def test_direct_route_bypasses_router(offline_scorer: ServedScorer) -> None:
    forwarded: list[tuple[str, str]] = []
    sent: list[dict[str, Any]] = []

    async def router(scope: dict[str, Any], receive: Any, send: Any) -> None:
        forwarded.append((scope["method"], scope["path"]))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # An empty body is rejected before any store is read, so the runtime's
    # clients, which belong to the server's event loop, stay untouched.
    app = SimpleNamespace(state=SimpleNamespace(runtime=offline_scorer.runtime))
    middleware = DirectScoreRoute(router)
    for method, path in (("POST", "/score"), ("GET", "/score"), ("POST", "/labels")):
        scope = {"type": "http", "method": method, "path": path, "headers": []}
        asyncio.run(middleware(scope | {"app": app}, receive, send))

    assert forwarded == [("GET", "/score"), ("POST", "/labels")]
    assert sent[0]["status"] == 422
    assert b"request body is empty" in sent[1]["body"]
