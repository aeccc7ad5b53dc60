"""Time on a busy event loop: how late it runs, and timeouts that allow for that.

A timeout on the event loop's clock also counts the time the loop spent on other
requests. When a worker is busy, a Redis reply that arrived within its budget
waits unread in the socket, the timeout expires first, and the request falls
back to PostgreSQL and then to default features, though Redis was healthy.
:func:`responsive_timeout` does not expire while the caller has its reply and
only waits for the loop, and :class:`LoopLag` measures the lateness that load
shedding acts on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import Gauge

# Delay between the checks after the budget has run out.
RECHECK_SECONDS = 0.001
# Default of getattr when a task object has no such attribute.
_MISSING = object()


@asynccontextmanager
async def responsive_timeout(budget: float, limit: float) -> AsyncIterator[None]:
    """Time out after ``budget`` seconds, unless the reply is in and waits for the loop.

    When the budget runs out, the check looks at the calling task. A task that
    no longer waits for a future has its reply, or part of it, and only waits
    for its turn on a busy loop, so the check is repeated ``RECHECK_SECONDS``
    later. A task still waiting gets one more check after the loop has read its
    sockets again, because uvloop runs due timers before it reads them, so a
    reply that came in time may still be unread. Otherwise the timeout expires,
    and after ``limit`` seconds in any case.

    Raises:
        TimeoutError: when the timeout expires, as ``asyncio.timeout`` does.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout_at(start + limit) as timeout:
        checks = _BudgetChecks(loop, asyncio.current_task(), timeout)
        checks.schedule(start + budget)
        try:
            yield
        finally:
            checks.cancel()


class _BudgetChecks:
    """The checks of one :func:`responsive_timeout` after its budget ran out."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        task: asyncio.Task[Any] | None,
        timeout: asyncio.Timeout,
    ) -> None:
        self._loop = loop
        self._task = task
        self._timeout = timeout
        self._rechecked = False
        self._handle: asyncio.Handle | None = None

    def schedule(self, when: float) -> None:
        """Run the first check at ``when`` on the loop's clock."""
        self._handle = self._loop.call_at(when, self._check)

    def cancel(self) -> None:
        """Cancel the pending check.

        The handle refers to this object, which refers to the request's task.
        Dropping it breaks that cycle, so reference counting frees the
        request's objects at once. Left to the cyclic garbage collector, they
        made it run about seven times as often under load, and each of its
        runs paused the loop for about 20 ms (Python 3.11).
        """
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        if self._timeout.expired():
            return
        now = self._loop.time()
        if not waits_for_future(self._task):
            self._rechecked = False
            self._handle = self._loop.call_at(now + RECHECK_SECONDS, self._check)
        elif not self._rechecked:
            self._rechecked = True
            self._handle = self._loop.call_soon(self._check_after_next_read)
        else:
            self._timeout.reschedule(now)

    def _check_after_next_read(self) -> None:
        # On uvloop, a callback scheduled from a timer runs before the loop
        # reads its sockets, and so may a timer due 1 ms later, because the
        # loop's clock is read once per iteration. A callback scheduled from
        # a callback runs after the next read, on uvloop and on asyncio's
        # own loop.
        self._handle = self._loop.call_soon(self._check)


def waits_for_future(task: asyncio.Task[Any] | None) -> bool:
    """Return whether ``task`` is suspended on a future that is not done yet.

    asyncio tasks keep that future in ``_fut_waiter``, which is not public API.
    Without it (another task implementation), every task counts as waiting,
    and the timeout expires as a plain one would.
    """
    if task is None:
        return True
    waiter = getattr(task, "_fut_waiter", _MISSING)
    if waiter is _MISSING:
        return True
    return waiter is not None and not waiter.done()


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
