"""Kafka events of the scorer: scored transactions, decisions and labels.

``produce`` only appends to librdkafka's queue, so no request waits for the
broker. A background thread serves delivery reports. Messages never time out
(``message.timeout.ms=0``), so while the broker is unreachable they wait in the
queue and are delivered once it is back. The queue is bounded by
``kafka_buffer_messages`` messages. A message that does not fit is dropped,
counted in ``fraud_score_events_total{outcome="dropped"}`` and logged, at most
once per interval. Idempotent production keeps retries from writing a message
twice.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from fraudcore.schema import LabelRecord, TransactionRecord, encode
from services.scorer.logs import ThrottledWarning
from services.scorer.metrics import ScorerMetrics
from services.scorer.settings import ScorerSettings

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1
# librdkafka's default backoff grows to 10 s; a shorter cap reconnects to a
# restarted broker within about a second.
RECONNECT_BACKOFF_MAX_MS = 1000


class LibrdkafkaLog:
    """Passes librdkafka's log lines to Python logging, throttled.

    librdkafka logs every failed connection attempt, which during an outage is
    one line per broker per reconnect.
    """

    def __init__(self) -> None:
        self._warning = ThrottledWarning(logging.getLogger("services.scorer.kafka"))

    def log(self, level: int, message: str, *args: object) -> None:
        """Log one librdkafka line; ``level`` is a Python logging level."""
        if level >= logging.WARNING:
            self._warning.warn("kafka: " + message, *args)
        else:
            logger.debug("kafka: " + message, *args)


class EventPublisher:
    """Produces the scorer's records to Kafka without blocking the caller."""

    def __init__(self, settings: ScorerSettings, metrics: ScorerMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._dropped_warning = ThrottledWarning(logger)
        self._failed_warning = ThrottledWarning(logger)
        self._error_warning = ThrottledWarning(logger)
        self._producer = Producer(self._config(settings))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._poll_loop, name="kafka-poll", daemon=True
        )

    def _config(self, settings: ScorerSettings) -> dict[str, Any]:
        return {
            "bootstrap.servers": settings.kafka_bootstrap,
            "client.id": "fraud-scorer",
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 0,
            "queue.buffering.max.messages": settings.kafka_buffer_messages,
            "linger.ms": 5,
            # A Python callback per delivered message costs a GIL hand-off to
            # the poll thread; the backlog gauge already shows delivery.
            "delivery.report.only.error": True,
            # Set once here rather than in each produce() call, which would
            # build a bound method per message.
            "on_delivery": self._on_delivery,
            "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
            "error_cb": self._on_error,
            "logger": LibrdkafkaLog(),
        }

    def start(self) -> None:
        """Start the thread that serves delivery reports."""
        self._thread.start()

    def publish_transaction(self, record: TransactionRecord) -> None:
        """Queue a scored transaction, keyed by customer, at its event time."""
        self._produce(
            self._settings.transactions_topic,
            encode(record),
            record.customer_id,
            record.event_ms,
        )

    def publish_decision(
        self, transaction_id: str, payload: bytes, decided_ms: int
    ) -> None:
        """Queue a decision record, keyed by transaction, at its decision time."""
        self._produce(
            self._settings.decisions_topic, payload, transaction_id, decided_ms
        )

    def publish_label(self, label: LabelRecord) -> None:
        """Queue a label, keyed by terminal, at the time it became known."""
        self._produce(
            self._settings.labels_topic,
            encode(label),
            label.terminal_id,
            label.event_ms,
        )

    def backlog(self) -> int:
        """Return the messages queued or in flight, not yet delivered."""
        return len(self._producer)

    def close(self) -> int:
        """Wait up to ``flush_timeout_seconds`` for the backlog, then stop.

        Returns:
            The number of messages still undelivered, which are lost.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        remaining = self._producer.flush(self._settings.flush_timeout_seconds)
        self._metrics.kafka_backlog.set(remaining)
        if remaining:
            logger.error(
                "%d Kafka messages were not delivered within %.1f s of shutdown "
                "and are lost",
                remaining,
                self._settings.flush_timeout_seconds,
            )
        return int(remaining)

    def _produce(self, topic: str, value: bytes, key: str, timestamp_ms: int) -> None:
        try:
            self._producer.produce(
                topic,
                value,
                key=key.encode(),
                timestamp=timestamp_ms,
            )
        except BufferError:
            self._metrics.child(self._metrics.events, topic, "dropped").inc()
            self._metrics.errors.labels(kind="kafka_buffer_full").inc()
            self._dropped_warning.warn(
                "kafka buffer full (%d messages); dropped a message to %s",
                self._settings.kafka_buffer_messages,
                topic,
            )
            return
        self._metrics.child(self._metrics.events, topic, "queued").inc()

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        # Called for failed deliveries only (delivery.report.only.error).
        topic = message.topic() or "unknown"
        if error is None:
            return
        self._metrics.child(self._metrics.events, topic, "failed").inc()
        self._metrics.errors.labels(kind="kafka_delivery").inc()
        self._failed_warning.warn("kafka delivery to %s failed: %s", topic, error)

    def _on_error(self, error: KafkaError) -> None:
        self._error_warning.warn("kafka client error: %s", error)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(POLL_SECONDS)
            self._metrics.kafka_backlog.set(len(self._producer))
