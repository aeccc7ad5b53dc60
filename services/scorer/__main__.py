"""Entry point: ``python -m services.scorer`` serves the scorer with uvicorn."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from services.scorer.settings import ScorerSettings

# Must match services.scorer.metrics.MULTIPROCESS_ENV; that module is not
# imported here because importing prometheus_client fixes its mode.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


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


def prepare_multiprocess_metrics(settings: ScorerSettings) -> Path | None:
    """Point prometheus_client at an empty folder when there are several workers.

    The variable must be set before any worker imports prometheus_client, and
    the folder must not hold files of an earlier run, whose counts would be
    added to this run's.

    Returns:
        The folder when this function created it, so the caller removes it.
    """
    if settings.workers == 1:
        return None
    if settings.metrics_dir is None:
        folder = Path(tempfile.mkdtemp(prefix="fraud-scorer-metrics-"))
        created: Path | None = folder
    else:
        folder, created = settings.metrics_dir, None
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
    os.environ[MULTIPROCESS_ENV] = str(folder)
    return created


def main() -> None:
    """Read the settings and run uvicorn until it is stopped."""
    settings = ScorerSettings()
    created = prepare_multiprocess_metrics(settings)
    # Imported only now, after the metrics mode is fixed.
    import uvicorn

    from services.scorer.app import create_app

    # One worker gets the app built from these settings. Several workers need an
    # import string, and each worker process then reads the settings itself.
    app: Any = (
        create_app(settings)
        if settings.workers == 1
        else "services.scorer.app:create_app"
    )
    try:
        run_server(uvicorn, app, settings)
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)


def run_server(uvicorn: Any, app: Any, settings: ScorerSettings) -> None:
    """Run uvicorn with the service's protocol and logging options."""
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
