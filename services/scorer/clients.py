"""Clients of the feature stores and the registry, built from the settings."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from services.scorer.settings import ScorerSettings

# libpq accepts whole seconds only and treats values below 2 as 2.
PG_CONNECT_TIMEOUT_SECONDS = 2
# Maximum wait for a Redis reply while the event loop is too busy to read it.
# Beyond it a busy worker's responses are late for any caller anyway.
REDIS_LIMIT_SECONDS = 0.25


def create_redis(settings: ScorerSettings) -> Redis:
    """Create the Redis client, which connects on its first command.

    Commands are not retried: a failed lookup falls back to PostgreSQL at once.
    Every caller bounds its commands, connecting included, with a timeout of
    its own. The socket timeouts are only the longest of them, because they run
    on the event loop's clock and would expire on a busy loop for replies and
    connections that came in time.
    """
    client: Redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=max(settings.redis_timeout_seconds, REDIS_LIMIT_SECONDS),
        socket_connect_timeout=max(settings.redis_timeout_seconds, REDIS_LIMIT_SECONDS),
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
