"""Loading of the served model from the ``model_registry`` table.

The training job writes the rows (see :data:`fraudcore.registry.REGISTRY_SCHEMA`)
and the scorer reads them. The scorer also creates the decision columns of the
registry and its own tables (:data:`fraudcore.decisions.DECISIONS_SCHEMA`) when
they do not exist yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from fraudcore.decisions import DECISIONS_SCHEMA
from fraudcore.registry import (
    REGISTRY_STATEMENTS,
    SCHEMA_LOCK_ID,
    SERVED_STAGES,
)
from fraudcore.segments import model_inputs
from services.scorer.errors import ModelLoadError
from services.scorer.explain import Explainer, load_explainer
from services.scorer.model import ScoringModel, open_model
from services.scorer.policy import Rule, parse_rules, parse_segment_thresholds

logger = logging.getLogger(__name__)

# libpq accepts whole seconds only and treats values below 2 as 2.
REGISTRY_CONNECT_TIMEOUT_SECONDS = 2
REGISTRY_QUERY_TIMEOUT_SECONDS = 10.0
ROW_COLUMNS = (
    "version, artifact_path, artifact_sha256, feature_names, threshold, "
    "review_threshold, rules, stage, canary_share, segmentation_version, "
    "segment_thresholds"
)


@dataclass(frozen=True)
class RegistryRow:
    """The columns of a ``model_registry`` row that the scorer uses."""

    version: str
    artifact_path: str
    artifact_sha256: str
    feature_names: Any
    threshold: float
    review_threshold: float | None = None
    rules: Any = None
    stage: str = "production"
    canary_share: float | None = None
    segmentation_version: str | None = None
    segment_thresholds: Any = None

    def artifact_key(self) -> tuple[Any, ...]:
        """Return the fields that the loaded model depends on.

        A row whose key is unchanged needs no new load, and a rejected key is
        not loaded again.
        """
        return (
            self.version,
            self.artifact_path,
            self.artifact_sha256,
            repr(self.feature_names),
            self.threshold,
            self.review_threshold,
            repr(self.rules),
            self.segmentation_version,
            repr(self.segment_thresholds),
        )


@dataclass(frozen=True)
class ServedModel:
    """A verified model version with the decision settings stored with it.

    ``review_threshold`` is None when the registry row has none; the runtime then
    derives it from the block threshold. ``segmentation_version`` is the version
    of the model's ``CUSTOMER_SEGMENT`` input, None for a model without it, and
    ``segment_thresholds`` the ``(review, block)`` pairs by segment id.
    """

    model: ScoringModel
    review_threshold: float | None
    rules: tuple[Rule, ...]
    explainer: Explainer | None
    segmentation_version: str | None = None
    segment_thresholds: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """Registry version of the model."""
        return self.model.version


async def fetch_registry_row(
    conn: psycopg.AsyncConnection[Any], version: str | None
) -> RegistryRow | None:
    """Fetch the row of ``version``, or the 'production' row when it is None."""
    if version is None:
        sql = (
            f"SELECT {ROW_COLUMNS} FROM model_registry WHERE stage = 'production' "
            "ORDER BY created_at DESC, version DESC LIMIT 1"
        )
        params: tuple[str, ...] = ()
    else:
        sql = f"SELECT {ROW_COLUMNS} FROM model_registry WHERE version = %s"
        params = (version,)
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(sql, params)
        row = await cursor.fetchone()
    return None if row is None else RegistryRow(**row)


async def fetch_served_rows(pg_dsn: str, migrate: bool) -> list[RegistryRow]:
    """Fetch the rows in the stages the scorer loads, the newest first.

    With ``migrate``, first create or migrate the tables, as the first read of
    a process must.

    Raises:
        ModelLoadError: if the registry cannot be read.
    """
    sql = (
        f"SELECT {ROW_COLUMNS} FROM model_registry WHERE stage = ANY(%s) "
        "ORDER BY created_at DESC, version DESC"
    )
    try:
        async with asyncio.timeout(REGISTRY_QUERY_TIMEOUT_SECONDS):
            async with await _connect(pg_dsn) as conn:
                if migrate:
                    await ensure_schema(conn)
                async with conn.cursor(row_factory=dict_row) as cursor:
                    await cursor.execute(sql, (list(SERVED_STAGES),))
                    rows = await cursor.fetchall()
    except (psycopg.Error, TimeoutError) as exc:
        reason = str(exc) or f"timed out after {REGISTRY_QUERY_TIMEOUT_SECONDS} s"
        raise ModelLoadError(f"reading model_registry failed: {reason}") from exc
    return [RegistryRow(**row) for row in rows]


async def load_registered_model(
    pg_dsn: str, version: str | None, model_dir: Path
) -> ServedModel:
    """Load, verify and open the registered model and its explainer.

    Args:
        pg_dsn: DSN of the database holding ``model_registry``.
        version: Version to load, or None for the newest 'production' row.
        model_dir: Folder that relative ``artifact_path`` values are resolved in.

    Raises:
        ModelLoadError: if the row or artifact is missing, the artifact's sha256 or
            feature names differ from the row, onnxruntime cannot open it, its
            rules are invalid, or the text model beside it is another model.
    """
    requested = (
        repr(version) if version is not None else "the newest 'production' model"
    )
    try:
        async with asyncio.timeout(REGISTRY_QUERY_TIMEOUT_SECONDS):
            row = await _read_registry(pg_dsn, version)
    except (psycopg.Error, TimeoutError) as exc:
        reason = str(exc) or f"timed out after {REGISTRY_QUERY_TIMEOUT_SECONDS} s"
        raise ModelLoadError(
            f"reading {requested} from model_registry failed: {reason}"
        ) from exc
    if row is None:
        raise ModelLoadError(f"model_registry has no row for {requested}")
    return await load_model_from_row(row, model_dir)


async def load_model_from_row(row: RegistryRow, model_dir: Path) -> ServedModel:
    """Verify and open the artifact of a registry row, and score one row with it.

    Raises:
        ModelLoadError: as :func:`load_registered_model` does, and if the smoke
            prediction fails or is not a probability.
    """
    check_feature_names(row)
    path = resolve_artifact_path(row.artifact_path, model_dir)
    try:
        artifact = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise ModelLoadError(
            f"reading artifact of model {row.version!r} failed: {exc}"
        ) from exc
    check_sha256(row, artifact)

    rules = parse_rules(row.rules, row.version)
    segmented = row.segmentation_version is not None
    segment_thresholds = parse_segment_thresholds(
        row.segment_thresholds, row.version, segmented
    )
    inputs = model_inputs(row.segmentation_version)
    model = await asyncio.to_thread(
        open_model, artifact, row.version, float(row.threshold), inputs
    )
    await asyncio.to_thread(smoke_predict, model)
    explainer = await asyncio.to_thread(load_explainer, path, model)
    logger.info(
        "loaded model %s from %s (threshold %.4f, %d rules)",
        row.version,
        path,
        row.threshold,
        len(rules),
    )
    review = None if row.review_threshold is None else float(row.review_threshold)
    return ServedModel(
        model, review, rules, explainer, row.segmentation_version, segment_thresholds
    )


async def _read_registry(pg_dsn: str, version: str | None) -> RegistryRow | None:
    async with await _connect(pg_dsn) as conn:
        await ensure_schema(conn)
        return await fetch_registry_row(conn, version)


async def _connect(pg_dsn: str) -> psycopg.AsyncConnection[Any]:
    # A connection of its own rather than one from the feature-store pool, so that
    # a refused connection fails at once instead of waiting for the pool.
    return await psycopg.AsyncConnection.connect(
        pg_dsn, autocommit=True, connect_timeout=REGISTRY_CONNECT_TIMEOUT_SECONDS
    )


def smoke_predict(model: ScoringModel) -> None:
    """Score a row of zeros and raise ModelLoadError unless a probability comes out.

    Catches an artifact that opens but fails or returns garbage at run time
    before it decides a request.
    """
    try:
        probability = model.predict([0.0] * len(model.inputs))
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise ModelLoadError(
            f"smoke prediction of model {model.version!r} failed: {exc}"
        ) from exc
    if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
        raise ModelLoadError(
            f"smoke prediction of model {model.version!r} returned {probability}, "
            "expected a probability in [0, 1]"
        )


async def ensure_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create the registry and decision tables and columns that do not exist yet."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_ID,))
        for statement in REGISTRY_STATEMENTS:
            await conn.execute(statement)
        await conn.execute(DECISIONS_SCHEMA)


def resolve_artifact_path(artifact_path: str, model_dir: Path) -> Path:
    """Return ``artifact_path`` as is when absolute, else relative to ``model_dir``."""
    # NOTE: relative paths are read against FRAUD_MODEL_DIR, so a training job must
    # register absolute paths or paths relative to that same folder.
    path = Path(artifact_path)
    return path if path.is_absolute() else model_dir / path


def check_feature_names(row: RegistryRow) -> None:
    """Raise ModelLoadError unless the row's feature names are the model inputs.

    They must be ``MODEL_INPUTS``, followed by ``CUSTOMER_SEGMENT`` when the row
    has a segmentation version.
    """
    names = row.feature_names
    expected = model_inputs(row.segmentation_version)
    if not isinstance(names, list) or tuple(names) != expected:
        raise ModelLoadError(
            f"model {row.version!r} was trained on features {names!r}, "
            f"expected {list(expected)!r} for segmentation version "
            f"{row.segmentation_version!r}"
        )


def check_sha256(row: RegistryRow, artifact: bytes) -> None:
    """Raise ModelLoadError unless the artifact's sha256 equals the registered one."""
    actual = hashlib.sha256(artifact).hexdigest()
    if actual != row.artifact_sha256.strip().lower():
        raise ModelLoadError(
            f"artifact of model {row.version!r} has sha256 {actual}, "
            f"expected {row.artifact_sha256}"
        )
