"""Load shedding: requests above the in-progress limit get 503 and leave no trace."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from services.scorer.admission import Admission
from services.scorer.errors import Overloaded
from services.scorer.event_loop import LoopLag
from services.scorer.metrics import ScorerMetrics
from services.scorer.settings import ScorerSettings
from tests.services.scorer.conftest import ServedScorer, hung_store_settings

TRANSACTION = {
    "transaction_id": "shed-1",
    "customer_id": "c",
    "terminal_id": "t",
    "amount": 12.5,
    "timestamp": "2024-04-06T10:00:00Z",
}


def test_admits_up_to_the_limit() -> None:
    admission = Admission(2, 0.0, LoopLag(), ScorerMetrics())

    admission.enter()
    admission.enter()
    with pytest.raises(Overloaded, match=r"limit of requests in progress \(2\)"):
        admission.enter()
    admission.leave()
    admission.enter()

    assert admission.in_progress == 2


def test_limit_zero_admits_every_request() -> None:
    admission = Admission(0, 0.0, LoopLag(), ScorerMetrics())

    for _ in range(1000):
        admission.enter()

    assert admission.in_progress == 1000


def test_lagging_loop_rejects_requests() -> None:
    lag = LoopLag()
    admission = Admission(0, 0.010, lag, ScorerMetrics())
    lag.seconds = 0.012

    with pytest.raises(Overloaded, match="12 ms behind, more than its limit of 10"):
        admission.enter()
    lag.seconds = 0.004
    admission.enter()

    assert admission.in_progress == 1


def test_loop_lag_measures_a_blocked_loop() -> None:
    async def measure() -> float:
        lag = LoopLag(interval_seconds=0.005)
        task = asyncio.create_task(lag.run())
        await asyncio.sleep(0.02)
        time.sleep(0.05)  # blocks the loop, as a long request would
        await asyncio.sleep(0.001)
        late = lag.seconds
        task.cancel()
        return late

    assert asyncio.run(measure()) >= 0.03


def test_negative_limit_raises() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        Admission(-1, 0.0, LoopLag(), ScorerMetrics())


def test_shed_request_can_be_resent(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
    served_model: object,
    silent_port: int,
) -> None:
    # Hung stores hold the first request for its whole deadline.
    settings = hung_store_settings(
        offline_settings,
        silent_port,
        request_deadline_ms=1500.0,
        max_requests_in_progress=1,
    )
    served = run_scorer(settings)
    served.runtime.install(served_model)  # type: ignore[arg-type]
    first: list[httpx.Response] = []
    holder = threading.Thread(
        target=lambda: first.append(
            httpx.post(f"{served.base_url}/score", json=TRANSACTION, timeout=10.0)
        )
    )
    holder.start()
    deadline = time.monotonic() + 5.0
    while served.runtime.admission.in_progress < 1:
        assert time.monotonic() < deadline, "the first request never started"
        time.sleep(0.005)

    shed = served.score({**TRANSACTION, "transaction_id": "shed-2"})
    holder.join(timeout=10.0)

    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert shed.json() == {
        "detail": "the scorer is at its limit of requests in progress (1); "
        "retry after the time in Retry-After."
    }
    assert first[0].status_code == 200
    metrics = served.client.get("/metrics").text
    assert 'fraud_score_errors_total{kind="overloaded"} 1.0' in metrics
    assert "fraud_score_requests_in_progress 0.0" in metrics
    # Only the admitted request reached the latency histogram.
    assert "fraud_score_request_duration_seconds_count 1.0" in metrics
    # The shed request claimed nothing, so sending it again scores it.
    again = served.score({**TRANSACTION, "transaction_id": "shed-2"})
    assert again.status_code == 200
    assert again.json()["transaction_id"] == "shed-2"


def test_slow_body_holds_no_place(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
    served_model: object,
) -> None:
    settings = offline_settings.model_copy(update={"max_requests_in_progress": 1})
    served = run_scorer(settings)
    served.runtime.install(served_model)  # type: ignore[arg-type]
    port = int(served.base_url.rsplit(":", 1)[1])

    with socket.create_connection(("127.0.0.1", port)) as stalled:
        # Headers promise a body that never comes.
        stalled.sendall(
            b"POST /score HTTP/1.1\r\nHost: scorer\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        time.sleep(0.2)
        in_progress = served.runtime.admission.in_progress
        response = served.score(TRANSACTION)

    assert in_progress == 0
    assert response.status_code == 200
