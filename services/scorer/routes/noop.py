"""``POST /noop``: reads the body and returns ``{}``, for benchmarks only.

Its saturation throughput is the framework's own ceiling on the same server,
the yardstick that ``load/bench_score.py`` compares ``POST /score`` with. The
app mounts it only when ``FRAUD_NOOP_ROUTE`` is true.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

router = APIRouter(tags=["benchmark"])


@router.post("/noop", response_class=Response, include_in_schema=False)
async def noop(request: Request) -> Response:
    """Read the request body and return an empty JSON object."""
    await request.body()
    return Response(b"{}", media_type="application/json")
