"""App factory of the scoring service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from services.scorer.errors import install_error_handlers
from services.scorer.metrics import ScorerMetrics
from services.scorer.routes import health, metrics, score
from services.scorer.runtime import (
    close_runtime,
    keep_loading_model,
    load_model_once,
    open_runtime,
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
    app.include_router(score.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    return app


def _lifespan(
    settings: ScorerSettings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await open_runtime(settings, app.state.metrics)
        app.state.runtime = runtime
        retry: asyncio.Task[None] | None = None
        if not await load_model_once(runtime):
            retry = asyncio.create_task(keep_loading_model(runtime))
        if runtime.model is not None:
            logger.info("scorer started, serving model %s", runtime.model.version)
        else:
            logger.warning(
                "scorer started without a model; loading it in the background"
            )
        try:
            yield
        finally:
            if retry is not None:
                retry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retry
            await close_runtime(runtime)
            logger.info("scorer stopped")

    return lifespan
