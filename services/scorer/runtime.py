"""Process-wide state of the scorer: settings, clients, metrics and the loaded model.

The app's lifespan builds one :class:`Runtime`, and route handlers receive it
through :data:`RuntimeDep`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from services.scorer.clients import create_pg_pool, create_redis
from services.scorer.errors import ModelLoadError
from services.scorer.feature_store import HistoryLookup
from services.scorer.logs import DecisionLog
from services.scorer.metrics import ScorerMetrics
from services.scorer.model import ScoringModel
from services.scorer.registry import load_registered_model
from services.scorer.settings import ScorerSettings

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a request handler needs. ``model`` is None until one is loaded."""

    settings: ScorerSettings
    redis: Redis
    pg_pool: AsyncConnectionPool
    histories: HistoryLookup
    metrics: ScorerMetrics
    decision_log: DecisionLog
    model: ScoringModel | None = None

    def threshold(self, model: ScoringModel) -> float:
        """Return the block threshold: the setting when given, else the model's."""
        override = self.settings.block_threshold
        return model.threshold if override is None else override


async def open_runtime(settings: ScorerSettings, metrics: ScorerMetrics) -> Runtime:
    """Create the clients and open the PostgreSQL pool without waiting for it."""
    redis = create_redis(settings)
    pg_pool = create_pg_pool(settings)
    # wait=False: the service starts while PostgreSQL is down and becomes ready
    # once the pool connects and the model loads.
    await pg_pool.open(wait=False)
    histories = HistoryLookup(
        redis,
        pg_pool,
        redis_prefix=settings.redis_prefix,
        redis_timeout_seconds=settings.redis_timeout_seconds,
        pg_timeout_seconds=settings.pg_timeout_seconds,
        metrics=metrics,
    )
    hash_key = settings.log_hash_key
    decision_log = DecisionLog(
        None if hash_key is None else hash_key.get_secret_value().encode()
    )
    return Runtime(settings, redis, pg_pool, histories, metrics, decision_log)


async def close_runtime(runtime: Runtime) -> None:
    """Close the Redis client and the PostgreSQL pool."""
    await runtime.redis.aclose()
    await runtime.pg_pool.close()


async def load_model_once(runtime: Runtime) -> bool:
    """Load the registered model into ``runtime`` and return whether it loaded."""
    settings = runtime.settings
    try:
        runtime.model = await load_registered_model(
            settings.pg_dsn, settings.model_version, settings.model_dir
        )
    except ModelLoadError as exc:
        runtime.metrics.errors.labels(kind=exc.kind).inc()
        logger.error(
            "model not loaded, retrying in %.1f s: %s",
            settings.model_retry_seconds,
            exc.detail,
        )
        return False
    return True


async def keep_loading_model(runtime: Runtime) -> None:
    """Retry loading the model every ``model_retry_seconds`` until it loads.

    Runs as a background task after the load at start-up failed.
    """
    while True:
        await asyncio.sleep(runtime.settings.model_retry_seconds)
        if await load_model_once(runtime):
            return


def get_runtime(request: Request) -> Runtime:
    """Return the runtime that the lifespan stored on the app."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
