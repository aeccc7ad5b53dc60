"""Model registry in PostgreSQL: written by training and the model CLI.

The table is ``model_registry`` from :data:`fraudcore.registry.REGISTRY_SCHEMA`,
with the lifecycle columns and the ``model_stage_history`` table of
:data:`fraudcore.registry.REGISTRY_LIFECYCLE`. Every registered model keeps its
row. Stage changes go through :func:`promote` and :func:`rollback`, which check
:data:`fraudcore.registry.TRANSITIONS`, write a history row and hold a table lock,
so that two concurrent promotions are applied one after the other. Unique
indexes keep at most one production and one canary version even against writes
that bypass these functions.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from fraudcore.registry import (
    ARCHIVED_STAGE,
    CANARY_STAGE,
    CANDIDATE_STAGE,
    PRODUCTION_STAGE,
    REGISTRY_STATEMENTS,
    SCHEMA_LOCK_ID,
    SHADOW_STAGE,
    InvalidTransition,
    check_canary_share,
    check_transition,
)

log = logging.getLogger(__name__)

_COLUMNS = (
    "version",
    "created_at",
    "artifact_path",
    "artifact_sha256",
    "feature_names",
    "metrics",
    "threshold",
    "stage",
    "segmentation_version",
)
# Columns that registration leaves NULL, read with the others.
_LATER_COLUMNS = ("canary_share", "promoted_by", "promoted_at", "segment_thresholds")
# Stages a training job may register a version in. Canary and production are
# reached through promote(), where the shadow guard runs.
REGISTER_STAGES = (CANDIDATE_STAGE, SHADOW_STAGE)


class RegistryError(Exception):
    """A registry operation that cannot be carried out as requested."""


class VersionNotFound(RegistryError):
    """The requested model version is not registered."""


class PromotionRejected(RegistryError):
    """The promotion guard found the challenger worse than production."""


@dataclass(frozen=True)
class ModelRecord:
    """One registered model.

    Attributes:
        version: Unique name of the model.
        artifact_path: Absolute path of the ONNX file.
        artifact_sha256: Hex SHA-256 of the ONNX file's bytes.
        feature_names: Input order of the ONNX graph.
        metrics: Test-week metrics and training facts, as in ``metrics.json``.
        threshold: Fraud probability at or above which a transaction is blocked.
        created_at: Registration time (timezone-aware).
        stage: Lifecycle stage, one of :data:`fraudcore.registry.STAGES`.
        canary_share: Percentage of customers the version decides for while it
            is the canary, else None.
        promoted_by: Who made the last stage change, None before the first.
        promoted_at: Time of the last stage change, None before the first.
        segmentation_version: Segmentation version of the ``CUSTOMER_SEGMENT``
            input, or None for a model without it.
        segment_thresholds: Review and block thresholds by segment id, set with
            :func:`set_segment_thresholds`.
    """

    version: str
    artifact_path: str
    artifact_sha256: str
    feature_names: tuple[str, ...]
    metrics: dict[str, Any]
    threshold: float
    created_at: datetime
    stage: str = CANDIDATE_STAGE
    canary_share: float | None = None
    promoted_by: str | None = None
    promoted_at: datetime | None = None
    segmentation_version: str | None = None
    segment_thresholds: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageChange:
    """One row of ``model_stage_history``."""

    version: str
    from_stage: str | None
    to_stage: str
    canary_share: float | None
    changed_by: str
    changed_at: datetime
    forced: bool
    reason: str | None


# Called by promote() inside its transaction with the challenger and the current
# production version (None when there is none); raises PromotionRejected.
PromotionGuard = Callable[[psycopg.Connection[Any], str, str | None], None]


def default_actor() -> str:
    """Return the OS user name, recorded as who changed a stage by default."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the registry tables or migrate them to the lifecycle layout; commit."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_ID,))
        for statement in REGISTRY_STATEMENTS:
            conn.execute(statement)
    conn.commit()


def register_model(
    conn: psycopg.Connection[Any], record: ModelRecord, by: str | None = None
) -> None:
    """Insert a model into the registry as a candidate, promote it if asked, commit.

    Args:
        conn: Open connection to the registry database.
        record: The model to insert. A ``stage`` other than ``candidate`` is
            reached through :func:`promote` without a guard, so a production
            record archives the production version before it.
        by: Who registers it; None records the OS user.

    Raises:
        psycopg.errors.UniqueViolation: If the version is already registered.
        InvalidTransition: If ``record.stage`` cannot be reached from candidate.
    """
    ensure_schema(conn)
    actor = by if by is not None else default_actor()
    with conn.transaction():
        conn.execute(
            f"INSERT INTO model_registry ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(_COLUMNS))})",
            (
                record.version,
                record.created_at,
                record.artifact_path,
                record.artifact_sha256,
                Jsonb(list(record.feature_names)),
                Jsonb(record.metrics),
                record.threshold,
                CANDIDATE_STAGE,
                record.segmentation_version,
            ),
        )
        _insert_history(conn, record.version, None, CANDIDATE_STAGE, None, actor)
        if record.stage != CANDIDATE_STAGE:
            _promote(conn, record.version, record.stage, actor, record.canary_share)
    conn.commit()
    log.info("registered model %s as %s", record.version, record.stage)


def promote(
    conn: psycopg.Connection[Any],
    version: str,
    target: str,
    *,
    by: str,
    share: float | None = None,
    force: bool = False,
    guard: PromotionGuard | None = None,
    reason: str | None = None,
) -> list[StageChange]:
    """Move ``version`` to stage ``target`` and commit.

    Promoting to production archives the current production version. The table
    lock makes a concurrent promotion wait and then see this one's result.

    Args:
        conn: Open connection to the registry database.
        version: The version to move.
        target: The new stage.
        by: Who makes the change.
        share: Percentage of customers in (0, 100] for ``canary``; None otherwise.
        force: Skip ``guard``; the history row records that it was skipped.
        guard: Check run before a promotion to production.
        reason: Free text stored in the history.

    Returns:
        The stage changes made, the archived production version's first.

    Raises:
        VersionNotFound: If ``version`` is not registered.
        InvalidTransition: If the lifecycle does not allow the change, or
            another version is the canary already.
        ValueError: If ``share`` is missing, out of range or given for a stage
            other than canary.
        PromotionRejected: If ``guard`` rejects the challenger.
    """
    with conn.transaction():
        changes = _promote(conn, version, target, by, share, force, guard, reason)
    conn.commit()
    for change in changes:
        log.info(
            "model %s: %s -> %s by %s",
            change.version,
            change.from_stage,
            change.to_stage,
            change.changed_by,
        )
    return changes


def _promote(
    conn: psycopg.Connection[Any],
    version: str,
    target: str,
    by: str,
    share: float | None = None,
    force: bool = False,
    guard: PromotionGuard | None = None,
    reason: str | None = None,
) -> list[StageChange]:
    _check_share(target, share)
    current = _lock_and_read_stage(conn, version)
    check_transition(version, current, target)
    if target == CANARY_STAGE:
        _check_no_other(conn, version, CANARY_STAGE)
    changes = []
    if target == PRODUCTION_STAGE:
        production = _version_in_stage(conn, PRODUCTION_STAGE)
        if guard is not None and not force:
            guard(conn, version, production)
        if production is not None:
            check_transition(
                production, PRODUCTION_STAGE, ARCHIVED_STAGE, replaced=True
            )
            replaced = f"replaced by {version}"
            changes.append(
                _set_stage(
                    conn, production, PRODUCTION_STAGE, ARCHIVED_STAGE, by,
                    reason=replaced,
                )
            )  # fmt: skip
    forced = force and guard is not None and target == PRODUCTION_STAGE
    changes.append(
        _set_stage(conn, version, current, target, by, share, forced, reason)
    )
    return changes


def set_segment_thresholds(
    conn: psycopg.Connection[Any],
    version: str,
    segment: int,
    thresholds: tuple[float, float] | None,
) -> dict[str, dict[str, float]]:
    """Set or clear the ``(review, block)`` thresholds of one segment, and commit.

    The scorer reloads the version with its new thresholds at its next registry
    poll. Returns the version's segment thresholds after the change.

    Raises:
        VersionNotFound: If ``version`` is not registered.
        ValueError: If the version has no segment input, or a threshold is
            outside [0, 1] or the review threshold is above the block threshold.
    """
    if thresholds is not None:
        review, block = thresholds
        if not (0.0 <= review <= block <= 1.0):
            raise ValueError(
                f"thresholds must satisfy 0 <= review <= block <= 1, got review "
                f"{review:g} and block {block:g}"
            )
    with conn.transaction():
        row = conn.execute(
            "SELECT segmentation_version, segment_thresholds FROM model_registry "
            "WHERE version = %s FOR UPDATE",
            (version,),
        ).fetchone()
        if row is None:
            raise VersionNotFound(f"model version {version!r} is not registered")
        segmentation_version, stored = row
        if segmentation_version is None:
            raise ValueError(
                f"model {version!r} was trained without the customer segment, so "
                "it has no segments to set thresholds for"
            )
        current: dict[str, dict[str, float]] = dict(stored or {})
        if thresholds is None:
            current.pop(str(segment), None)
        else:
            current[str(segment)] = {"review": thresholds[0], "block": thresholds[1]}
        conn.execute(
            "UPDATE model_registry SET segment_thresholds = %s WHERE version = %s",
            (Jsonb(current) if current else None, version),
        )
    conn.commit()
    log.info("model %s: segment thresholds now %s", version, current)
    return current


def rollback(
    conn: psycopg.Connection[Any], *, by: str, reason: str | None = None
) -> list[StageChange]:
    """Archive the production version and restore the one it replaced, and commit.

    The restored version is the archived one that left production most recently.

    Returns:
        The two stage changes: the archived version's, then the restored one's.

    Raises:
        RegistryError: If there is no production version or no archived
            version that was production before.
    """
    with conn.transaction():
        _lock(conn)
        production = _version_in_stage(conn, PRODUCTION_STAGE)
        if production is None:
            raise RegistryError("no version is in production, so there is no rollback")
        previous = _previous_production(conn, production)
        if previous is None:
            raise RegistryError(
                f"no archived version was production before {production!r}, so "
                "there is nothing to roll back to"
            )
        check_transition(production, PRODUCTION_STAGE, ARCHIVED_STAGE, replaced=True)
        check_transition(previous, ARCHIVED_STAGE, PRODUCTION_STAGE)
        note = reason or "rollback"
        changes = [
            _set_stage(
                conn, production, PRODUCTION_STAGE, ARCHIVED_STAGE, by, reason=note
            ),
            _set_stage(
                conn, previous, ARCHIVED_STAGE, PRODUCTION_STAGE, by, reason=note
            ),
        ]
    conn.commit()
    log.info("rolled back from %s to %s by %s", production, previous, by)
    return changes


def _check_share(target: str, share: float | None) -> None:
    if target == CANARY_STAGE:
        if share is None:
            raise ValueError("a canary needs a share of customers in (0, 100] percent")
        check_canary_share(share)
    elif share is not None:
        raise ValueError(f"a share applies only to the canary stage, not to {target}")


def _lock(conn: psycopg.Connection[Any]) -> None:
    ensure_table = "SELECT to_regclass('model_registry') IS NOT NULL"
    row = conn.execute(ensure_table).fetchone()
    if row is None or not row[0]:
        raise VersionNotFound("the model registry is empty: no table model_registry")
    # Conflicts with itself and with row writes, not with readers such as the
    # scorer, so concurrent stage changes run one after the other.
    conn.execute("LOCK TABLE model_registry IN SHARE ROW EXCLUSIVE MODE")


def _lock_and_read_stage(conn: psycopg.Connection[Any], version: str) -> str:
    _lock(conn)
    row = conn.execute(
        "SELECT stage FROM model_registry WHERE version = %s", (version,)
    ).fetchone()
    if row is None:
        raise VersionNotFound(f"model version {version!r} is not registered")
    return str(row[0])


def _check_no_other(conn: psycopg.Connection[Any], version: str, stage: str) -> None:
    other = _version_in_stage(conn, stage)
    if other is not None and other != version:
        raise InvalidTransition(
            f"model {other!r} is the {stage} already; promote or archive it first"
        )


def _version_in_stage(conn: psycopg.Connection[Any], stage: str) -> str | None:
    row = conn.execute(
        "SELECT version FROM model_registry WHERE stage = %s", (stage,)
    ).fetchone()
    return None if row is None else str(row[0])


def _previous_production(conn: psycopg.Connection[Any], production: str) -> str | None:
    row = conn.execute(
        "SELECT h.version FROM model_stage_history h "
        "JOIN model_registry r ON r.version = h.version "
        "WHERE h.from_stage = %s AND r.stage = %s AND h.version <> %s "
        "ORDER BY h.changed_at DESC, h.id DESC LIMIT 1",
        (PRODUCTION_STAGE, ARCHIVED_STAGE, production),
    ).fetchone()
    return None if row is None else str(row[0])


def _set_stage(
    conn: psycopg.Connection[Any],
    version: str,
    current: str,
    target: str,
    by: str,
    share: float | None = None,
    forced: bool = False,
    reason: str | None = None,
) -> StageChange:
    conn.execute(
        "UPDATE model_registry SET stage = %s, canary_share = %s, promoted_by = %s, "
        "promoted_at = now() WHERE version = %s",
        (target, share, by, version),
    )
    return _insert_history(conn, version, current, target, share, by, forced, reason)


def _insert_history(
    conn: psycopg.Connection[Any],
    version: str,
    current: str | None,
    target: str,
    share: float | None,
    by: str,
    forced: bool = False,
    reason: str | None = None,
) -> StageChange:
    row = conn.execute(
        "INSERT INTO model_stage_history (version, from_stage, to_stage, "
        "canary_share, changed_by, forced, reason) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING changed_at",
        (version, current, target, share, by, forced, reason),
    ).fetchone()
    assert row is not None
    return StageChange(version, current, target, share, by, row[0], forced, reason)


def latest_production(conn: psycopg.Connection[Any]) -> ModelRecord | None:
    """Return the production model, or None when none is registered.

    A database without the registry table has no model, and this lookup does
    not create the table.

    Args:
        conn: Open connection to the registry database. The lookup ends its
            transaction, so the connection is not left idle in a transaction.
    """
    rows = _select_records(conn, "WHERE stage = %s", (PRODUCTION_STAGE,))
    return rows[0] if rows else None


def get_model(conn: psycopg.Connection[Any], version: str) -> ModelRecord:
    """Return the registered model ``version``.

    Raises:
        VersionNotFound: If it is not registered.
    """
    rows = _select_records(conn, "WHERE version = %s", (version,))
    if not rows:
        raise VersionNotFound(f"model version {version!r} is not registered")
    return rows[0]


def list_models(conn: psycopg.Connection[Any]) -> list[ModelRecord]:
    """Return every registered model, the newest first."""
    return _select_records(conn, "", ())


def stage_history(conn: psycopg.Connection[Any], version: str) -> list[StageChange]:
    """Return the stage changes of ``version``, the oldest first."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "SELECT version, from_stage, to_stage, canary_share, changed_by, "
            "changed_at, forced, reason FROM model_stage_history "
            "WHERE version = %s ORDER BY changed_at, id",
            (version,),
        )
        rows = cursor.fetchall()
    conn.commit()
    return [StageChange(**row) for row in rows]


def _select_records(
    conn: psycopg.Connection[Any], where: str, params: tuple[Any, ...]
) -> list[ModelRecord]:
    columns = ", ".join(_COLUMNS + _LATER_COLUMNS)
    try:
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                f"SELECT {columns} FROM model_registry {where} "
                "ORDER BY created_at DESC, version DESC",
                params,
            )
            rows = cursor.fetchall()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        log.warning("the model registry table does not exist yet")
        return []
    except psycopg.errors.UndefinedColumn:
        # A registry of the older layout: migrate it, then read again.
        conn.rollback()
        ensure_schema(conn)
        return _select_records(conn, where, params)
    conn.commit()
    return [_record(row) for row in rows]


def _record(row: dict[str, Any]) -> ModelRecord:
    names: Sequence[str] = row["feature_names"]
    return ModelRecord(
        version=row["version"],
        artifact_path=row["artifact_path"],
        artifact_sha256=row["artifact_sha256"],
        feature_names=tuple(names),
        metrics=row["metrics"],
        threshold=float(row["threshold"]),
        created_at=row["created_at"],
        stage=row["stage"],
        canary_share=row["canary_share"],
        promoted_by=row["promoted_by"],
        promoted_at=row["promoted_at"],
        segmentation_version=row["segmentation_version"],
        segment_thresholds=row["segment_thresholds"] or {},
    )
