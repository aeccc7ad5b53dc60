"""Clients of the feature stores and the registry, built from the settings."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from services.scorer.redis_client import MultiplexedRedis
from services.scorer.settings import ScorerSettings

# libpq accepts whole seconds only and treats values below 2 as 2.
PG_CONNECT_TIMEOUT_SECONDS = 2
# Maximum wait for a Redis reply that is in while the event loop is too busy to
# let the lookup read it, unless FRAUD_REDIS_TIMEOUT_SECONDS is longer. Beyond
# it a busy worker's responses are late for any caller anyway.
REDIS_LIMIT_SECONDS = 0.25
# A connection whose oldest command has had no reply for this long is closed as
# hung. It is far above any request budget, because replies that came in time
# also wait while the event loop is busy with other requests.
REDIS_STALE_SECONDS = 2.0


def create_redis(settings: ScorerSettings) -> MultiplexedRedis:
    """Create the Redis client, which connects on its first command.

    Commands are not retried: a failed lookup falls back to PostgreSQL at once.
    Every caller bounds its commands with a timeout of its own, and connecting
    is bounded as well, by the longest of them.

    Raises:
        ValueError: if ``redis_url`` is not a supported Redis URL.
    """
    timeout = settings.redis_timeout_seconds
    return MultiplexedRedis(
        settings.redis_url,
        connect_timeout_seconds=max(timeout, REDIS_LIMIT_SECONDS),
        stale_seconds=max(timeout, REDIS_STALE_SECONDS),
    )


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
