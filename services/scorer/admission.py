"""Load shedding: a bound on the score requests one worker handles at once.

Beyond its capacity an event loop queues work, so every waiting request adds to
the latency of all the others, and callers wait seconds for their responses.

A request is counted once its body is read and parsed. If ``limit`` others are
in progress then, it is rejected at once with 503 and ``Retry-After``, before
any store is read. So it costs little and leaves no trace: no idempotency
claim, no event, no log row, and the caller can send the same transaction id
again. A client that is slow to send its body takes no place meanwhile.

An admitted request shares the loop with at most ``limit - 1`` others. Requests
that wait before the loop reads them are not in the count, so the optional lag
limit rejects requests while that wait is long.
"""

from __future__ import annotations

from services.scorer.errors import Overloaded
from services.scorer.event_loop import LoopLag
from services.scorer.metrics import ScorerMetrics


class Admission:
    """Counter of the score requests in progress that rejects those above the limit.

    Requests are also rejected while the event loop runs more than
    ``max_lag_seconds`` late, because a request that arrives then has waited
    about that long already, unseen by the count.

    Args:
        limit: Maximum number of requests in progress; 0 admits every request.
        max_lag_seconds: Largest lag of ``lag`` at which requests are admitted;
            0 ignores the lag.
        lag: The event loop's measured lag; its ``run`` task must be running.
        metrics: Where the number in progress is shown. The error handler
            counts the rejections, as ``fraud_score_errors_total{kind="overloaded"}``.
    """

    def __init__(
        self, limit: int, max_lag_seconds: float, lag: LoopLag, metrics: ScorerMetrics
    ) -> None:
        if limit < 0:
            raise ValueError(f"limit must be 0 or more requests, got {limit}.")
        self._limit = limit
        self._max_lag = max_lag_seconds
        self.lag = lag
        self._in_progress = 0
        self._gauge = metrics.requests_in_progress

    @property
    def in_progress(self) -> int:
        """Requests admitted and not yet finished."""
        return self._in_progress

    def enter(self) -> None:
        """Admit one request; pair every call that returns with :meth:`leave`.

        Raises:
            Overloaded: if ``limit`` requests are in progress already, or the
                loop lags more than ``max_lag_seconds``.
        """
        if self._limit and self._in_progress >= self._limit:
            raise Overloaded(
                f"the scorer is at its limit of requests in progress "
                f"({self._limit}); retry after the time in Retry-After."
            )
        if self._max_lag:
            lag = self.lag.seconds
            if lag > self._max_lag:
                raise Overloaded(
                    f"the scorer's event loop is {lag * 1000:g} ms behind, more "
                    f"than its limit of {self._max_lag * 1000:g} ms; retry after "
                    "the time in Retry-After."
                )
        self._in_progress += 1
        self._gauge.set(self._in_progress)

    def leave(self) -> None:
        """Mark one admitted request as finished."""
        self._in_progress -= 1
        self._gauge.set(self._in_progress)
