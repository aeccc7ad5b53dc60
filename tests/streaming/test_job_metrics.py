"""The job's Prometheus endpoint: Flink metric ids to exported samples."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streaming import job_metrics
from streaming.job_metrics import (
    NO_WATERMARK,
    FlinkJobCollector,
    FlinkRestClient,
    MetricValue,
    free_port,
)


class FixedClient:
    """A REST client that returns the same metrics at every scrape."""

    def __init__(
        self, values: list[MetricValue], state_bytes: float | None = None
    ) -> None:
        self._values = values
        self._state_bytes = state_bytes

    def vertex_metrics(self) -> list[MetricValue]:
        return self._values

    def checkpoint_state_bytes(self) -> float | None:
        return self._state_bytes


def exported(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlinkJobCollector(client))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_job_metrics_labels_by_operator_and_task():
    values = [
        MetricValue("parse transactions", "parse_transactions.dead_letter_records", 3),
        MetricValue("customer windows", "customer_windows.late_events", 2),
        MetricValue("customer windows", "numRecordsIn", 50),
        MetricValue("customer windows", "customer_windows.numRecordsIn", 50),
        MetricValue("customer windows", "currentInputWatermark", 1_530_000_000_000),
    ]
    samples = exported(FixedClient(values))
    dead = ("fraud_stream_dead_letters_total", (("operator", "parse_transactions"),))
    late = ("fraud_stream_late_events_total", (("operator", "customer_windows"),))
    records = ("fraud_stream_records_in_total", (("task", "customer windows"),))
    watermark = ("fraud_stream_watermark_seconds", (("task", "customer windows"),))
    assert samples[("fraud_stream_up", ())] == 1.0
    assert samples[dead] == 3.0
    assert samples[late] == 2.0
    assert samples[records] == 50.0  # the operator's own count is not added
    assert samples[watermark] == 1_530_000_000.0


def test_job_metrics_sums_operators_of_one_name():
    values = [
        MetricValue("parse", "Map.dead_letter_records", 1),
        MetricValue("parse", "Map.dead_letter_records", 4),
    ]
    samples = exported(FixedClient(values))
    assert samples[("fraud_stream_dead_letters_total", (("operator", "Map"),))] == 5.0


def test_job_metrics_skips_missing_watermark():
    values = [MetricValue("device windows", "currentInputWatermark", NO_WATERMARK)]
    samples = exported(FixedClient(values))
    assert not [name for name, _ in samples if name == "fraud_stream_watermark_seconds"]


def test_job_metrics_down_when_rest_unreachable():
    client = FlinkRestClient(f"http://127.0.0.1:{free_port()}", "0" * 32)
    samples = exported(client)
    assert samples == {("fraud_stream_up", ()): 0.0}


def recording_start(bound: dict):
    """Return a stand-in for start_http_server that records its address."""

    def start(port, addr, registry):
        bound.update(port=port, addr=addr)
        return "server", "thread"

    return start


def test_job_metrics_serve_binds_host(monkeypatch):
    bound = {}
    monkeypatch.setattr(job_metrics, "start_http_server", recording_start(bound))
    server = job_metrics.serve(9250, "http://127.0.0.1:8081", "0" * 32, host="0.0.0.0")
    assert server == "server"
    assert bound["addr"] == "0.0.0.0"
    assert bound["port"] == 9250


def test_job_metrics_serve_defaults_to_loopback(monkeypatch):
    bound = {}
    monkeypatch.setattr(job_metrics, "start_http_server", recording_start(bound))
    job_metrics.serve(9250, "http://127.0.0.1:8081", "0" * 32)
    assert bound["addr"] == "127.0.0.1"


def test_job_metrics_checkpoint_state_size():
    state = ("fraud_stream_checkpoint_state_bytes", ())

    before = exported(FixedClient([]))
    after = exported(FixedClient([], state_bytes=123_456.0))

    assert state not in before
    assert after[state] == 123_456.0


class CheckpointsFailingClient(FixedClient):
    """A REST client whose checkpoints endpoint returns an error."""

    def checkpoint_state_bytes(self) -> float | None:
        raise OSError("HTTP Error 500: Internal Server Error")


def test_job_metrics_kept_when_checkpoints_fail():
    values = [MetricValue("parse records", "parse_records.dead_letter_records", 3)]
    dead = ("fraud_stream_dead_letters_total", (("operator", "parse_records"),))

    samples = exported(CheckpointsFailingClient(values))

    assert samples[("fraud_stream_up", ())] == 1.0
    assert samples[dead] == 3.0
    assert ("fraud_stream_checkpoint_state_bytes", ()) not in samples
