"""The Redis client's connection pool under many concurrent commands."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import ConnectionPool, Redis

from services.scorer.clients import UnlockedConnectionPool

CONCURRENT = 32


async def iterations_for_pings(pool: ConnectionPool) -> int:
    """Count the loop iterations that ``CONCURRENT`` concurrent PINGs take."""
    client = Redis.from_pool(pool)
    loop = asyncio.get_running_loop()
    try:
        # The first round opens a connection for each command.
        await asyncio.gather(*(client.ping() for _ in range(CONCURRENT)))
        iterations = 0
        handle: asyncio.Handle | None = None

        def tick() -> None:
            # A callback that schedules itself runs once per loop iteration.
            nonlocal iterations, handle
            iterations += 1
            handle = loop.call_soon(tick)

        tick()
        await asyncio.gather(*(client.ping() for _ in range(CONCURRENT)))
        assert handle is not None
        handle.cancel()
        return iterations
    finally:
        await client.aclose()


@pytest.mark.integration
def test_unlocked_pool_serves_commands_at_once(redis_url: str) -> None:
    unlocked = asyncio.run(
        iterations_for_pings(UnlockedConnectionPool.from_url(redis_url))
    )
    stock = asyncio.run(iterations_for_pings(ConnectionPool.from_url(redis_url)))

    # redis-py's pool lets one command at a time probe its connection, which
    # takes an iteration each.
    assert stock >= CONCURRENT
    assert unlocked < CONCURRENT / 4
