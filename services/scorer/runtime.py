"""Process-wide state of the scorer: settings, clients, metrics and the loaded model.

The app's lifespan builds one :class:`Runtime`, and route handlers receive it
through :data:`RuntimeDep`.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from services.scorer.admission import Admission
from services.scorer.auth import ApiKeys
from services.scorer.clients import create_pg_pool, create_redis
from services.scorer.errors import ModelLoadError, ModelUnavailable
from services.scorer.event_loop import LoopLag
from services.scorer.events import EventPublisher
from services.scorer.feature_store import REDIS_FAILURES, HistoryLookup
from services.scorer.idempotency import DecisionStore, DecisionWriter
from services.scorer.logs import DecisionLog
from services.scorer.metrics import ScorerMetrics
from services.scorer.policy import DecisionPolicy
from services.scorer.redis_client import MultiplexedRedis
from services.scorer.registry import ServedModel, load_registered_model
from services.scorer.rollout import (
    Deployed,
    Rollout,
    RolloutLoader,
    count_models,
    refresh,
)
from services.scorer.settings import ScorerSettings
from services.scorer.shadow import ShadowScorer

logger = logging.getLogger(__name__)

WARM_UP_SECONDS = 1.0


@dataclass
class Runtime:
    """Everything a request handler needs. ``rollout`` is None until a model loads."""

    settings: ScorerSettings
    redis: MultiplexedRedis
    pg_pool: AsyncConnectionPool
    histories: HistoryLookup
    metrics: ScorerMetrics
    decision_log: DecisionLog
    writer: DecisionWriter
    decisions: DecisionStore
    events: EventPublisher
    api_keys: ApiKeys
    shadow: ShadowScorer
    loader: RolloutLoader
    admission: Admission
    rollout: Rollout | None = None
    migrated: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Tree SHAP by LightGBM, for models without contribution tables, takes a
    # millisecond or more per request and releases the GIL meanwhile, so it
    # runs here while the event loop serves others. One thread keeps the
    # explanations to one core beside the loop.
    explain_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="explain")
    )

    @property
    def model(self) -> ServedModel | None:
        """The production model, or None before one is loaded."""
        rollout = self.rollout
        return None if rollout is None else rollout.production.served

    def install(self, served: ServedModel) -> None:
        """Serve ``served`` alone, with the policy of its row and the settings.

        Raises:
            ModelLoadError: if the resulting review threshold exceeds the block
                threshold.
        """
        policy = build_policy(served, self.settings)
        self.swap(Rollout(Deployed(served, policy, "production")))

    def swap(self, rollout: Rollout) -> None:
        """Serve ``rollout`` from the next request on, unless it is the same set."""
        previous = self.rollout
        if previous is not None and previous.signature() == rollout.signature():
            return
        self.rollout = rollout
        count_models(rollout, self.metrics)
        if previous is not None:
            self.metrics.model_swaps.inc()
        logger.info("serving %s", rollout.describe())

    def serving(self) -> Rollout:
        """Return the served models.

        Raises:
            ModelUnavailable: if no model has been loaded yet.
        """
        rollout = self.rollout
        if rollout is None:
            raise ModelUnavailable(
                "no model is loaded yet, so the transaction was not scored; retry "
                "when GET /readyz returns 200."
            )
        return rollout


def build_policy(served: ServedModel, settings: ScorerSettings) -> DecisionPolicy:
    """Combine the thresholds of the model row with the settings that override them.

    The block threshold is the setting, else the row's ``threshold``. The review
    threshold is the setting, else the row's ``review_threshold``, else
    ``default_review_ratio`` times the block threshold. The row's segment
    thresholds apply as stored, because the settings set the model-wide pair.
    """
    block = settings.block_threshold
    if block is None:
        block = served.model.threshold
    review = settings.review_threshold
    if review is None:
        review = served.review_threshold
    if review is None:
        review = settings.default_review_ratio * block
    return DecisionPolicy(review, block, served.rules, served.segment_thresholds)


async def open_runtime(settings: ScorerSettings, metrics: ScorerMetrics) -> Runtime:
    """Create the clients and open the PostgreSQL pool without waiting for it."""
    redis = create_redis(settings)
    pg_pool = create_pg_pool(settings)
    # wait=False: the service starts while PostgreSQL is down and becomes ready
    # once the pool connects and the model loads.
    await pg_pool.open(wait=False)
    histories = HistoryLookup(
        redis,
        pg_pool,
        redis_prefix=settings.redis_prefix,
        redis_timeout_seconds=settings.redis_timeout_seconds,
        pg_timeout_seconds=settings.pg_timeout_seconds,
        metrics=metrics,
    )
    hash_key = settings.log_hash_key
    decision_log = DecisionLog(
        None if hash_key is None else hash_key.get_secret_value().encode()
    )
    writer = DecisionWriter(pg_pool, settings.decision_buffer_rows, metrics)
    decisions = DecisionStore(
        redis,
        pg_pool,
        writer,
        prefix=settings.redis_prefix,
        ttl_seconds=settings.idempotency_ttl_seconds,
        redis_timeout_seconds=settings.redis_timeout_seconds,
        pg_timeout_seconds=settings.pg_timeout_seconds,
        metrics=metrics,
    )
    await warm_up_redis(redis)
    events = EventPublisher(settings, metrics)
    events.start()
    api_keys = ApiKeys(
        pg_pool, settings.api_key_refresh_seconds, settings.pg_timeout_seconds
    )
    shadow = ShadowScorer(pg_pool, settings.shadow_queue_size, metrics)
    loader = RolloutLoader(
        settings.model_dir, metrics, lambda served: build_policy(served, settings)
    )
    return Runtime(
        settings,
        redis,
        pg_pool,
        histories,
        metrics,
        decision_log,
        writer,
        decisions,
        events,
        api_keys,
        shadow,
        loader,
        Admission(
            settings.max_requests_in_progress,
            settings.max_loop_lag_ms / 1000,
            LoopLag(gauge=metrics.loop_lag),
            metrics,
        ),
    )


async def warm_up_redis(redis: MultiplexedRedis) -> None:
    """Open the first Redis connection now rather than in the first request.

    Connecting takes longer than a request's Redis budget. A failure is logged
    and left to the requests, which fall back to PostgreSQL.
    """
    try:
        async with asyncio.timeout(WARM_UP_SECONDS):
            await redis.ping()
    except REDIS_FAILURES as exc:
        logger.warning("redis did not respond at start-up: %r", exc)


def start_background_tasks(runtime: Runtime, model_loaded: bool) -> None:
    """Start the writers, the key reloads, shadow scoring and the model loading.

    A pinned ``model_version`` is retried until it loads; otherwise the registry
    is followed for as long as the process runs.
    """
    runtime.tasks.append(asyncio.create_task(runtime.writer.run()))
    runtime.tasks.append(asyncio.create_task(runtime.admission.lag.run()))
    runtime.tasks.append(asyncio.create_task(runtime.decisions.run_storer()))
    runtime.tasks.append(asyncio.create_task(runtime.shadow.run()))
    if runtime.settings.require_api_key:
        runtime.tasks.append(asyncio.create_task(runtime.api_keys.run()))
    if runtime.settings.model_version is None:
        runtime.tasks.append(asyncio.create_task(follow_registry(runtime)))
    elif not model_loaded:
        runtime.tasks.append(asyncio.create_task(keep_loading_model(runtime)))


async def close_runtime(runtime: Runtime) -> None:
    """Stop the background tasks, flush the buffers and close the clients."""
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    await runtime.decisions.store_batch()
    await runtime.writer.drain(runtime.settings.flush_timeout_seconds)
    await asyncio.to_thread(runtime.events.close)
    await runtime.redis.aclose()
    await runtime.pg_pool.close()
    runtime.explain_executor.shutdown(wait=False, cancel_futures=True)


async def load_model_once(runtime: Runtime) -> bool:
    """Load the registered models into ``runtime`` and return whether one serves."""
    settings = runtime.settings
    if settings.model_version is None:
        return await refresh_rollout(runtime)
    try:
        served = await load_registered_model(
            settings.pg_dsn, settings.model_version, settings.model_dir
        )
        runtime.install(served)
    except ModelLoadError as exc:
        runtime.metrics.errors.labels(kind=exc.kind).inc()
        logger.error(
            "model not loaded, retrying in %.1f s: %s",
            settings.model_retry_seconds,
            exc.detail,
        )
        return False
    return True


async def refresh_rollout(runtime: Runtime) -> bool:
    """Read the registry's stages, swap in what changed; return whether one serves."""
    settings = runtime.settings
    try:
        rollout = await refresh(
            settings.pg_dsn, runtime.loader, runtime.rollout, not runtime.migrated
        )
    except ModelLoadError as exc:
        runtime.metrics.errors.labels(kind=exc.kind).inc()
        logger.error(
            "%s; retrying in %.1f s", exc.detail, settings.registry_poll_seconds
        )
        return runtime.rollout is not None
    runtime.migrated = True
    if rollout is None:
        logger.error(
            "the registry has no production model that loads; retrying in %.1f s",
            settings.registry_poll_seconds,
        )
        return False
    runtime.swap(rollout)
    return True


async def follow_registry(runtime: Runtime) -> None:
    """Refresh the served models every ``registry_poll_seconds`` until cancelled."""
    while True:
        await asyncio.sleep(runtime.settings.registry_poll_seconds)
        await refresh_rollout(runtime)


async def keep_loading_model(runtime: Runtime) -> None:
    """Retry loading the model every ``model_retry_seconds`` until it loads.

    Runs as a background task after the load at start-up failed.
    """
    while True:
        await asyncio.sleep(runtime.settings.model_retry_seconds)
        if await load_model_once(runtime):
            return


async def get_runtime(request: Request) -> Runtime:
    """Return the runtime that the lifespan stored on the app.

    A coroutine, because FastAPI runs a plain function dependency in a thread
    pool, and that hand-off cost more than the scoring itself.
    """
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
