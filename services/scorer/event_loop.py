"""Time on a busy event loop: how late it runs, and timeouts that allow for that.

A timeout on the event loop's clock also counts the time the loop spent on other
requests. When a worker is busy, a Redis reply that arrived within its budget
waits unread in the socket, the timeout expires first, and the request falls
back to PostgreSQL and then to default features, though Redis was healthy.
:func:`responsive_timeout` extends such a timeout while the loop is late, and
:class:`LoopLag` measures the lateness that load shedding acts on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import Gauge

# A timer that runs this much later than it was due shows that the loop was busy.
# uvloop's clock has millisecond resolution, so less would catch rounding.
LATE_SECONDS = 0.002
# Delay between the checks after the budget has run out. It is not zero, so that
# the loop polls its sockets between two checks, whatever order it runs them in.
RECHECK_SECONDS = 0.001
# Checks in a row that must run on time before the timeout expires.
ON_TIME_CHECKS = 2


@asynccontextmanager
async def responsive_timeout(budget: float, limit: float) -> AsyncIterator[None]:
    """Time out after ``budget`` seconds in which the loop was free to run the caller.

    When the budget runs out, a reply may already wait unread in a socket: the
    loop runs due timers and ready callbacks before it polls, and while it is
    busy it polls late. So the timeout expires only after ``ON_TIME_CHECKS``
    checks in a row, ``RECHECK_SECONDS`` apart, ran on time, with a poll of the
    sockets between them. A late check starts the count again. The timeout
    expires after ``limit`` seconds in any case.

    Raises:
        TimeoutError: when the timeout expires, as ``asyncio.timeout`` does.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout_at(start + limit) as timeout:
        handle: list[asyncio.TimerHandle] = []
        on_time = 0

        def check(due: float) -> None:
            nonlocal on_time
            if timeout.expired():
                return
            now = loop.time()
            on_time = 0 if now - due >= LATE_SECONDS else on_time + 1
            if on_time >= ON_TIME_CHECKS:
                timeout.reschedule(now)
                return
            retry = now + RECHECK_SECONDS
            handle[0] = loop.call_at(retry, check, retry)

        due = start + budget
        handle.append(loop.call_at(due, check, due))
        try:
            yield
        finally:
            handle[0].cancel()


class LoopLag:
    """Lateness of a timer that fires every ``interval_seconds``, in seconds.

    It estimates how long new work, such as a request that has just arrived,
    waits before the loop runs it. ``gauge``, when given, shows each value.
    """

    def __init__(self, interval_seconds: float = 0.005, gauge: Gauge | None = None):
        self.interval_seconds = interval_seconds
        self.seconds = 0.0
        self._gauge = gauge

    async def run(self) -> None:
        """Measure until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_seconds
            await asyncio.sleep(self.interval_seconds)
            self.seconds = max(0.0, loop.time() - due)
            if self._gauge is not None:
                self._gauge.set(self.seconds)
