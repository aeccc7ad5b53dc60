"""Prometheus metrics of the scoring service, kept in a registry per app instance."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

# Most requests finish in a few milliseconds, so the buckets are fine below 20 ms
# and coarse above it, where only outages and fallbacks land.
LATENCY_BUCKETS_SECONDS = (
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005,
    0.006, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02,
    0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


@dataclass
class ScorerMetrics:
    """The scorer's metrics and the registry that ``GET /metrics`` exposes."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.request_duration = Histogram(
            "fraud_score_request_duration_seconds",
            "Time to handle one POST /score request, including rejected ones.",
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
        self.errors = Counter(
            "fraud_score_errors_total",
            "Errors by kind: rejected requests and failed store or model access.",
            ["kind"],
            registry=self.registry,
        )
