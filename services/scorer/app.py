"""App factory of the scoring service."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager

from fastapi import FastAPI

from services.scorer.errors import install_error_handlers
from services.scorer.metrics import ScorerMetrics
from services.scorer.routes import health, labels, metrics, noop, score
from services.scorer.runtime import (
    close_runtime,
    load_model_once,
    open_runtime,
    start_background_tasks,
)
from services.scorer.settings import ScorerSettings

logger = logging.getLogger(__name__)

# Allocations between two collections of the youngest generation. A request
# frees nearly all it allocates by reference counting, so a collection mostly
# rescans the requests in progress, and at Python's default of 700 one ran
# about every third request.
GC_YOUNG_THRESHOLD = 10_000


def create_app(settings: ScorerSettings | None = None) -> FastAPI:
    """Build the scorer app, reading the settings from the environment when None."""
    settings = settings if settings is not None else ScorerSettings()
    skip_unused_log_record_fields()
    app = FastAPI(
        title="Fraud scorer",
        summary="Real-time fraud probability and decision for card transactions.",
        lifespan=_lifespan(settings),
        # The scorer exports Prometheus metrics. FastAPI's OpenTelemetry hooks
        # would look up the providers on every request to find none.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.metrics = ScorerMetrics()
    install_error_handlers(app)
    app.add_middleware(score.DirectScoreRoute)
    app.include_router(score.router)
    app.include_router(labels.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    if settings.noop_route:
        app.include_router(noop.router)
    return app


def skip_unused_log_record_fields() -> None:
    """Stop collecting the caller, thread and process of each log record.

    The service's log formats use none of them, and collecting them took about
    a third of the 13 us that logging one decision cost (Python 3.11). This is
    process-wide; each worker process builds its app, so each sets it.
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # The logging HOWTO's documented switch for the caller's file and line.
    logging._srcfile = None


def _lifespan(
    settings: ScorerSettings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await open_runtime(settings, app.state.metrics)
        app.state.runtime = runtime
        loaded = await load_model_once(runtime)
        start_background_tasks(runtime, loaded)
        if runtime.model is not None:
            logger.info("scorer started, serving model %s", runtime.model.version)
        else:
            logger.warning(
                "scorer started without a model; loading it in the background"
            )
        if not settings.require_api_key:
            logger.warning("FRAUD_REQUIRE_API_KEY is false; requests need no key")
        try:
            with startup_objects_frozen():
                yield
        finally:
            await close_runtime(runtime)
            logger.info("scorer stopped")

    return lifespan


@contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """Keep the objects built at start-up out of the cyclic garbage collector.

    The modules, the app and the model sessions live as long as the process.
    Under load, full collections rescanned about 190,000 of them and paused the
    event loop for up to 100 ms each (Python 3.11). On exit the objects are
    unfrozen, so an app that ends before its process can still be collected.
    """
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
