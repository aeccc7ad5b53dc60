"""Entry point: ``python -m services.scorer`` serves the scorer with uvicorn."""

from __future__ import annotations

from typing import Any

import uvicorn

from services.scorer.app import create_app
from services.scorer.settings import ScorerSettings


def logging_config(level: str) -> dict[str, Any]:
    """Build the ``logging.config.dictConfig`` of the service and of uvicorn.

    Decisions go out as bare JSON lines; every other record gets a timestamp,
    level and logger name.
    """
    stream = "ext://sys.stderr"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "bare": {"format": "%(message)s"},
        },
        "handlers": {
            "plain": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": stream,
            },
            "bare": {
                "class": "logging.StreamHandler",
                "formatter": "bare",
                "stream": stream,
            },
        },
        "loggers": {
            "services.scorer.decisions": {
                "handlers": ["bare"],
                "level": level,
                "propagate": False,
            },
            "uvicorn": {"level": level},
            "uvicorn.access": {"level": "WARNING"},
        },
        "root": {"handlers": ["plain"], "level": level},
    }


def main() -> None:
    """Read the settings and run uvicorn until it is stopped."""
    settings = ScorerSettings()
    # One worker gets the app built from these settings. Several workers need an
    # import string, and each worker process then reads the settings itself.
    app: Any = (
        create_app(settings)
        if settings.workers == 1
        else "services.scorer.app:create_app"
    )
    uvicorn.run(
        app,
        factory=settings.workers > 1,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=logging_config(settings.log_level),
    )


if __name__ == "__main__":
    main()
