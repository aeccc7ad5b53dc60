"""``GET /metrics``: the scorer's metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.scorer.metrics import exposition_registry
from services.scorer.runtime import RuntimeDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    """Return the scorer's metrics in the Prometheus text format."""
    return Response(
        generate_latest(exposition_registry(runtime.metrics.registry)),
        media_type=CONTENT_TYPE_LATEST,
    )
