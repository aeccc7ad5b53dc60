"""Clients of the feature stores and the registry, built from the settings."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from services.scorer.settings import ScorerSettings

# libpq accepts whole seconds only and treats values below 2 as 2.
PG_CONNECT_TIMEOUT_SECONDS = 2


def create_redis(settings: ScorerSettings) -> Redis:
    """Create the Redis client, which connects on its first command.

    Commands are not retried: a failed lookup falls back to PostgreSQL at once.
    """
    client: Redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry_on_timeout=False,
    )
    return client


def create_pg_pool(settings: ScorerSettings) -> AsyncConnectionPool:
    """Create the PostgreSQL pool, not yet opened.

    Connections are in autocommit mode, so read-only queries leave no transaction
    open. The server cancels any statement that runs longer than
    ``pg_timeout_seconds``.
    """
    statement_timeout_ms = max(1, round(settings.pg_timeout_seconds * 1000))
    return AsyncConnectionPool(
        settings.pg_dsn,
        min_size=settings.pg_pool_min_size,
        max_size=max(settings.pg_pool_min_size, settings.pg_pool_max_size),
        open=False,
        name="scorer",
        kwargs={
            "autocommit": True,
            "connect_timeout": PG_CONNECT_TIMEOUT_SECONDS,
            "options": f"-c statement_timeout={statement_timeout_ms}",
        },
    )
