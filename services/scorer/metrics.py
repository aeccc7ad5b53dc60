"""Prometheus metrics of the scoring service.

With one worker the metrics live in a registry per app instance. With several,
the entry point sets ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is
imported, every worker writes its values to files there, and ``GET /metrics``
adds up the files of all workers (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Most requests finish in a few milliseconds, so the buckets are fine below 20 ms
# and coarse above it, where only outages and fallbacks land.
LATENCY_BUCKETS_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.00125, 0.0015, 0.00175, 0.002,
    0.0025, 0.003, 0.004, 0.005, 0.006, 0.0075, 0.01, 0.0125, 0.015, 0.0175,
    0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

STAGES = ("feature_fetch", "inference", "explain", "total")


def multiprocess_mode() -> bool:
    """Return whether the workers share their metrics through files."""
    return MULTIPROCESS_ENV in os.environ


def exposition_registry(own: CollectorRegistry) -> CollectorRegistry:
    """Return the registry that ``GET /metrics`` renders.

    In multiprocess mode that is a fresh registry reading every worker's files,
    else the app's own registry.
    """
    if not multiprocess_mode():
        return own
    combined = CollectorRegistry()
    MultiProcessCollector(combined)
    return combined


@dataclass
class ScorerMetrics:
    """The scorer's metrics and the registry that ``GET /metrics`` exposes."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _children: dict[tuple[str, tuple[str, ...]], Any] = field(
        default_factory=dict, repr=False
    )

    def child(self, metric: Any, *values: str) -> Any:
        """Return ``metric.labels(*values)``, cached.

        ``labels()`` costs a few microseconds per call, and the hot path makes
        about ten calls per request.
        """
        key = (metric._name, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def __post_init__(self) -> None:
        self.request_duration = Histogram(
            "fraud_score_request_duration_seconds",
            "Time to handle one admitted POST /score request, invalid ones "
            "included. Requests rejected by load shedding are counted in "
            'fraud_score_errors_total{kind="overloaded"} instead.',
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "fraud_score_stage_duration_seconds",
            "Time of each stage of scoring one transaction: feature_fetch, "
            "inference, explain (review and block only) and total.",
            ["stage"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "fraud_score_decisions_total",
            "Scoring decisions by model version and decision.",
            ["model_version", "decision"],
            registry=self.registry,
        )
        self.feature_sources = Counter(
            "fraud_score_feature_source_total",
            "Scored requests by the store their features came from.",
            ["source"],
            registry=self.registry,
        )
        self.degraded = Counter(
            "fraud_score_degraded_total",
            "Scored requests whose features are defaults because both stores failed.",
            registry=self.registry,
        )
        self.replays = Counter(
            "fraud_score_idempotent_replays_total",
            "Requests answered with the decision stored for their transaction id.",
            registry=self.registry,
        )
        self.events = Counter(
            "fraud_score_events_total",
            "Kafka messages by topic and outcome: queued, failed or dropped "
            "because the buffer was full.",
            ["topic", "outcome"],
            registry=self.registry,
        )
        # NOTE: uvicorn restarts a dead worker without calling prometheus_client's
        # mark_process_dead, so the backlog of a crashed worker stays in the sum
        # until the server restarts.
        self.kafka_backlog = Gauge(
            "fraud_score_kafka_backlog_messages",
            "Kafka messages queued or in flight, not yet delivered.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.requests_in_progress = Gauge(
            "fraud_score_requests_in_progress",
            "Score requests admitted and not yet answered.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "fraud_score_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 5 ms, an estimate of "
            "how long a new request waits.",
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.decision_rows = Counter(
            "fraud_score_decision_rows_total",
            "Durable copies of decisions in PostgreSQL by outcome: written, "
            "duplicate (a row existed) or dropped because the buffer was full.",
            ["outcome"],
            registry=self.registry,
        )
        self.label_requests = Counter(
            "fraud_score_labels_total",
            "Accepted POST /labels requests by source and outcome: created or "
            "repeated (the same label was recorded before).",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.active_models = Gauge(
            "fraud_score_active_models",
            "Models this process serves, by stage: production, canary, shadow.",
            ["stage"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "fraud_score_model_swaps_total",
            "Changes of the served models installed after a registry change.",
            registry=self.registry,
        )
        self.rejected_loads = Counter(
            "fraud_score_model_rejected_loads_total",
            "Registered versions not served because their artifact failed a "
            "check, by the stage they were registered in.",
            ["stage"],
            registry=self.registry,
        )
        self.shadow_scores = Counter(
            "fraud_score_shadow_scores_total",
            "Scores of shadow models by outcome: written, dropped because the "
            "queue was full, failed (inference or write), or skipped because the "
            "model uses another segmentation version than the decider.",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "fraud_score_errors_total",
            "Errors by kind: rejected requests and failed store, model or Kafka "
            "access.",
            ["kind"],
            registry=self.registry,
        )
