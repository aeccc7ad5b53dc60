"""Prometheus endpoint for the feature job's Flink metrics.

Flink's own Prometheus reporter listens on every network interface and has no
option to bind one address, so the job does not use it. Instead, the process
that runs the job serves ``/metrics`` on ``FRAUD_STREAM_METRICS_HOST``
(127.0.0.1 unless a container sets 0.0.0.0) and, at each scrape, reads the
running job's metrics from the Flink REST API, which stays bound to 127.0.0.1.

Exported, labelled by ``operator`` (such as ``parse_transactions``) or by
``task`` (a chain of operators that runs in one thread):

* ``fraud_stream_dead_letters_total{operator}``: records sent to the
  dead-letter topic.
* ``fraud_stream_late_events_total{operator}``: events sent to the late-events
  topic.
* ``fraud_stream_source_pending_records{operator}``: records of a Kafka source
  not yet read (consumer lag).
* ``fraud_stream_records_in_total{task}``: records each task has read.
* ``fraud_stream_watermark_seconds{task}``: the task's input watermark as epoch
  seconds, so ``time() - fraud_stream_watermark_seconds`` is its event-time lag.
* ``fraud_stream_checkpoint_state_bytes``: full state size of the latest
  completed checkpoint, which shows whether the job's state stays bounded;
  absent before the first checkpoint completes.
* ``fraud_stream_up``: 1 while the REST API returns the job's metrics, else 0.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REST_TIMEOUT_SECONDS = 2.0
# Exported Flink metrics by the last part of their id: name, help text and label.
# The job's Python operators register the two user counters.
EXPORTED = {
    "dead_letter_records": (
        "fraud_stream_dead_letters",
        "Records sent to the dead-letter topic.",
        "operator",
    ),
    "late_events": (
        "fraud_stream_late_events",
        "Events sent to the late-events topic.",
        "operator",
    ),
    "pendingRecords": (
        "fraud_stream_source_pending_records",
        "Records of the Kafka source not yet read.",
        "operator",
    ),
    "numRecordsIn": ("fraud_stream_records_in", "Records read by the task.", "task"),
    "currentInputWatermark": (
        "fraud_stream_watermark_seconds",
        "Input watermark of the task, in epoch seconds.",
        "task",
    ),
}
COUNTERS = {"dead_letter_records", "late_events", "numRecordsIn"}
# Flink reports this watermark before the first one arrives (Long.MIN_VALUE).
NO_WATERMARK = -(2**63)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class MetricValue:
    """One Flink metric of a job vertex, summed over its subtasks."""

    vertex: str
    metric_id: str
    value: float

    @property
    def suffix(self) -> str:
        """The last part of the id, the metric's own name."""
        return self.metric_id.rsplit(".", 1)[-1]

    @property
    def operator(self) -> str | None:
        """The operator named in the id, or None for a metric of the whole task."""
        parts = self.metric_id.rsplit(".", 1)
        return parts[0] if len(parts) == 2 else None

    @property
    def label(self) -> str | None:
        """The value of the exported label, or None when this id is not exported."""
        kind = EXPORTED[self.suffix][2]
        if kind == "task":
            return self.vertex if self.operator is None else None
        return self.operator


class FlinkRestClient:
    """Reads a job's vertex metrics from the Flink REST API.

    Args:
        rest_url: base URL such as ``http://127.0.0.1:8081``.
        job_id: the job's id in hexadecimal.
    """

    def __init__(self, rest_url: str, job_id: str) -> None:
        self._base = f"{rest_url.rstrip('/')}/jobs/{job_id}"

    def vertex_metrics(self) -> list[MetricValue]:
        """Return the exported metrics of every vertex, summed over subtasks.

        Raises:
            OSError: if the REST API cannot be reached or returns an error.
        """
        values = []
        for vertex in self._get("")["vertices"]:
            path = f"/vertices/{vertex['id']}/subtasks/metrics"
            exported = [
                item["id"]
                for item in self._get(path)
                if item["id"].rsplit(".", 1)[-1] in EXPORTED
            ]
            if not exported:
                continue
            query = urllib.parse.urlencode(
                {"get": ",".join(exported), "agg": "sum,min"}
            )
            for item in self._get(f"{path}?{query}"):
                values.append(_value(vertex["name"], item))
        return values

    def checkpoint_state_bytes(self) -> float | None:
        """Return the full state size of the latest completed checkpoint.

        None before a checkpoint completes.

        Raises:
            OSError: if the REST API cannot be reached or returns an error.
        """
        completed = self._get("/checkpoints")["latest"]["completed"]
        return None if completed is None else float(completed["state_size"])

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(
            self._base + path, timeout=REST_TIMEOUT_SECONDS
        ) as response:
            return json.load(response)


def _value(vertex: str, item: dict[str, Any]) -> MetricValue:
    # A watermark is the slowest subtask's, not a sum.
    suffix = item["id"].rsplit(".", 1)[-1]
    value = item["min"] if suffix == "currentInputWatermark" else item["sum"]
    return MetricValue(vertex, item["id"], float(value))


# Exceptions of a failed or malformed REST response.
REST_ERRORS = (OSError, ValueError, KeyError, TypeError)


class FlinkJobCollector(Collector):
    """Prometheus collector that reads the job's metrics at each scrape."""

    def __init__(self, client: FlinkRestClient) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "fraud_stream_up", "1 while the Flink REST API returns the job's metrics."
        )
        try:
            values = self._client.vertex_metrics()
        except REST_ERRORS as exc:
            log.warning(
                "reading the job's metrics from the Flink REST API failed: %s", exc
            )
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from _families(values)
        # The operators' metrics are valid without the checkpoint size, so an error
        # of the checkpoints endpoint alone leaves out only this gauge.
        try:
            state_bytes = self._client.checkpoint_state_bytes()
        except REST_ERRORS as exc:
            log.warning(
                "reading the job's checkpoints from the Flink REST API failed: %s",
                exc,
            )
            return
        if state_bytes is not None:
            yield GaugeMetricFamily(
                "fraud_stream_checkpoint_state_bytes",
                "Full state size of the job's latest completed checkpoint.",
                value=state_bytes,
            )


def _families(values: list[MetricValue]) -> Iterator[Metric]:
    # Operators of one name (a chain of two Maps) are summed into one sample.
    totals: dict[str, dict[str, float]] = {suffix: {} for suffix in EXPORTED}
    for value in values:
        label = value.label
        if label is None:
            continue
        if value.suffix == "currentInputWatermark":
            if value.value > NO_WATERMARK:
                totals[value.suffix][label] = value.value / 1000
            continue
        samples = totals[value.suffix]
        samples[label] = samples.get(label, 0.0) + value.value
    for suffix, (name, text, label_name) in EXPORTED.items():
        family_type = CounterMetricFamily if suffix in COUNTERS else GaugeMetricFamily
        family = family_type(name, text, labels=[label_name])
        for label, value in sorted(totals[suffix].items()):
            family.add_metric([label], value)
        yield family


def serve(port: int, rest_url: str, job_id: str, host: str = "127.0.0.1") -> Any:
    """Serve the job's metrics on ``host:port`` and return the HTTP server.

    The caller stops it with ``shutdown()`` when the job ends.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlinkJobCollector(FlinkRestClient(rest_url, job_id)))
    server, _ = start_http_server(port, addr=host, registry=registry)
    log.info(
        "serving the metrics of job %s from %s on %s:%d", job_id, rest_url, host, port
    )
    return server
