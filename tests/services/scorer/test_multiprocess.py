"""Metrics of several uvicorn workers, from the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.scorer.settings import ScorerSettings
from tests.services.scorer.conftest import SeededStores, closed_port, unique_transaction

pytestmark = pytest.mark.integration

REQUESTS = 40


@pytest.fixture
def two_workers(live_settings: ScorerSettings, tmp_path: Path) -> Iterator[str]:
    """Run ``python -m services.scorer`` with two workers; yield its base URL."""
    port = closed_port()
    environment = dict(os.environ)
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment |= {
        "FRAUD_PORT": str(port),
        "FRAUD_WORKERS": "2",
        "FRAUD_REDIS_URL": live_settings.redis_url,
        "FRAUD_PG_DSN": live_settings.pg_dsn,
        "FRAUD_REDIS_PREFIX": live_settings.redis_prefix,
        "FRAUD_KAFKA_BOOTSTRAP": live_settings.kafka_bootstrap,
        "FRAUD_FLUSH_TIMEOUT_SECONDS": "0",
        "FRAUD_MODEL_DIR": str(live_settings.model_dir),
        "FRAUD_MODEL_VERSION": str(live_settings.model_version),
        "FRAUD_REQUIRE_API_KEY": "false",
        "FRAUD_REDIS_TIMEOUT_SECONDS": "0.5",
        "FRAUD_REQUEST_DEADLINE_MS": "2000",
        "FRAUD_METRICS_DIR": str(tmp_path / "metrics"),
        "FRAUD_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "scorer.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.scorer"],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, process, tmp_path / "scorer.log")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_ready(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the scorer exited during start-up: {log.read_text()[-2000:]}"
            )
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the scorer was not ready in 60 s: {log.read_text()[-2000:]}")


def sample(text: str, name: str) -> float:
    """Return the value of an unlabelled sample in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in the metrics")


def test_metrics_add_up_across_workers(two_workers: str, stores: SeededStores) -> None:
    for _ in range(REQUESTS):
        # A new connection per request, so both workers get requests.
        response = httpx.post(f"{two_workers}/score", json=unique_transaction(stores))
        assert response.status_code == 200

    counts = []
    for _ in range(6):
        text = httpx.get(f"{two_workers}/metrics").text
        counts.append(sample(text, "fraud_score_request_duration_seconds_count"))

    assert counts == [float(REQUESTS)] * 6
    sources = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fraud_score_feature_source_total{")
    ]
    assert sum(sources) == REQUESTS
