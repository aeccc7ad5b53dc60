"""The customer segment input: its Redis and PostgreSQL paths, default and version.

A model registered with a segmentation version takes the customer's segment of
that version as its last input, whatever newer versions were published since.
The last test trains such a model with the training job and scores with it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from fraudcore.decisions import DECISIONS_SCHEMA
from fraudcore.features import CustomerEvent, TerminalLabel
from fraudcore.registry import PRODUCTION_STAGE
from fraudcore.segments import (
    CUSTOMER_SEGMENT,
    NO_SEGMENT,
    REDIS_KEPT_VERSIONS,
    SEGMENTED_MODEL_INPUTS,
    segment_of,
)
from fraudcore.settings import PlatformSettings
from fraudcore.store import PG_SCHEMA
from services.scorer.model import open_model
from services.scorer.settings import ScorerSettings
from tests.conftest import created_database
from tests.services.scorer.conftest import (
    TEST_THRESHOLD,
    SeededStores,
    ServedScorer,
    register_model,
)
from tests.services.scorer.test_feature_store import (
    make_history,
    offline_features,
    redis_then_postgres,
    request_body,
)
from tests.training.factories import (
    publish_offline_segments,
    segment_of_customer,
    segmented_rows,
    store_frames,
)
from training import train
from training.evaluation import CHAPTER3_WINDOW
from training.model import ModelConfig, fit_classifier, to_onnx
from training.reference import write_offline_store
from training.registry import promote
from training.segmentation.publish import (
    load_segments,
    segment_rows,
    write_postgres_segments,
    write_redis_segments,
)

SERVED_VERSION = "20240101T000000.000Z-00000000000a"
PUBLISHED_AT = datetime(2024, 1, 1, tzinfo=UTC)
# Segments at or above this one are fraud in the model's training rows.
RISKY_SEGMENT = 2


@dataclass(frozen=True)
class SegmentModel:
    """ONNX bytes and LightGBM text of a model over the segmented inputs."""

    onnx: bytes
    lightgbm_text: str


@pytest.fixture(scope="module")
def segment_model() -> SegmentModel:
    """A model whose fraud probability rises with the segment alone."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1000, len(SEGMENTED_MODEL_INPUTS))).astype(np.float32)
    x[:, -1] = rng.integers(-1, 5, size=1000)
    noise = rng.random(1000) < 0.05
    y = ((x[:, -1] >= RISKY_SEGMENT) ^ noise).astype(np.int64)
    config = ModelConfig(
        n_estimators=20,
        num_leaves=7,
        min_child_samples=10,
        inputs=SEGMENTED_MODEL_INPUTS,
    )
    model = fit_classifier(x, y, config)
    exported = to_onnx(model, SEGMENTED_MODEL_INPUTS).SerializeToString()
    return SegmentModel(exported, model.booster_.model_to_string())


def serve_segment_model(
    live_settings: ScorerSettings,
    store_dsn: str,
    model_dir: Path,
    segment_model: SegmentModel,
    registered_versions: list[str],
    segment_thresholds: dict[str, dict[str, float]] | None = None,
) -> ScorerSettings:
    """Register the segment model of SERVED_VERSION and return settings serving it."""
    model = register_model(
        store_dsn,
        model_dir,
        segment_model.onnx,
        feature_names=list(SEGMENTED_MODEL_INPUTS),
        lightgbm_text=segment_model.lightgbm_text,
        segmentation_version=SERVED_VERSION,
        segment_thresholds=segment_thresholds,
    )
    registered_versions.append(model.version)
    return live_settings.model_copy(
        update={"model_dir": model.model_dir, "model_version": model.version}
    )


@pytest.fixture
def segmented_settings(
    live_settings: ScorerSettings,
    store_dsn: str,
    tmp_path: Path,
    segment_model: SegmentModel,
    registered_versions: list[str],
) -> ScorerSettings:
    """Settings of ``live_settings`` serving the segment model of SERVED_VERSION."""
    return serve_segment_model(
        live_settings, store_dsn, tmp_path, segment_model, registered_versions
    )


def publish(
    stores: SeededStores,
    version: str,
    segments: dict[str, int],
    created_at: datetime = PUBLISHED_AT,
) -> None:
    """Publish a version to PostgreSQL and Redis as the segmentation job does."""
    ids = pd.Series(list(segments), dtype="string")
    rows = segment_rows(ids, list(segments.values()), version, created_at)
    with psycopg.connect(stores.dsn) as conn:
        write_postgres_segments(conn, rows)
    write_redis_segments(stores.redis, stores.prefix, rows)


History = tuple[list[CustomerEvent], list[TerminalLabel]]


@pytest.fixture
def history(stores: SeededStores) -> History:
    """The test's customer and terminal history, in Redis and PostgreSQL."""
    events, labels = make_history(stores)
    stores.seed_redis(events, labels)
    stores.seed_postgres(events, labels)
    return events, labels


def newer_version(index: int) -> str:
    return f"20240{index + 1}01T000000.000Z-00000000000{index}"


@pytest.mark.integration
def test_segment_from_redis_then_postgres(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    segmented_settings: ScorerSettings,
    stores: SeededStores,
    history: History,
    segment_model: SegmentModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.scorer.decisions")
    events, labels = history
    publish(stores, SERVED_VERSION, {stores.customer_id: 3})
    # A newer run that puts the customer in a segment the model calls safe.
    publish(
        stores, newer_version(1), {stores.customer_id: 0}, PUBLISHED_AT + timedelta(1)
    )
    served = run_scorer(segmented_settings)
    expected = offline_features(stores, events, labels) | {CUSTOMER_SEGMENT: 3.0}

    from_redis, from_postgres = redis_then_postgres(served, stores)

    assert from_redis["feature_source"] == "redis"
    assert from_postgres["feature_source"] == "postgres"
    assert list(from_redis["features"]) == list(SEGMENTED_MODEL_INPUTS)
    assert from_redis["features"] == expected
    assert from_postgres["features"] == expected
    assert from_redis["segment"] == 3
    assert from_postgres["segment"] == 3
    model = open_model(
        segment_model.onnx, "check", TEST_THRESHOLD, SEGMENTED_MODEL_INPUTS
    )
    assert from_redis["probability"] == model.predict(list(expected.values()))
    assert from_postgres["probability"] == from_redis["probability"]
    assert from_redis["decision"] == "block"
    assert from_redis["reasons"][0]["feature"] == CUSTOMER_SEGMENT
    logged = [r.getMessage() for r in caplog.records if r.name.endswith("decisions")]
    assert [json.loads(line)["segment"] for line in logged] == [3, 3]


@pytest.mark.integration
def test_customer_without_segment_gets_default(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    segmented_settings: ScorerSettings,
    stores: SeededStores,
    history: History,
) -> None:
    events, labels = history
    other = f"{stores.customer_id}-other"
    publish(stores, SERVED_VERSION, {other: 3})
    served = run_scorer(segmented_settings)

    from_redis, from_postgres = redis_then_postgres(served, stores)

    assert from_redis["feature_source"] == "redis"
    assert from_postgres["feature_source"] == "postgres"
    assert from_redis["segment"] == NO_SEGMENT
    assert from_postgres["segment"] == NO_SEGMENT
    assert from_redis["features"][CUSTOMER_SEGMENT] == float(NO_SEGMENT)
    assert from_postgres["features"][CUSTOMER_SEGMENT] == float(NO_SEGMENT)
    assert from_redis["decision"] == "allow"


@pytest.mark.integration
def test_version_gone_from_redis_reads_postgres(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    segmented_settings: ScorerSettings,
    stores: SeededStores,
    history: History,
) -> None:
    events, labels = history
    publish(stores, SERVED_VERSION, {stores.customer_id: 3})
    for index in range(1, REDIS_KEPT_VERSIONS + 1):
        created = PUBLISHED_AT + timedelta(days=index)
        publish(stores, newer_version(index), {stores.customer_id: 0}, created)
    served = run_scorer(segmented_settings)

    decided = served.decision(request_body(stores))

    in_redis = segment_of(
        stores.redis, stores.prefix, stores.customer_id, SERVED_VERSION
    )
    assert in_redis is None
    assert decided["feature_source"] == "redis"
    assert decided["segment"] == 3
    assert decided["features"][CUSTOMER_SEGMENT] == 3.0


@pytest.mark.integration
def test_unsegmented_model_ignores_segments(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
    history: History,
) -> None:
    events, labels = history
    publish(stores, SERVED_VERSION, {stores.customer_id: 3})
    served = run_scorer(live_settings)

    decided = served.decision(request_body(stores))

    assert decided["segment"] is None
    assert CUSTOMER_SEGMENT not in decided["features"]
    assert decided["features"] == offline_features(stores, events, labels)


@pytest.fixture(scope="module")
def training_dsn(base_settings: PlatformSettings, run_id: str) -> Iterator[str]:
    """A database with the online-store tables whose registry only training fills."""
    with created_database(base_settings, f"fraud_segment_e2e_{run_id}") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(PG_SCHEMA)
            conn.execute(DECISIONS_SCHEMA)
        yield dsn


def publish_from_offline(
    offline_store: Path, version: str, stores: SeededStores, dsn: str
) -> None:
    """Copy a version from the offline store to PostgreSQL and Redis."""
    rows = load_segments(offline_store, version)
    with psycopg.connect(dsn) as conn:
        write_postgres_segments(conn, rows)
    write_redis_segments(stores.redis, stores.prefix, rows)


@pytest.mark.integration
def test_trained_segment_reaches_score(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
    history: History,
    training_dsn: str,
    tmp_path: Path,
) -> None:
    first_day = CHAPTER3_WINDOW.train_start
    offline = tmp_path / "offline"
    write_offline_store(*store_frames(segmented_rows(first_day, 21)), offline)
    segments = {str(c): segment_of_customer(c) for c in range(300)}
    segments[stores.customer_id] = RISKY_SEGMENT
    created = datetime(2018, 7, 24, tzinfo=UTC)
    trained_on = publish_offline_segments(offline, segments, created, first_day)
    publish_from_offline(offline, trained_on, stores, training_dsn)
    options = train.JobOptions(
        offline_store=offline,
        report_dir=tmp_path / "reports",
        model_dir=tmp_path / "models",
        pg_dsn=training_dsn,
        segmentation_version="latest",
    )
    trained = train.run(options)
    with psycopg.connect(training_dsn) as conn:
        promote(conn, trained.version, PRODUCTION_STAGE, by="test")
    # A later run that moves every customer to another segment.
    moved = {customer: (segment + 1) % 3 for customer, segment in segments.items()}
    later = publish_offline_segments(offline, moved, created + timedelta(1), first_day)
    publish_from_offline(offline, later, stores, training_dsn)
    events, labels = history
    settings = live_settings.model_copy(
        update={
            "pg_dsn": training_dsn,
            "model_dir": tmp_path / "models",
            "model_version": None,
        }
    )
    served = run_scorer(settings)
    model = open_model(
        trained.artifact_path.read_bytes(), "check", 0.5, SEGMENTED_MODEL_INPUTS
    )

    newest = segment_of(stores.redis, stores.prefix, stores.customer_id, later)
    from_redis, from_postgres = redis_then_postgres(served, stores)

    assert newest == moved[stores.customer_id]
    assert trained.metrics["segmentation_version"] == trained_on
    for decided, source in ((from_redis, "redis"), (from_postgres, "postgres")):
        assert decided["model_version"] == trained.version
        assert decided["feature_source"] == source
        assert decided["segment"] == RISKY_SEGMENT
        assert list(decided["features"]) == list(SEGMENTED_MODEL_INPUTS)
        assert decided["features"][CUSTOMER_SEGMENT] == float(RISKY_SEGMENT)
        features = list(decided["features"].values())
        assert decided["probability"] == model.predict(features)
    assert from_redis["features"] == offline_features(stores, events, labels) | {
        CUSTOMER_SEGMENT: float(RISKY_SEGMENT)
    }
    # The newer version's segment would have changed the score.
    moved_row = [*list(from_redis["features"].values())[:-1], 0.0]
    assert moved[stores.customer_id] == 0
    assert model.predict(moved_row) < from_redis["probability"]


@pytest.mark.integration
def test_segment_thresholds_decide_for_segment(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    store_dsn: str,
    tmp_path: Path,
    segment_model: SegmentModel,
    registered_versions: list[str],
    stores: SeededStores,
    history: History,
) -> None:
    # The model calls segment 0 safe, and its own thresholds block everything.
    thresholds = {"0": {"review": 0.0, "block": 0.0}}
    settings = serve_segment_model(
        live_settings, store_dsn, tmp_path, segment_model, registered_versions,
        thresholds,
    )  # fmt: skip
    publish(stores, SERVED_VERSION, {stores.customer_id: 0})
    served = run_scorer(settings)

    decided = served.decision(request_body(stores))

    assert decided["segment"] == 0
    assert decided["probability"] < TEST_THRESHOLD
    assert decided["decision"] == "block"
