"""Tests of the model registry and its lifecycle against a real PostgreSQL server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from fraudcore.features import MODEL_INPUTS
from fraudcore.registry import (
    REGISTRY_SCHEMA,
    STAGES,
    TRANSITIONS,
    InvalidTransition,
    check_canary_share,
    check_transition,
)
from training.registry import (
    ModelRecord,
    RegistryError,
    VersionNotFound,
    ensure_schema,
    file_sha256,
    get_model,
    latest_production,
    list_models,
    promote,
    register_model,
    rollback,
    stage_history,
)

CREATED = datetime(2018, 8, 15, 6, 0, tzinfo=UTC)


@pytest.fixture
def registry_schema(pg_dsn: str) -> Iterator[str]:
    """Name of a schema of its own, dropped afterwards."""
    schema = f"registry_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield schema
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def connect(pg_dsn: str, schema: str) -> psycopg.Connection[Any]:
    """Open a connection whose search path is ``schema``."""
    return psycopg.connect(pg_dsn, options=f"-c search_path={schema}")


@pytest.fixture
def registry_conn(
    pg_dsn: str, registry_schema: str
) -> Iterator[psycopg.Connection[Any]]:
    """Connection whose search path is a schema of its own."""
    with connect(pg_dsn, registry_schema) as conn:
        yield conn
        conn.rollback()


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


def _stages(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {record.version: record.stage for record in list_models(conn)}


# --- state machine, no server ------------------------------------------------


def test_transitions_cover_every_stage() -> None:
    assert set(TRANSITIONS) == set(STAGES)
    for targets in TRANSITIONS.values():
        assert targets <= set(STAGES)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("candidate", "shadow"),
        ("candidate", "production"),
        ("shadow", "canary"),
        ("canary", "canary"),
        ("canary", "production"),
        ("archived", "production"),
        ("archived", "candidate"),
    ],
)
def test_transition_allowed(current: str, target: str) -> None:
    check_transition("v1", current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("production", "production"),
        ("production", "shadow"),
        ("production", "canary"),
        ("shadow", "candidate"),
        ("archived", "shadow"),
        ("candidate", "candidate"),
    ],
)
def test_transition_rejected(current: str, target: str) -> None:
    with pytest.raises(InvalidTransition, match=f"from {current} to {target}"):
        check_transition("v1", current, target)


def test_production_archived_only_when_replaced() -> None:
    check_transition("v1", "production", "archived", replaced=True)

    with pytest.raises(InvalidTransition, match="cannot be archived alone"):
        check_transition("v1", "production", "archived")


def test_transition_unknown_stage_rejected() -> None:
    with pytest.raises(InvalidTransition, match="stage 'staging' is invalid"):
        check_transition("v1", "candidate", "staging")


@pytest.mark.parametrize("share", [0.0, -1.0, 100.5])
def test_canary_share_out_of_range(share: float) -> None:
    with pytest.raises(ValueError, match=r"must be in \(0, 100\]"):
        check_canary_share(share)


def test_canary_share_bounds_accepted() -> None:
    check_canary_share(100.0)
    check_canary_share(0.01)


def test_file_sha256_known_digest(tmp_path: Path) -> None:
    path = tmp_path / "artifact"
    path.write_bytes(b"abc")

    assert file_sha256(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# --- registration and lookups ------------------------------------------------


@pytest.mark.integration
def test_register_defaults_to_candidate(registry_conn: psycopg.Connection) -> None:
    register_model(registry_conn, _record("v1"), by="trainer")

    stored = get_model(registry_conn, "v1")

    assert stored.stage == "candidate"
    assert stored.canary_share is None
    assert latest_production(registry_conn) is None
    (change,) = stage_history(registry_conn, "v1")
    assert (change.from_stage, change.to_stage) == (None, "candidate")
    assert change.changed_by == "trainer"


@pytest.mark.integration
def test_register_production_round_trip(registry_conn: psycopg.Connection) -> None:
    record = _record("v1", stage="production")

    register_model(registry_conn, record, by="trainer")
    latest = latest_production(registry_conn)

    assert latest is not None
    assert latest.version == "v1"
    assert latest.feature_names == MODEL_INPUTS
    assert latest.metrics == record.metrics
    assert latest.promoted_by == "trainer"
    assert latest.promoted_at is not None


@pytest.mark.integration
def test_register_production_archives_previous(
    registry_conn: psycopg.Connection,
) -> None:
    register_model(registry_conn, _record("v1", stage="production"))
    later = CREATED + timedelta(hours=1)
    register_model(registry_conn, _record("v2", later, stage="production"))

    assert _stages(registry_conn) == {"v1": "archived", "v2": "production"}


@pytest.mark.integration
def test_latest_production_without_table(registry_conn: psycopg.Connection) -> None:
    assert latest_production(registry_conn) is None
    # The lookup must leave the connection usable.
    assert registry_conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.integration
def test_register_model_repeated_version_raises(
    registry_conn: psycopg.Connection,
) -> None:
    register_model(registry_conn, _record("v1"))

    with pytest.raises(psycopg.errors.UniqueViolation, match="model_registry_pkey"):
        register_model(registry_conn, _record("v1"))


@pytest.mark.integration
def test_get_model_unknown_version(registry_conn: psycopg.Connection) -> None:
    register_model(registry_conn, _record("v1"))

    with pytest.raises(VersionNotFound, match="'v9' is not registered"):
        get_model(registry_conn, "v9")


# --- promotion -------------------------------------------------------------


@pytest.mark.integration
def test_promote_through_the_stages(registry_conn: psycopg.Connection) -> None:
    register_model(registry_conn, _record("v1", stage="production"))
    register_model(registry_conn, _record("v2"))

    promote(registry_conn, "v2", "shadow", by="alice")
    promote(registry_conn, "v2", "canary", by="alice", share=10.0)
    promote(registry_conn, "v2", "canary", by="alice", share=25.0)
    assert get_model(registry_conn, "v2").canary_share == 25.0
    changes = promote(registry_conn, "v2", "production", by="bob", reason="better")

    assert [(c.version, c.to_stage) for c in changes] == [
        ("v1", "archived"),
        ("v2", "production"),
    ]
    assert _stages(registry_conn) == {"v1": "archived", "v2": "production"}
    promoted = get_model(registry_conn, "v2")
    assert promoted.canary_share is None
    assert promoted.promoted_by == "bob"
    history = [(c.from_stage, c.to_stage) for c in stage_history(registry_conn, "v2")]
    assert history == [
        (None, "candidate"),
        ("candidate", "shadow"),
        ("shadow", "canary"),
        ("canary", "canary"),
        ("canary", "production"),
    ]
    assert stage_history(registry_conn, "v2")[-1].reason == "better"


@pytest.mark.integration
def test_promote_unknown_version(registry_conn: psycopg.Connection) -> None:
    register_model(registry_conn, _record("v1"))

    with pytest.raises(VersionNotFound, match="'v9' is not registered"):
        promote(registry_conn, "v9", "shadow", by="alice")


@pytest.mark.integration
def test_promote_invalid_transition_changes_nothing(
    registry_conn: psycopg.Connection,
) -> None:
    register_model(registry_conn, _record("v1", stage="production"))

    with pytest.raises(InvalidTransition, match="from production to shadow"):
        promote(registry_conn, "v1", "shadow", by="alice")

    assert _stages(registry_conn) == {"v1": "production"}
    assert len(stage_history(registry_conn, "v1")) == 2


@pytest.mark.integration
def test_promote_second_canary_rejected(registry_conn: psycopg.Connection) -> None:
    register_model(registry_conn, _record("v1"))
    register_model(registry_conn, _record("v2"))
    promote(registry_conn, "v1", "canary", by="alice", share=5.0)

    with pytest.raises(InvalidTransition, match="'v1' is the canary already"):
        promote(registry_conn, "v2", "canary", by="alice", share=5.0)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("target", "share", "message"),
    [
        ("canary", None, "a canary needs a share"),
        ("canary", 0.0, r"must be in \(0, 100\]"),
        ("canary", 101.0, r"must be in \(0, 100\]"),
        ("shadow", 5.0, "a share applies only to the canary stage"),
    ],
)
def test_promote_invalid_share(
    registry_conn: psycopg.Connection, target: str, share: float | None, message: str
) -> None:
    register_model(registry_conn, _record("v1"))

    with pytest.raises(ValueError, match=message):
        promote(registry_conn, "v1", target, by="alice", share=share)


@pytest.mark.integration
def test_guard_rejection_changes_nothing(registry_conn: psycopg.Connection) -> None:
    register_model(registry_conn, _record("v1", stage="production"))
    register_model(registry_conn, _record("v2"))
    calls: list[tuple[str, str | None]] = []

    def reject(conn: psycopg.Connection[Any], challenger: str, prod: str | None):
        calls.append((challenger, prod))
        raise RegistryError("worse")

    with pytest.raises(RegistryError, match="worse"):
        promote(registry_conn, "v2", "production", by="alice", guard=reject)
    assert calls == [("v2", "v1")]
    assert _stages(registry_conn) == {"v1": "production", "v2": "candidate"}

    promote(registry_conn, "v2", "production", by="alice", guard=reject, force=True)
    assert _stages(registry_conn) == {"v1": "archived", "v2": "production"}
    assert stage_history(registry_conn, "v2")[-1].forced is True
    assert len(calls) == 1


@pytest.mark.integration
def test_database_allows_one_production(registry_conn: psycopg.Connection) -> None:
    register_model(registry_conn, _record("v1", stage="production"))
    register_model(registry_conn, _record("v2"))

    with pytest.raises(psycopg.errors.UniqueViolation, match="one_production"):
        registry_conn.execute(
            "UPDATE model_registry SET stage = 'production' WHERE version = 'v2'"
        )
    registry_conn.rollback()
    with pytest.raises(psycopg.errors.CheckViolation, match="stage_check"):
        registry_conn.execute(
            "UPDATE model_registry SET stage = 'staging' WHERE version = 'v2'"
        )


@pytest.mark.integration
def test_concurrent_promotions_leave_one_production(
    pg_dsn: str, registry_schema: str
) -> None:
    with connect(pg_dsn, registry_schema) as conn:
        register_model(conn, _record("v0", stage="production"))
        for version in ("v1", "v2"):
            register_model(conn, _record(version))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def promote_one(version: str) -> None:
        with connect(pg_dsn, registry_schema) as conn:
            barrier.wait()
            try:
                promote(conn, version, "production", by=version)
            except BaseException as exc:  # reported by the assert below
                errors.append(exc)

    threads = [threading.Thread(target=promote_one, args=(v,)) for v in ("v1", "v2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    with connect(pg_dsn, registry_schema) as conn:
        stages = _stages(conn)
        assert sorted(stages.values()) == ["archived", "archived", "production"]
        winner = next(v for v, stage in stages.items() if stage == "production")
        loser = "v1" if winner == "v2" else "v2"
        # The later promotion archived the earlier one, so each production
        # version was replaced by exactly one other.
        archived = [
            c.reason for c in stage_history(conn, loser) if c.to_stage == "archived"
        ]
        assert archived == [f"replaced by {winner}"]


# --- rollback and migration ------------------------------------------------


@pytest.mark.integration
def test_rollback_restores_previous_production(
    registry_conn: psycopg.Connection,
) -> None:
    register_model(registry_conn, _record("v1", stage="production"))
    register_model(registry_conn, _record("v2"))
    register_model(registry_conn, _record("v3"))
    promote(registry_conn, "v2", "production", by="alice")
    promote(registry_conn, "v3", "production", by="alice")

    changes = rollback(registry_conn, by="bob")

    assert [(c.version, c.to_stage) for c in changes] == [
        ("v3", "archived"),
        ("v2", "production"),
    ]
    assert _stages(registry_conn) == {
        "v1": "archived",
        "v2": "production",
        "v3": "archived",
    }
    assert get_model(registry_conn, "v2").promoted_by == "bob"


@pytest.mark.integration
def test_rollback_without_previous_production(
    registry_conn: psycopg.Connection,
) -> None:
    register_model(registry_conn, _record("v1"))
    with pytest.raises(RegistryError, match="no version is in production"):
        rollback(registry_conn, by="bob")

    promote(registry_conn, "v1", "production", by="alice")
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(registry_conn, by="bob")
    assert _stages(registry_conn) == {"v1": "production"}


@pytest.mark.integration
def test_migration_of_older_layout(registry_conn: psycopg.Connection) -> None:
    registry_conn.execute(REGISTRY_SCHEMA)
    rows = [
        ("old", CREATED, "production"),
        ("newer", CREATED + timedelta(days=1), "production"),
        ("tried", CREATED + timedelta(days=2), "staging"),
    ]
    for version, created, stage in rows:
        registry_conn.execute(
            "INSERT INTO model_registry (version, created_at, artifact_path, "
            "artifact_sha256, feature_names, metrics, threshold, stage) "
            "VALUES (%s, %s, 'm.onnx', %s, '[]', '{}', 0.5, %s)",
            (version, created, "0" * 64, stage),
        )
    registry_conn.commit()

    ensure_schema(registry_conn)
    ensure_schema(registry_conn)

    assert _stages(registry_conn) == {
        "old": "archived",
        "newer": "production",
        "tried": "candidate",
    }
    rollback(registry_conn, by="bob")
    assert _stages(registry_conn)["old"] == "production"
