"""Model registry in PostgreSQL: written by the training job, read by the scorer.

The table is ``model_registry`` from :data:`fraudcore.registry.REGISTRY_SCHEMA`.
Every registered model keeps its row; the scorer serves the production model
with the newest ``created_at``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from fraudcore.registry import REGISTRY_SCHEMA, REGISTRY_SEGMENTATION_COLUMN

log = logging.getLogger(__name__)

PRODUCTION_STAGE = "production"

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
        stage: Lifecycle stage; the scorer serves ``production`` models.
        segmentation_version: Segmentation version of the ``CUSTOMER_SEGMENT``
            input, or None for a model without it.
    """

    version: str
    artifact_path: str
    artifact_sha256: str
    feature_names: tuple[str, ...]
    metrics: dict[str, Any]
    threshold: float
    created_at: datetime
    stage: str = PRODUCTION_STAGE
    segmentation_version: str | None = None


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the registry table and its segmentation column if missing."""
    conn.execute(REGISTRY_SCHEMA)
    conn.execute(REGISTRY_SEGMENTATION_COLUMN)


def register_model(conn: psycopg.Connection[Any], record: ModelRecord) -> None:
    """Insert a model into the registry and commit.

    Args:
        conn: Open connection to the registry database.
        record: The model to insert.

    Raises:
        psycopg.errors.UniqueViolation: If the version is already registered.
    """
    ensure_schema(conn)
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
            record.stage,
            record.segmentation_version,
        ),
    )
    conn.commit()
    log.info("registered model %s as %s", record.version, record.stage)


def latest_production(conn: psycopg.Connection[Any]) -> ModelRecord | None:
    """Return the newest production model, or None when none is registered.

    Models registered at the same instant are ordered by version, the greater
    one first. A database without the registry table has no model, and this
    lookup does not create the table.

    Args:
        conn: Open connection to the registry database. The lookup ends its
            transaction, so the connection is not left idle in a transaction.
    """
    try:
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM model_registry "
                "WHERE stage = %s ORDER BY created_at DESC, version DESC LIMIT 1",
                (PRODUCTION_STAGE,),
            )
            row = cursor.fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        log.warning("the model registry table does not exist yet")
        return None
    conn.commit()
    return None if row is None else _record(row)


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
        segmentation_version=row["segmentation_version"],
    )
