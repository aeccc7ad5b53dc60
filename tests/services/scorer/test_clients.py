"""The Redis client's connection pool under many concurrent commands."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import ConnectionPool, Redis

from services.scorer.clients import UnlockedConnectionPool

CONCURRENT = 32


async def iterations_to_hand_out(pool: ConnectionPool) -> int:
    """Count the loop iterations until ``CONCURRENT`` PINGs all have a connection.

    The count stops when the pool hands out its last connection, before any
    reply is read, so it does not depend on how fast Redis replies.
    """
    client = Redis.from_pool(pool)
    loop = asyncio.get_running_loop()
    try:
        # The first round opens a connection for each command.
        await asyncio.gather(*(client.ping() for _ in range(CONCURRENT)))
        iterations = 0
        handed_out_at: list[int] = []
        get_connection = pool.get_connection

        async def recorded_get_connection(*args: Any, **kwargs: Any) -> Any:
            connection = await get_connection(*args, **kwargs)
            handed_out_at.append(iterations)
            return connection

        def tick() -> None:
            # A callback that schedules itself runs once per loop iteration.
            nonlocal iterations
            iterations += 1
            if len(handed_out_at) < CONCURRENT:
                loop.call_soon(tick)

        pool.get_connection = recorded_get_connection  # type: ignore[method-assign]
        tick()
        await asyncio.gather(*(client.ping() for _ in range(CONCURRENT)))
        assert len(handed_out_at) == CONCURRENT
        return max(handed_out_at)
    finally:
        await client.aclose()


@pytest.mark.integration
def test_unlocked_pool_hands_out_connections_at_once(redis_url: str) -> None:
    unlocked = asyncio.run(
        iterations_to_hand_out(UnlockedConnectionPool.from_url(redis_url))
    )
    stock = asyncio.run(iterations_to_hand_out(ConnectionPool.from_url(redis_url)))

    # redis-py's pool lets one command at a time probe its connection, which
    # takes an iteration each.
    assert stock >= CONCURRENT
    assert unlocked < CONCURRENT / 4
