"""The demo's promotion of its freshly trained model, against real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from deploy.demo import promote_to_production
from fraudcore.features import MODEL_INPUTS
from fraudcore.settings import PlatformSettings
from training.registry import (
    ModelRecord,
    get_model,
    register_model,
    stage_history,
)


@pytest.fixture
def schema_dsn(pg_dsn: str) -> Iterator[str]:
    """DSN whose search path is a schema of its own, dropped afterwards."""
    schema = f"demo_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield make_conninfo(pg_dsn, options=f"-c search_path={schema}")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def record(version: str, stage: str) -> ModelRecord:
    return ModelRecord(
        version=version,
        artifact_path=f"/models/{version}/model.onnx",
        artifact_sha256="0" * 64,
        feature_names=MODEL_INPUTS,
        metrics={},
        threshold=0.3,
        created_at=datetime(2018, 8, 15, tzinfo=UTC),
        stage=stage,
    )


@pytest.mark.integration
def test_demo_promotes_trained_candidate(schema_dsn: str) -> None:
    with psycopg.connect(schema_dsn) as conn:
        register_model(conn, record("earlier", "production"))
        register_model(conn, record("trained", "candidate"))

    promote_to_production(PlatformSettings(pg_dsn=schema_dsn), "trained")

    with psycopg.connect(schema_dsn) as conn:
        assert get_model(conn, "trained").stage == "production"
        assert get_model(conn, "earlier").stage == "archived"
        change = stage_history(conn, "trained")[-1]
    assert change.changed_by == "demo"
    assert change.forced is True
