"""API keys: the X-API-Key header, revocation and the key CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable

import psycopg
import pytest

from services.scorer.auth import key_sha256, new_api_key
from services.scorer.settings import ScorerSettings
from tests.services.scorer.conftest import (
    SeededStores,
    ServedScorer,
    create_api_key,
    unique_transaction,
)


def test_new_key_embeds_its_id() -> None:
    key_id, key = new_api_key()
    _, other = new_api_key()

    assert key.startswith(f"fsk_{key_id}_")
    assert len(key) > 50
    assert key != other
    assert key_sha256(key) == hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def secured_scorer(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
) -> ServedScorer:
    settings = live_settings.model_copy(
        update={"require_api_key": True, "api_key_refresh_seconds": 0.2}
    )
    served = run_scorer(settings)
    deadline = time.monotonic() + 10
    while not served.runtime.api_keys.loaded and time.monotonic() < deadline:
        time.sleep(0.05)
    return served


def wait_for_key(served: ServedScorer, key: str, status: int) -> int:
    """Check ``key`` on /healthz-free routes until it gets ``status`` or 10 s pass."""
    deadline = time.monotonic() + 10
    while True:
        response = served.client.post("/labels", json={}, headers={"X-API-Key": key})
        if response.status_code == status or time.monotonic() > deadline:
            return response.status_code
        time.sleep(0.05)


@pytest.mark.integration
def test_score_requires_valid_key(
    secured_scorer: ServedScorer,
    stores: SeededStores,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, key = create_api_key(stores.dsn)
    wait_for_key(secured_scorer, key, 422)
    body = unique_transaction(stores)

    missing = secured_scorer.score(body)
    unknown = secured_scorer.client.post(
        "/score", json=body, headers={"X-API-Key": key + "x"}
    )
    valid = secured_scorer.client.post("/score", json=body, headers={"X-API-Key": key})

    assert missing.status_code == 401
    assert "X-API-Key header is missing" in missing.json()["detail"]
    assert unknown.status_code == 401
    assert unknown.json() == {"detail": "the API key in X-API-Key is not valid."}
    assert valid.status_code == 200
    assert key not in caplog.text
    assert key not in unknown.text


@pytest.mark.integration
def test_revoked_key_gets_403(
    secured_scorer: ServedScorer, stores: SeededStores
) -> None:
    key_id, key = create_api_key(stores.dsn)
    assert wait_for_key(secured_scorer, key, 422) == 422

    with psycopg.connect(stores.dsn, autocommit=True) as conn:
        from services.scorer.keys import revoke_key

        assert revoke_key(conn, key_id)
    status = wait_for_key(secured_scorer, key, 403)

    assert status == 403
    response = secured_scorer.client.post(
        "/labels", json={}, headers={"X-API-Key": key}
    )
    assert response.json() == {
        "detail": "the API key has been revoked; use another key."
    }


@pytest.mark.integration
def test_probes_and_metrics_stay_open(secured_scorer: ServedScorer) -> None:
    assert secured_scorer.client.get("/healthz").status_code == 200
    assert secured_scorer.client.get("/readyz").status_code == 200
    assert secured_scorer.client.get("/metrics").status_code == 200
    assert secured_scorer.client.post("/labels", json={}).status_code == 401


def test_readyz_503_until_keys_load(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
    served_model: object,
) -> None:
    served = run_scorer(offline_settings.model_copy(update={"require_api_key": True}))
    served.runtime.install(served_model)  # type: ignore[arg-type]

    ready = served.client.get("/readyz")
    score = served.client.post("/score", json={}, headers={"X-API-Key": "k"})

    assert ready.status_code == 503
    assert ready.json()["reason"] == "the API keys are not loaded yet."
    assert score.status_code == 503
    assert "API keys are not loaded yet" in score.json()["detail"]


def run_keys(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, FRAUD_PG_DSN=dsn)
    return subprocess.run(
        [sys.executable, "-m", "services.scorer.keys", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.integration
def test_keys_cli_create_list_revoke(store_dsn: str) -> None:
    created = run_keys(store_dsn, "create", "--name", "cli-test")
    key = created.stdout.splitlines()[-1]
    key_id = key.split("_")[1]
    listed = run_keys(store_dsn, "list")
    revoked = run_keys(store_dsn, "revoke", key_id)
    again = run_keys(store_dsn, "revoke", key_id)
    listed_after = run_keys(store_dsn, "list")

    assert created.returncode == 0
    assert f"created key {key_id} for 'cli-test'" in created.stdout
    assert key.startswith("fsk_")
    assert f"{key_id}" in listed.stdout
    assert "active  cli-test" in listed.stdout
    assert key not in listed.stdout
    assert revoked.returncode == 0
    assert again.returncode == 1
    assert f"no active key has the id {key_id!r}." in again.stderr
    line = next(x for x in listed_after.stdout.splitlines() if x.startswith(key_id))
    assert "revoked" in line
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        stored = conn.execute(
            "SELECT key_sha256 FROM api_keys WHERE key_id = %s", (key_id,)
        ).fetchone()
    assert stored == (key_sha256(key),)
