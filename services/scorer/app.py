"""App factory of the scoring service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

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


def create_app(settings: ScorerSettings | None = None) -> FastAPI:
    """Build the scorer app, reading the settings from the environment when None."""
    settings = settings if settings is not None else ScorerSettings()
    app = FastAPI(
        title="Fraud scorer",
        summary="Real-time fraud probability and decision for card transactions.",
        lifespan=_lifespan(settings),
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
            yield
        finally:
            await close_runtime(runtime)
            logger.info("scorer stopped")

    return lifespan
