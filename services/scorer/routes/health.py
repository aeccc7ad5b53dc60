"""``GET /healthz`` and ``GET /readyz``: liveness and readiness probes."""

from __future__ import annotations

import asyncio

import psycopg
from fastapi import APIRouter, Response
from redis.exceptions import RedisError

from services.scorer.runtime import Runtime, RuntimeDep
from services.scorer.schemas import HealthOut, ReadyOut, StoreName

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """Report that the process is alive."""
    return HealthOut()


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
async def readyz(runtime: RuntimeDep, response: Response) -> ReadyOut:
    """Report whether a model and the API keys are loaded and a store responds."""
    model = runtime.model
    if model is None:
        response.status_code = 503
        return ReadyOut(status="not_ready", reason="no model is loaded yet.")

    if runtime.settings.require_api_key and not runtime.api_keys.loaded:
        response.status_code = 503
        return ReadyOut(
            status="not_ready",
            model_version=model.version,
            reason="the API keys are not loaded yet.",
        )

    store = await responding_store(runtime)
    if store is None:
        response.status_code = 503
        return ReadyOut(
            status="not_ready",
            model_version=model.version,
            reason="neither Redis nor PostgreSQL responds.",
        )
    return ReadyOut(status="ready", model_version=model.version, feature_store=store)


async def responding_store(runtime: Runtime) -> StoreName | None:
    """Return the first store that responds to a ping, or None when neither does."""
    settings = runtime.settings
    try:
        async with asyncio.timeout(settings.redis_timeout_seconds):
            await runtime.redis.ping()
        return "redis"
    except (RedisError, OSError, TimeoutError):
        pass
    try:
        async with asyncio.timeout(settings.pg_timeout_seconds):
            async with runtime.pg_pool.connection(
                timeout=settings.pg_timeout_seconds
            ) as conn:
                await conn.execute("SELECT 1")
        return "postgres"
    except (psycopg.Error, OSError, TimeoutError):
        return None
