"""Timeouts that allow for a busy event loop."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import weakref
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import uvloop

from services.scorer.event_loop import responsive_timeout

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Run a coroutine to completion on a new loop of each kind."""

    def run_on_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(coroutine)

    return run_on_loop


async def seconds_until_timeout(budget: float, limit: float) -> float:
    """Wait for a future that never completes; return when the timeout expired."""
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with responsive_timeout(budget, limit):
            await asyncio.Event().wait()
    return time.monotonic() - started


def test_expires_on_a_free_loop(run: Run) -> None:
    assert 0.01 <= run(seconds_until_timeout(0.01, 1.0)) < 0.5


def test_reply_during_busy_loop_is_read(run: Run) -> None:
    async def reply_during_block(
        timeout_factory: Callable[[], AbstractAsyncContextManager[Any]],
    ) -> str:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[str] = loop.create_future()
        # The reply is due after 2 ms, but a blocking call holds the loop for
        # 50 ms, so both the reply and the 10 ms timeout are due when it ends.
        loop.call_later(0.002, reply.set_result, "features")
        loop.call_soon(time.sleep, 0.05)
        async with timeout_factory():
            return await reply

    assert run(reply_during_block(lambda: responsive_timeout(0.01, 1.0))) == "features"
    with pytest.raises(TimeoutError):
        run(reply_during_block(lambda: asyncio.timeout(0.01)))


class CallbackProtocol(asyncio.Protocol):
    """Protocol that calls ``on_data`` with the bytes it receives."""

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self.on_data = on_data

    def data_received(self, data: bytes) -> None:
        self.on_data(data)


def test_reply_unread_at_budget_is_read(run: Run) -> None:
    async def reply_just_before_budget() -> bytes:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()
        ours, theirs = socket.socketpair()
        trigger_in, trigger_out = socket.socketpair()

        def send_reply_then_block(_: bytes) -> None:
            # Runs while the loop handles socket events. The reply arrives
            # before the 30 ms budget ends, and the loop is busy until 1 ms
            # after it, so the timer is due before the loop polls again.
            theirs.send(b"features")
            time.sleep(0.028)

        reader, _ = await loop.create_connection(
            lambda: CallbackProtocol(reply.set_result), sock=ours
        )
        trigger, _ = await loop.create_connection(
            lambda: CallbackProtocol(send_reply_then_block), sock=trigger_in
        )
        loop.call_later(0.003, trigger_out.send, b"go")
        try:
            async with responsive_timeout(0.030, 1.0):
                return await reply
        finally:
            for closing in (reader, trigger):
                closing.close()
            theirs.close()
            trigger_out.close()

    assert run(reply_just_before_budget()) == b"features"


def test_unanswered_call_expires_on_busy_loop(run: Run) -> None:
    async def busy_loop() -> float:
        loop = asyncio.get_running_loop()
        stop = loop.time() + 0.5

        def hog() -> None:
            time.sleep(0.01)
            if loop.time() < stop:
                loop.call_soon(hog)

        loop.call_soon(hog)
        return await seconds_until_timeout(0.005, 1.0)

    # A late check gives the call one more check, not the whole limit.
    assert 0.005 <= run(busy_loop()) < 0.2


def test_limit_ends_wait_for_runnable_call(run: Run) -> None:
    async def always_runnable() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with responsive_timeout(0.005, 0.1):
                # A task that only yields never waits for a future.
                while True:
                    await asyncio.sleep(0)
        return time.monotonic() - started

    assert 0.09 <= run(always_runnable()) < 0.4


async def finished_task_reference() -> weakref.ref[asyncio.Task[None]]:
    """Run a task through a responsive timeout and return a weak reference to it."""

    async def request() -> None:
        async with responsive_timeout(0.01, 1.0):
            await asyncio.sleep(0)

    task = asyncio.create_task(request())
    await task
    reference = weakref.ref(task)
    del task
    return reference


def test_responsive_timeout_leaves_no_cycle(run: Run) -> None:
    # With the cyclic collector off, only reference counting can free the task.
    gc.disable()
    try:
        reference = run(finished_task_reference())
    finally:
        gc.enable()

    assert reference() is None
