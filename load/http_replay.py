"""Replays transactions through ``POST /score`` over HTTP and records each response.

Requests leave in event-time order; up to ``concurrency`` are in flight at once.
Latency is measured per request on the client, from send to full response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoredResponse:
    """One request's outcome: the status, the decoded body and the latency."""

    transaction_id: str
    status: int
    body: dict[str, Any]
    latency_ms: float


async def replay_requests(
    base_url: str,
    bodies: Sequence[dict[str, Any]],
    concurrency: int = 4,
    timeout_seconds: float = 10.0,
    api_key: str | None = None,
) -> list[ScoredResponse]:
    """Send every body to ``/score`` and return the outcomes in the same order.

    ``api_key`` goes in the ``X-API-Key`` header when given.
    """
    results: list[ScoredResponse | None] = [None] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(bodies)):
        queue.put_nowait(index)
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency
    )
    headers = {"X-API-Key": api_key} if api_key else {}
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout_seconds, limits=limits, headers=headers
    ) as client:
        workers = [
            asyncio.create_task(_worker(client, bodies, queue, results))
            for _ in range(concurrency)
        ]
        await asyncio.gather(*workers)
    return [result for result in results if result is not None]


async def _worker(
    client: httpx.AsyncClient,
    bodies: Sequence[dict[str, Any]],
    queue: asyncio.Queue[int],
    results: list[ScoredResponse | None],
) -> None:
    while not queue.empty():
        index = queue.get_nowait()
        body = bodies[index]
        started = time.perf_counter()
        response = await client.post("/score", json=body)
        latency_ms = (time.perf_counter() - started) * 1000
        results[index] = ScoredResponse(
            str(body["transaction_id"]),
            response.status_code,
            response.json(),
            latency_ms,
        )
        if index and index % 10_000 == 0:
            log.info("scored %d of %d transactions over HTTP", index, len(bodies))


def request_bodies(transactions: pd.DataFrame) -> list[dict[str, Any]]:
    """Build ``/score`` bodies from transactions-file rows, in event-time order."""
    ordered = transactions.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    timestamps = ordered["TX_DATETIME"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return [
        {
            "transaction_id": str(tx_id),
            "customer_id": str(customer),
            "terminal_id": str(terminal),
            "amount": float(amount),
            "timestamp": timestamp,
        }
        for tx_id, customer, terminal, amount, timestamp in zip(
            ordered["TRANSACTION_ID"],
            ordered["CUSTOMER_ID"],
            ordered["TERMINAL_ID"],
            ordered["TX_AMOUNT"],
            timestamps,
            strict=True,
        )
    ]
