"""Load shedding: a bound on the score requests one worker handles at once.

Beyond its capacity an event loop queues work, so every waiting request adds to
the latency of all the others. The Redis timeout runs on the loop's clock, so it
expires for replies that arrived in time while the loop was busy. Requests then
fall back to PostgreSQL and to default features, and every caller waits seconds
for answers that are no longer scores of the real features.

A request that finds ``limit`` others in progress is rejected at once with 503 and
``Retry-After``, before it is authenticated or parsed, so it costs little and
leaves no trace: no idempotency claim, no event, no log row. The caller can send
the same transaction id again. The requests that are admitted keep their
latency, because at most ``limit - 1`` others share the loop with them.
"""

from __future__ import annotations

from services.scorer.errors import Overloaded
from services.scorer.metrics import ScorerMetrics


class Admission:
    """Counter of the score requests in progress that rejects those above the limit.

    Args:
        limit: Maximum number of requests in progress; 0 admits every request.
        metrics: Where the number in progress is shown. The error handler
            counts the rejections, as ``fraud_score_errors_total{kind="overloaded"}``.
    """

    def __init__(self, limit: int, metrics: ScorerMetrics) -> None:
        if limit < 0:
            raise ValueError(f"limit must be 0 or more requests, got {limit}.")
        self._limit = limit
        self._in_progress = 0
        self._gauge = metrics.requests_in_progress

    @property
    def in_progress(self) -> int:
        """Requests admitted and not yet finished."""
        return self._in_progress

    def enter(self) -> None:
        """Admit one request; pair every call that returns with :meth:`leave`.

        Raises:
            Overloaded: if ``limit`` requests are in progress already.
        """
        if self._limit and self._in_progress >= self._limit:
            raise Overloaded(
                f"the scorer is at its limit of requests in progress "
                f"({self._limit}); retry after the time in Retry-After."
            )
        self._in_progress += 1
        self._gauge.set(self._in_progress)

    def leave(self) -> None:
        """Mark one admitted request as finished."""
        self._in_progress -= 1
        self._gauge.set(self._in_progress)
