"""Scores of shadow models, computed and stored off the response path.

A request hands its features to :meth:`ShadowScorer.submit` after its response
is built. That is a put into a bounded queue, which does not wait for a shadow
model, and a full queue drops the request's shadow scores and counts them. A
background task takes the queued requests in batches, scores each batch with
every shadow model in one ONNX call on a worker thread, so the event loop keeps
serving while the models run, and writes the scores to ``shadow_scores``.

A shadow model gets the decider's feature vector, cut to its own inputs. A
shadow trained with customer segments of another segmentation version than
the decider's would need a lookup of its own, so it is skipped and counted.

Shadow scores are best effort: a batch that fails to score or to be written is
counted and dropped, not retried, and what is queued at shutdown is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from psycopg_pool import AsyncConnectionPool

from services.scorer.feature_store import PG_FAILURES
from services.scorer.logs import ThrottledWarning
from services.scorer.metrics import ScorerMetrics
from services.scorer.rollout import Deployed

logger = logging.getLogger(__name__)

SHADOW_BATCH_ROWS = 256
WRITE_TIMEOUT_SECONDS = 5.0

INSERT_SQL = """
INSERT INTO shadow_scores (transaction_id, model_version, probability, scored_at)
VALUES (%s, %s, %s, %s)
ON CONFLICT (model_version, transaction_id) DO NOTHING
"""


@dataclass(frozen=True)
class ShadowRequest:
    """One decided request's features and the models that shadow it."""

    transaction_id: str
    features: list[float]
    models: tuple[Deployed, ...]


class ShadowScorer:
    """Queues decided requests and scores them with their shadow models."""

    def __init__(
        self, pg_pool: AsyncConnectionPool, max_requests: int, metrics: ScorerMetrics
    ) -> None:
        self._pg_pool = pg_pool
        self._queue: asyncio.Queue[ShadowRequest] = asyncio.Queue(max_requests)
        self._metrics = metrics
        self._warning = ThrottledWarning(logger)
        # One thread, so shadow inference uses at most one core beside the loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shadow")

    def compatible(
        self, decider: Deployed, models: tuple[Deployed, ...]
    ) -> tuple[Deployed, ...]:
        """Return the shadow models that can score the decider's features.

        Those are the models without segment input and those whose segments
        come from the decider's segmentation version. The others are counted
        as skipped.
        """
        version = decider.served.segmentation_version
        usable = tuple(
            model
            for model in models
            if model.served.segmentation_version in (None, version)
        )
        if len(usable) < len(models):
            skipped = [model.version for model in models if model not in usable]
            self._metrics.shadow_scores.labels(outcome="skipped").inc(len(skipped))
            self._warning.warn(
                "shadow models %s use another segmentation version than the "
                "deciding model %s (%s); skipped",
                skipped,
                decider.version,
                version,
            )
        return usable

    def submit(
        self, transaction_id: str, features: list[float], models: tuple[Deployed, ...]
    ) -> None:
        """Queue a request for its shadow models, or drop and count it if full."""
        try:
            self._queue.put_nowait(ShadowRequest(transaction_id, features, models))
        except asyncio.QueueFull:
            self._metrics.shadow_scores.labels(outcome="dropped").inc(len(models))
            self._warning.warn(
                "shadow queue full (%d requests); dropped the shadow scores of a "
                "request",
                self._queue.maxsize,
            )

    async def run(self) -> None:
        """Score and store queued requests in batches until cancelled."""
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < SHADOW_BATCH_ROWS and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                await self.process(batch)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def process(self, batch: Sequence[ShadowRequest]) -> None:
        """Score one batch with its models and write the scores."""
        loop = asyncio.get_running_loop()
        rows: list[tuple[str, str, float, datetime]] = []
        for model, requests in group_by_model(batch):
            try:
                scores = await loop.run_in_executor(
                    self._executor, score_rows, model, requests
                )
            except Exception as exc:  # onnxruntime raises unexported exception types
                self._metrics.shadow_scores.labels(outcome="failed").inc(len(requests))
                self._warning.warn(
                    "shadow model %s failed on %d rows: %r",
                    model.version,
                    len(requests),
                    exc,
                )
                continue
            scored_at = datetime.now(UTC)
            rows += [
                (request.transaction_id, model.version, float(score), scored_at)
                for request, score in zip(requests, scores, strict=True)
            ]
        if rows:
            await self.write(rows)

    async def write(self, rows: list[tuple[str, str, float, datetime]]) -> None:
        """Insert shadow scores; a failure is counted and logged, not retried."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                async with self._pg_pool.connection() as conn:
                    async with conn.cursor() as cursor:
                        await cursor.executemany(INSERT_SQL, rows)
        except PG_FAILURES as exc:
            self._metrics.shadow_scores.labels(outcome="failed").inc(len(rows))
            self._warning.warn("writing %d shadow scores failed: %r", len(rows), exc)
            return
        self._metrics.shadow_scores.labels(outcome="written").inc(len(rows))


def group_by_model(
    batch: Sequence[ShadowRequest],
) -> list[tuple[Deployed, list[ShadowRequest]]]:
    """Return the requests of ``batch`` by shadow model, in batch order."""
    groups: dict[str, tuple[Deployed, list[ShadowRequest]]] = {}
    for request in batch:
        for model in request.models:
            groups.setdefault(model.version, (model, []))[1].append(request)
    return list(groups.values())


def score_rows(model: Deployed, requests: Sequence[ShadowRequest]) -> np.ndarray:
    """Score the requests' features with one model in a single call."""
    started = time.perf_counter()
    # The segment input, when there is one, is last, so a shorter prefix serves
    # a model without it.
    width = len(model.served.model.inputs)
    rows = np.asarray(
        [request.features[:width] for request in requests], dtype=np.float32
    )
    scores = model.served.model.predict_rows(rows)
    logger.debug(
        "shadow model %s scored %d rows in %.1f ms",
        model.version,
        len(requests),
        (time.perf_counter() - started) * 1000,
    )
    return scores
