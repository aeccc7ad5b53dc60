"""Clients of the feature stores and the registry, built from the settings."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection

from services.scorer.settings import ScorerSettings

# libpq accepts whole seconds only and treats values below 2 as 2.
PG_CONNECT_TIMEOUT_SECONDS = 2
# Maximum wait for a Redis reply that is in while the event loop is too busy to
# let the lookup read it, unless FRAUD_REDIS_TIMEOUT_SECONDS is longer. Beyond
# it a busy worker's responses are late for any caller anyway.
REDIS_LIMIT_SECONDS = 0.25


class UnlockedConnectionPool(ConnectionPool):
    """Connection pool that hands out connections without a lock or a probe.

    redis-py's pool takes one lock for all callers and, holding it, probes each
    connection for unread data with a zero timeout, which suspends the caller
    until the next loop iteration. Every command then waits for the commands
    before it to get their iteration, one at a time: with 32 requests in
    progress, lookups waited about 30 ms for a connection. Here a connection is
    taken from the free list in one step, without awaiting, and only connected
    if it is not. The probe guards against data left by a command that was
    interrupted mid-reply; redis-py closes such a connection itself.
    """

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        """Return a connected connection of the pool; pair it with ``release``."""
        connection: AbstractConnection = self.get_available_connection()
        try:
            await connection.connect()
        except BaseException:
            await self.release(connection)
            raise
        return connection


def create_redis(settings: ScorerSettings) -> Redis:
    """Create the Redis client, which connects on its first command.

    Commands are not retried: a failed lookup falls back to PostgreSQL at once.
    Every caller bounds its commands, connecting included, with a timeout of
    its own. The socket timeouts are only the longest of them, because they run
    on the event loop's clock and would expire on a busy loop for replies and
    connections that came in time.
    """
    pool = UnlockedConnectionPool.from_url(
        settings.redis_url,
        socket_timeout=max(settings.redis_timeout_seconds, REDIS_LIMIT_SECONDS),
        socket_connect_timeout=max(settings.redis_timeout_seconds, REDIS_LIMIT_SECONDS),
        retry_on_timeout=False,
    )
    return Redis.from_pool(pool)


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
