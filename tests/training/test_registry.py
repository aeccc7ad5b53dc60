"""Tests of the model registry against a real PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from fraudcore.features import MODEL_INPUTS
from training.registry import (
    ModelRecord,
    file_sha256,
    latest_production,
    register_model,
)

CREATED = datetime(2018, 8, 15, 6, 0, tzinfo=UTC)


@pytest.fixture
def registry_conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """Connection whose search path is a schema of its own, dropped afterwards."""
    schema = f"registry_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.commit()
        yield conn
        conn.rollback()
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        conn.commit()


def _record(
    version: str, created_at: datetime = CREATED, **changes: Any
) -> ModelRecord:
    fields: dict[str, Any] = {
        "version": version,
        "artifact_path": f"/models/{version}/model.onnx",
        "artifact_sha256": "0" * 64,
        "feature_names": MODEL_INPUTS,
        "metrics": {"auc_roc": 0.88, "card_precision_at_100_daily": {"d": 0.3}},
        "threshold": 0.27,
        "created_at": created_at,
    }
    return ModelRecord(**(fields | changes))


@pytest.mark.integration
def test_latest_production_round_trip(registry_conn: psycopg.Connection) -> None:
    record = _record("v1")

    register_model(registry_conn, record)

    assert latest_production(registry_conn) == record


@pytest.mark.integration
def test_latest_production_newest_created(registry_conn: psycopg.Connection) -> None:
    register_model(registry_conn, _record("b-older", CREATED))
    register_model(registry_conn, _record("a-newer", CREATED + timedelta(hours=1)))

    latest = latest_production(registry_conn)

    assert latest is not None
    assert latest.version == "a-newer"


@pytest.mark.integration
def test_latest_production_same_time_by_version(
    registry_conn: psycopg.Connection,
) -> None:
    register_model(registry_conn, _record("v2"))
    register_model(registry_conn, _record("v1"))

    latest = latest_production(registry_conn)

    assert latest is not None
    assert latest.version == "v2"


@pytest.mark.integration
def test_latest_production_skips_other_stages(
    registry_conn: psycopg.Connection,
) -> None:
    register_model(registry_conn, _record("v1"))
    later = CREATED + timedelta(days=1)
    register_model(registry_conn, _record("v2", later, stage="staging"))

    latest = latest_production(registry_conn)

    assert latest is not None
    assert latest.version == "v1"


@pytest.mark.integration
def test_latest_production_without_table(registry_conn: psycopg.Connection) -> None:
    assert latest_production(registry_conn) is None
    # The lookup must leave the connection usable.
    assert registry_conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.integration
def test_latest_production_empty_table(registry_conn: psycopg.Connection) -> None:
    register_model(registry_conn, _record("v1", stage="archived"))

    assert latest_production(registry_conn) is None


@pytest.mark.integration
def test_register_model_repeated_version_raises(
    registry_conn: psycopg.Connection,
) -> None:
    register_model(registry_conn, _record("v1"))

    with pytest.raises(psycopg.errors.UniqueViolation, match="model_registry_pkey"):
        register_model(registry_conn, _record("v1"))


def test_file_sha256_known_digest(tmp_path: Path) -> None:
    path = tmp_path / "artifact"
    path.write_bytes(b"abc")

    assert file_sha256(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
