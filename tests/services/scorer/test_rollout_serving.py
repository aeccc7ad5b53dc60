"""A real scorer following the registry: hot swaps, rejections, canary, shadows.

The scorers here serve the models that the registry's stages name, so the tests use a
database of their own, where no other test registers a production model.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from fraudcore.decisions import DECISIONS_SCHEMA
from fraudcore.registry import (
    REGISTRY_STATEMENTS,
)
from fraudcore.settings import PlatformSettings
from fraudcore.store import PG_SCHEMA
from services.scorer.metrics import ScorerMetrics
from services.scorer.registry import ServedModel
from services.scorer.rollout import Deployed, Rollout, customer_bucket
from services.scorer.settings import ScorerSettings
from tests.conftest import created_database
from tests.services.scorer.conftest import (
    ExplainedModel,
    SeededStores,
    ServedScorer,
    register_model,
    train_onnx_model,
    unique_transaction,
)
from training.registry import promote, rollback

pytestmark = pytest.mark.integration

WAIT_SECONDS = 30.0
POLL_SECONDS = 0.1


@pytest.fixture(scope="module")
def rollout_dsn(base_settings: PlatformSettings) -> Iterator[str]:
    """A database of this module with every table the scorer reads."""
    name = f"fraud_rollout_{uuid.uuid4().hex[:8]}"
    with created_database(base_settings, name) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for schema in (PG_SCHEMA, *REGISTRY_STATEMENTS, DECISIONS_SCHEMA):
                conn.execute(schema)
        yield dsn


@pytest.fixture
def registry(rollout_dsn: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Register test models in the module's database; delete them afterwards."""
    versions: list[str] = []

    def add(artifact: bytes, stage: str = "candidate", **changes: Any) -> str:
        row = register_model(rollout_dsn, tmp_path, artifact, stage=stage, **changes)
        versions.append(row.version)
        return row.version

    yield add
    with psycopg.connect(rollout_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM model_registry WHERE version = ANY(%s)", (versions,))


@pytest.fixture
def following_settings(
    live_settings: ScorerSettings, rollout_dsn: str, tmp_path: Path
) -> ScorerSettings:
    """Live settings that follow the registry of the module's database."""
    return live_settings.model_copy(
        update={
            "pg_dsn": rollout_dsn,
            "model_dir": tmp_path,
            "model_version": None,
            "registry_poll_seconds": POLL_SECONDS,
        }
    )


def change_stage(dsn: str, version: str, target: str, **options: Any) -> None:
    with psycopg.connect(dsn) as conn:
        promote(conn, version, target, by="test", **options)


def wait_for(condition: Callable[[], bool], description: str) -> None:
    """Poll ``condition`` until it holds, failing after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {description}")
        time.sleep(0.02)


def sample(metrics: ScorerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def production_version(served: ServedScorer) -> str | None:
    model = served.runtime.model
    return None if model is None else model.version


def test_hot_swap_under_load_fails_no_request(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    following_settings: ScorerSettings,
    registry: Callable[..., str],
    rollout_dsn: str,
    stores: SeededStores,
    onnx_artifact: bytes,
    explained_model: ExplainedModel,
) -> None:
    first = registry(onnx_artifact, "production")
    second = registry(explained_model.onnx)
    served = run_scorer(following_settings)
    assert production_version(served) == first
    per_client: list[list[httpx.Response]] = [[] for _ in range(4)]
    stop = threading.Event()

    def drive(responses: list[httpx.Response]) -> None:
        with httpx.Client(base_url=served.base_url, timeout=10.0) as client:
            for _ in range(3000):
                if stop.is_set():
                    return
                responses.append(client.post("/score", json=unique_transaction(stores)))

    def answered() -> int:
        return sum(len(responses) for responses in per_client)

    threads = [threading.Thread(target=drive, args=(r,)) for r in per_client]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: answered() >= 100, "requests before the promotion")
        change_stage(rollout_dsn, second, "production")
        wait_for(lambda: production_version(served) == second, "the swap")
        after = answered()
        wait_for(lambda: answered() >= after + 100, "requests after the swap")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    responses = [response for client in per_client for response in client]
    assert {response.status_code for response in responses} == {200}
    assert {response.json()["model_version"] for response in responses} == {
        first,
        second,
    }
    for client in per_client:
        versions = [response.json()["model_version"] for response in client]
        # A client's requests are sequential, so after the first response from
        # the second version, no response comes from the first.
        switched = versions.index(second) if second in versions else len(versions)
        assert set(versions[:switched]) <= {first}
        assert set(versions[switched:]) <= {second}
    assert sample(served.runtime.metrics, "fraud_score_model_swaps_total") == 1.0


def test_rollback_serves_previous_production(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    following_settings: ScorerSettings,
    registry: Callable[..., str],
    rollout_dsn: str,
    stores: SeededStores,
    onnx_artifact: bytes,
    explained_model: ExplainedModel,
) -> None:
    first = registry(onnx_artifact, "production")
    second = registry(explained_model.onnx)
    served = run_scorer(following_settings)
    change_stage(rollout_dsn, second, "production")
    wait_for(lambda: production_version(served) == second, "the promotion")
    assert served.decision(unique_transaction(stores))["model_version"] == second

    with psycopg.connect(rollout_dsn) as conn:
        rollback(conn, by="test")
    wait_for(lambda: production_version(served) == first, "the rollback")

    assert served.decision(unique_transaction(stores))["model_version"] == first
    assert sample(served.runtime.metrics, "fraud_score_model_swaps_total") == 2.0


@pytest.mark.parametrize("defect", ["sha256", "inputs"])
def test_bad_artifact_rejected_current_keeps_serving(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    following_settings: ScorerSettings,
    registry: Callable[..., str],
    rollout_dsn: str,
    stores: SeededStores,
    onnx_artifact: bytes,
    defect: str,
) -> None:
    good = registry(onnx_artifact, "production")
    if defect == "sha256":
        bad = registry(onnx_artifact, sha256="ab" * 32)
    else:
        bad = registry(train_onnx_model(width=5))
    served = run_scorer(following_settings)
    metrics = served.runtime.metrics

    change_stage(rollout_dsn, bad, "production")
    wait_for(
        lambda: (
            sample(
                metrics, "fraud_score_model_rejected_loads_total", stage="production"
            )
            == 1.0
        ),
        "the rejection",
    )

    decision = served.decision(unique_transaction(stores))
    assert decision["model_version"] == good
    assert production_version(served) == good
    assert sample(metrics, "fraud_score_model_swaps_total") == 0.0


def test_canary_and_shadow_recorded_per_decision(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    following_settings: ScorerSettings,
    registry: Callable[..., str],
    rollout_dsn: str,
    stores: SeededStores,
    onnx_artifact: bytes,
    explained_model: ExplainedModel,
) -> None:
    production = registry(onnx_artifact, "production")
    canary = registry(explained_model.onnx, "canary", canary_share=50.0)
    shadow = registry(onnx_artifact, "shadow")
    served = run_scorer(following_settings)
    customers = [f"{stores.customer_id}-{i}" for i in range(40)]

    decided: dict[str, dict[str, Any]] = {}
    for customer in customers:
        body = unique_transaction(stores, customer_id=customer)
        decided[str(body["transaction_id"])] = served.decision(body)
    for _ in range(2):
        again = served.decision(unique_transaction(stores, customer_id=customers[0]))
        assert again["model_version"] == decided_by(customers[0], production, canary)

    for body, customer in zip(decided.values(), customers, strict=True):
        expected = decided_by(customer, production, canary)
        assert body["model_version"] == expected
        shadows = [shadow] if expected == canary else [shadow, canary]
        assert body["shadow_versions"] == shadows
    assert {b["model_version"] for b in decided.values()} == {production, canary}
    metrics = served.runtime.metrics
    assert sample(metrics, "fraud_score_active_models", stage="production") == 1.0
    assert sample(metrics, "fraud_score_active_models", stage="canary") == 1.0
    assert sample(metrics, "fraud_score_active_models", stage="shadow") == 1.0

    ids = list(decided)
    wait_for(lambda: len(stored_decisions(rollout_dsn, ids)) == len(ids), "rows")
    for transaction_id, (model, shadows) in stored_decisions(rollout_dsn, ids).items():
        assert model == decided[transaction_id]["model_version"]
        assert shadows == decided[transaction_id]["shadow_versions"]
    expected_scores = {
        (t, v) for t, body in decided.items() for v in body["shadow_versions"]
    }
    wait_for(
        lambda: shadow_score_keys(rollout_dsn, ids) == expected_scores,
        "the shadow scores",
    )


def decided_by(customer: str, production: str, canary: str) -> str:
    return canary if customer_bucket(customer) < 0.5 else production


def stored_decisions(dsn: str, ids: list[str]) -> dict[str, tuple[str, list[str]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT transaction_id, model_version, shadow_versions "
            "FROM scored_transactions WHERE transaction_id = ANY(%s)",
            (ids,),
        ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def shadow_score_keys(dsn: str, ids: list[str]) -> set[tuple[str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT transaction_id, model_version FROM shadow_scores "
            "WHERE transaction_id = ANY(%s)",
            (ids,),
        ).fetchall()
    return {(row[0], row[1]) for row in rows}


# --- a shadow model that blocks until released --------------------------------


class HeldModel:
    """Wraps a scoring model; batch scoring waits until the test releases it."""

    def __init__(self, inner: Any, version: str) -> None:
        self._inner = inner
        self.version = version
        self.threshold = inner.threshold
        self.inputs = inner.inputs
        self.released = threading.Event()
        self.entered = threading.Event()

    def predict(self, features: Any) -> float:
        return float(self._inner.predict(features))

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.released.wait(WAIT_SECONDS):
            raise TimeoutError("the test did not release the shadow model")
        return np.asarray(self._inner.predict_rows(rows))


@pytest.fixture
def held_shadow(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    following_settings: ScorerSettings,
    registry: Callable[..., str],
    onnx_artifact: bytes,
) -> Iterator[tuple[ServedScorer, HeldModel]]:
    """A scorer whose only shadow model is held; the registry is not polled again."""
    registry(onnx_artifact, "production")
    settings = following_settings.model_copy(
        update={"registry_poll_seconds": 3600.0, "shadow_queue_size": 5}
    )
    served = run_scorer(settings)
    rollout = served.runtime.rollout
    assert rollout is not None
    held_model = HeldModel(
        rollout.production.served.model, f"held-{uuid.uuid4().hex[:8]}"
    )
    shadow = Deployed(
        ServedModel(held_model, None, (), None),  # type: ignore[arg-type]
        rollout.production.policy,
        "shadow",
        (held_model.version,),
    )
    served.runtime.swap(Rollout(rollout.production, shadows=(shadow,)))
    try:
        yield served, held_model
    finally:
        held_model.released.set()


def test_held_shadow_does_not_hold_responses(
    held_shadow: tuple[ServedScorer, HeldModel],
    rollout_dsn: str,
    stores: SeededStores,
) -> None:
    served, held_model = held_shadow
    first = served.decision(unique_transaction(stores))
    wait_for(held_model.entered.is_set, "the shadow model to start")

    # Every response arrives while the shadow model is still held.
    bodies = [served.decision(unique_transaction(stores)) for _ in range(19)]

    assert not held_model.released.is_set()
    ids = [first["transaction_id"]] + [b["transaction_id"] for b in bodies]
    assert all(b["shadow_versions"] == [held_model.version] for b in [first, *bodies])
    assert shadow_score_keys(rollout_dsn, ids) == set()
    held_model.released.set()
    wait_for(
        lambda: (
            (first["transaction_id"], held_model.version)
            in shadow_score_keys(rollout_dsn, ids)
        ),
        "the held_model shadow score",
    )


def test_full_shadow_queue_drops_scores(
    held_shadow: tuple[ServedScorer, HeldModel],
    rollout_dsn: str,
    stores: SeededStores,
) -> None:
    served, held_model = held_shadow
    metrics = served.runtime.metrics
    first = served.decision(unique_transaction(stores))
    wait_for(held_model.entered.is_set, "the shadow model to start")
    bodies = [served.decision(unique_transaction(stores)) for _ in range(19)]
    ids = [first["transaction_id"]] + [b["transaction_id"] for b in bodies]

    held_model.released.set()
    outcome = "fraud_score_shadow_scores_total"
    wait_for(
        lambda: (
            sample(metrics, outcome, outcome="written")
            + sample(metrics, outcome, outcome="dropped")
            == 20.0
        ),
        "every shadow score to be written or dropped",
    )

    # The first request was being scored when the others came, and the queue
    # has room for 5 of them, so the last 14 were dropped.
    assert sample(metrics, outcome, outcome="written") == 6.0
    assert sample(metrics, outcome, outcome="dropped") == 14.0
    assert shadow_score_keys(rollout_dsn, ids) == {
        (t, held_model.version) for t in ids[:6]
    }
