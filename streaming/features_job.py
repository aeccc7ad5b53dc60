"""PyFlink job computing per-transaction features in event time.

Topology::

    transactions ─ parse ─ keyBy(customer) ─ CustomerWindows ─────────────┐
                                                 └ with device_id:          │
                                                   keyBy(device) ─ DeviceWindows
                                                                            │
                                                          union, keyBy(terminal)
    labels ─────── parse ─┬─ keyBy(terminal) ──────────────────── TerminalWindows
                          └─ offline store: labels/dt=…                     │
                                                    offline store: features/dt=…

CustomerWindows writes each transaction (to its customer's and its device's
events), and TerminalWindows each label, to Redis as it arrives. Both also
publish the same write to the online-store changelog through a transactional
sink that commits at checkpoints. The loader of :mod:`streaming.online_loader`
applies the committed changelog to PostgreSQL and Redis, so both stores survive
a crash of the job as if it had not happened. Transactions without a device_id
get the device features' default in CustomerWindows and skip DeviceWindows.
Invalid records go to the dead-letter topic, and events too far behind the
watermark to the late-events topic (see docs/streaming.md).

The window operators buffer their input until the watermark passes its event
time and then process it in event-time order, so a transaction's features never
include anything that happened after it, whatever order Kafka delivered it in.
The watermarks come from the Kafka record timestamps, which producers set to the
event time.

Run locally (embedded cluster) with ``python -m streaming.features_job``, which
also runs a loader in a thread; ``--from-checkpoint latest`` resumes from the
newest completed checkpoint.

``flink run --python streaming/features_job.py`` submits the same job to a
Flink cluster (``python -m deploy.flink_cluster`` starts a standalone one). The
client ships the connector jars with the job, and the cluster's Python needs
this repository's packages. A submitted job keeps the cluster's restart
strategy and metric reporters.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from pydantic_settings import SettingsConfigDict
from pyflink.common import Configuration, Duration, Row, Types, WatermarkStrategy
from pyflink.common.serialization import ByteArraySchema, SimpleStringSchema
from pyflink.datastream import (
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
    TimeDomain,
)
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor
from pyflink.table import StatementSet, StreamTableEnvironment

from fraudcore import features
from fraudcore.features import (
    CustomerEvent,
    CustomerEventTuple,
    DeviceEvent,
    DeviceEventTuple,
    TerminalLabel,
    TerminalLabelTuple,
)
from fraudcore.schema import decode_label, decode_transaction
from fraudcore.settings import REPO_ROOT
from fraudcore.timeutil import MS_PER_DAY, format_timestamp_ms, parse_timestamp_ms
from streaming import job_metrics
from streaming.job_metrics import free_port
from streaming.online_loader import LoaderSettings, start_in_thread
from streaming.online_writer import OnlineStoreWriter, encode_change, ensure_schema

log = logging.getLogger(__name__)

LONGEST_WINDOW_MS = max(features.WINDOW_DAYS) * MS_PER_DAY

FEATURE_ROW = Types.ROW_NAMED(
    ["transaction_id", "customer_id", "terminal_id", "event_ms", "device_id"]
    + list(features.MODEL_INPUTS)
    + ["dt"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG(), Types.STRING()]
    + [Types.DOUBLE()] * len(features.MODEL_INPUTS)
    + [Types.STRING()],
)
LABEL_ROW = Types.ROW_NAMED(
    ["transaction_id", "customer_id", "terminal_id", "transaction_ms", "label_ms"]
    + ["fraud", "dt"],
    [Types.STRING()] * 3 + [Types.LONG()] * 2 + [Types.INT(), Types.STRING()],
)


class StreamJobSettings(LoaderSettings):
    """Settings of the feature job, read from ``FRAUD_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore")

    consumer_group: str = "fraud-features"
    checkpoint_dir: Path = REPO_ROOT / ".state" / "checkpoints"
    parallelism: int = 1
    checkpoint_interval_ms: int = 10_000
    # Bound on how far out of order events arrive within one Kafka partition.
    out_of_orderness_ms: int = 5_000
    # A partition that sends nothing for this long no longer holds back watermarks.
    idle_timeout_ms: int = 10_000
    # Events this far behind the watermark still count for the transactions
    # processed after them; events further behind go to the late-events topic.
    allowed_lateness_ms: int = 3_600_000
    # Events buffered before the Redis writer flushes a batch; a partial batch
    # is flushed after writer_flush_ms of processing time.
    writer_batch_size: int = 1_000
    writer_flush_ms: int = 200
    # Address and port of the job's Prometheus endpoint; port 0 serves none.
    # Containers set the address to 0.0.0.0 so that Prometheus can reach it.
    stream_metrics_host: str = "127.0.0.1"
    stream_metrics_port: int = 9250


# --- parsing -----------------------------------------------------------------

DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
LATE_EVENTS = OutputTag("late-events", Types.STRING())
ONLINE_CHANGES = OutputTag("online-changes", Types.STRING())
WITH_DEVICE = OutputTag("with-device", Types.PICKLED_BYTE_ARRAY())


def transaction_fields(raw: bytes) -> dict[str, Any]:
    """Validate one transaction record and return the fields the job uses.

    Raises:
        ValueError: with a one-sentence reason when the record is invalid.
    """
    record = decode_transaction(raw)
    return {
        "transaction_id": record.transaction_id,
        "customer_id": record.customer_id,
        "terminal_id": record.terminal_id,
        "amount": record.amount,
        "event_ms": record.event_ms,
        "device_id": record.device_id,
    }


def label_fields(raw: bytes) -> dict[str, Any]:
    """Validate one label record and return the fields the job uses.

    Raises:
        ValueError: with a one-sentence reason when the record is invalid.
    """
    record = decode_label(raw)
    return {
        "transaction_id": record.transaction_id,
        "customer_id": record.customer_id,
        "terminal_id": record.terminal_id,
        "transaction_ms": parse_timestamp_ms(record.transaction_timestamp),
        "label_ms": record.event_ms,
        "fraud": record.fraud,
    }


def dead_letter(source_topic: str, raw: bytes, reason: str) -> str:
    """Build the dead-letter record of rejected bytes: the reason and the bytes."""
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return orjson.dumps(
        {
            "source_topic": source_topic,
            "reason": reason,
            "original_base64": base64.b64encode(raw).decode("ascii"),
            "original_text": text,
            "rejected_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    ).decode()


class ParseRecords(ProcessFunction):
    """Validates raw records; invalid ones go to the dead-letter side output.

    Args:
        source_topic: topic the records come from, named in dead letters.
        kind: ``"transaction"`` or ``"label"``.
    """

    def __init__(self, source_topic: str, kind: str) -> None:
        self._source_topic = source_topic
        self._parse = transaction_fields if kind == "transaction" else label_fields

    def open(self, runtime_context: RuntimeContext) -> None:
        metrics = runtime_context.get_metrics_group()
        self._rejected = metrics.counter("dead_letter_records")

    def process_element(self, value: bytes, ctx: Any) -> Iterator[Any]:
        try:
            yield self._parse(value)
        except ValueError as exc:
            self._rejected.inc()
            yield DEAD_LETTERS, dead_letter(self._source_topic, value, str(exc))


def late_event(kind: str, fields: dict[str, Any], event_ms: int, watermark: int) -> str:
    """Build the late-events record of an event behind the watermark."""
    return orjson.dumps(
        {
            "kind": kind,
            "reason": f"event time {format_timestamp_ms(event_ms)} is "
            f"{watermark - event_ms} ms behind the watermark "
            f"{format_timestamp_ms(watermark)}",
            "event": fields,
        }
    ).decode()


def day_partition(epoch_ms: int) -> str:
    """Return the UTC day of an event time, the offline store's partition value."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


# --- window operators ----------------------------------------------------------


class _EventTimeBuffer:
    """Per-key buffer of events waiting for the watermark to pass their time."""

    def __init__(self, ctx: RuntimeContext, name: str) -> None:
        descriptor = MapStateDescriptor(name, Types.LONG(), Types.PICKLED_BYTE_ARRAY())
        self._state = ctx.get_map_state(descriptor)

    def add(self, event_ms: int, event: Any) -> None:
        pending = self._state.get(event_ms) or []
        pending.append(event)
        self._state.put(event_ms, pending)

    def pop(self, event_ms: int) -> list[Any]:
        pending = self._state.get(event_ms) or []
        if pending:
            self._state.remove(event_ms)
        return pending


class _OnlineStoreWrites:
    """Writes one operator's events to Redis in batches, and to the changelog.

    A batch is flushed when it is full, or ``writer_flush_ms`` of processing time
    after its first event, whichever comes first. Python operators get no call
    at checkpoints, so a batch still buffered when the job dies is lost from
    Redis. Its changelog records commit with the checkpoint and restore it.
    """

    def __init__(self, settings: StreamJobSettings) -> None:
        self._redis_url = settings.redis_url
        self._prefix = settings.redis_prefix
        self._batch_size = settings.writer_batch_size
        self._flush_ms = settings.writer_flush_ms
        self.writer: OnlineStoreWriter | None = None

    def open(self) -> None:
        self.writer = OnlineStoreWriter(self._redis_url, None, self._prefix)

    def add_customer_event(
        self, ctx: Any, customer_id: str, event: CustomerEvent
    ) -> tuple[OutputTag, str]:
        """Queue the event for Redis; returns its changelog record to yield."""
        assert self.writer is not None, "open() was not called"
        self.writer.add_customer_event(customer_id, event)
        self._added(ctx)
        return ONLINE_CHANGES, encode_change("customer", customer_id, event)

    def add_terminal_label(
        self, ctx: Any, terminal_id: str, label: TerminalLabel
    ) -> tuple[OutputTag, str]:
        """Queue the label for Redis; returns its changelog record to yield."""
        assert self.writer is not None, "open() was not called"
        self.writer.add_terminal_label(terminal_id, label)
        self._added(ctx)
        return ONLINE_CHANGES, encode_change("terminal", terminal_id, label)

    def add_device_event(
        self, ctx: Any, device_id: str, event: DeviceEvent
    ) -> tuple[OutputTag, str]:
        """Queue the device event for Redis; returns its changelog record to yield."""
        assert self.writer is not None, "open() was not called"
        self.writer.add_device_event(device_id, event)
        self._added(ctx)
        return ONLINE_CHANGES, encode_change("device", device_id, event)

    def _added(self, ctx: Any) -> None:
        assert self.writer is not None
        if len(self.writer) >= self._batch_size:
            self.writer.flush()
        elif len(self.writer) == 1:
            now = ctx.timer_service().current_processing_time()
            ctx.timer_service().register_processing_time_timer(now + self._flush_ms)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class CustomerWindows(KeyedProcessFunction):
    """Adds calendar, customer and velocity features to each transaction.

    Keyed by customer. Also writes each transaction to the online store as it
    arrives, so the scorer can read it before the watermark passes. Transactions
    with a device_id leave through the ``WITH_DEVICE`` side output; the others
    get the device features' default here.
    """

    def __init__(self, settings: StreamJobSettings) -> None:
        self._writes = _OnlineStoreWrites(settings)
        self._allowed_lateness_ms = settings.allowed_lateness_ms
        self._zone_name = settings.feature_timezone

    def open(self, runtime_context: RuntimeContext) -> None:
        self._zone = ZoneInfo(self._zone_name)
        self._pending = _EventTimeBuffer(runtime_context, "pending-transactions")
        self._history = runtime_context.get_state(
            ValueStateDescriptor("customer-history", Types.PICKLED_BYTE_ARRAY())
        )
        self._late = runtime_context.get_metrics_group().counter("late_events")
        self._writes.open()

    def close(self) -> None:
        self._writes.close()

    def process_element(self, value: dict[str, Any], ctx: Any) -> Iterator[Any]:
        watermark = ctx.timer_service().current_watermark()
        if watermark - value["event_ms"] > self._allowed_lateness_ms:
            self._late.inc()
            yield (
                LATE_EVENTS,
                late_event("transaction", value, value["event_ms"], watermark),
            )
            return
        self._pending.add(value["event_ms"], value)
        ctx.timer_service().register_event_time_timer(value["event_ms"])
        event = CustomerEvent(
            value["event_ms"],
            value["transaction_id"],
            value["amount"],
            value["terminal_id"],
        )
        yield self._writes.add_customer_event(ctx, value["customer_id"], event)
        if value["device_id"] is not None:
            device_event = DeviceEvent(
                value["event_ms"], value["transaction_id"], value["customer_id"]
            )
            yield self._writes.add_device_event(ctx, value["device_id"], device_event)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self._writes.flush()
            return
        history: list[CustomerEventTuple] = self._history.value() or []
        # Transactions of the same millisecond count for each other, so all of
        # them join the history before any one's features are computed.
        instant = self._pending.pop(timestamp)
        history += [
            (tx["event_ms"], tx["transaction_id"], tx["amount"], tx["terminal_id"])
            for tx in instant
        ]
        for tx in instant:
            ms, transaction_id, amount, terminal_id = (
                tx["event_ms"],
                tx["transaction_id"],
                tx["amount"],
                tx["terminal_id"],
            )
            tx |= features.calendar_features(ms, self._zone)
            tx |= features.customer_features(ms, transaction_id, amount, history)
            tx |= features.velocity_features(
                ms, transaction_id, amount, terminal_id, history
            )
            if tx["device_id"] is None:
                tx |= features.device_features(
                    ms, transaction_id, tx["customer_id"], None, ()
                )
                yield tx
            else:
                yield WITH_DEVICE, tx
        # Late events up to the allowed lateness still need their whole window.
        start = timestamp - LONGEST_WINDOW_MS - self._allowed_lateness_ms
        self._history.update([event for event in history if event[0] > start])


class DeviceWindows(KeyedProcessFunction):
    """Adds the device features to each transaction with a device_id, keyed by device.

    CustomerWindows has written the device's events to the online store already.
    """

    def __init__(self, settings: StreamJobSettings) -> None:
        self._allowed_lateness_ms = settings.allowed_lateness_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        self._pending = _EventTimeBuffer(runtime_context, "pending-transactions")
        self._history = runtime_context.get_state(
            ValueStateDescriptor("device-history", Types.PICKLED_BYTE_ARRAY())
        )

    def process_element(self, value: dict[str, Any], ctx: Any) -> None:
        # Transactions passed the lateness check upstream and are never dropped here.
        self._pending.add(value["event_ms"], value)
        ctx.timer_service().register_event_time_timer(value["event_ms"])

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[dict[str, Any]]:
        history: list[DeviceEventTuple] = self._history.value() or []
        instant = self._pending.pop(timestamp)
        history += [
            (tx["event_ms"], tx["transaction_id"], tx["customer_id"]) for tx in instant
        ]
        for tx in instant:
            tx |= features.device_features(
                tx["event_ms"],
                tx["transaction_id"],
                tx["customer_id"],
                tx["device_id"],
                history,
            )
            yield tx
        start = timestamp - features.DEVICE_LOOKBACK_MS - self._allowed_lateness_ms
        self._history.update([event for event in history if event[0] > start])


class TerminalWindows(KeyedCoProcessFunction):
    """Adds the terminal features to each transaction, keyed by terminal.

    Input 1 carries transactions with their customer features, input 2 the labels;
    labels are also written to the online store as they arrive.
    """

    def __init__(self, settings: StreamJobSettings) -> None:
        self._writes = _OnlineStoreWrites(settings)
        self._allowed_lateness_ms = settings.allowed_lateness_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        self._pending_tx = _EventTimeBuffer(runtime_context, "pending-transactions")
        self._pending_labels = _EventTimeBuffer(runtime_context, "pending-labels")
        self._known = runtime_context.get_state(
            ValueStateDescriptor("terminal-labels", Types.PICKLED_BYTE_ARRAY())
        )
        self._late = runtime_context.get_metrics_group().counter("late_events")
        self._writes.open()

    def close(self) -> None:
        self._writes.close()

    def process_element1(self, value: dict[str, Any], ctx: Any) -> None:
        # Transactions passed the lateness check upstream and are never dropped here.
        self._pending_tx.add(value["event_ms"], value)
        ctx.timer_service().register_event_time_timer(value["event_ms"])

    def process_element2(self, value: dict[str, Any], ctx: Any) -> Iterator[Any]:
        watermark = ctx.timer_service().current_watermark()
        if watermark - value["label_ms"] > self._allowed_lateness_ms:
            self._late.inc()
            yield LATE_EVENTS, late_event("label", value, value["label_ms"], watermark)
            return
        label = (value["label_ms"], value["transaction_id"], value["fraud"])
        self._pending_labels.add(value["label_ms"], label)
        ctx.timer_service().register_event_time_timer(value["label_ms"])
        yield self._writes.add_terminal_label(
            ctx, value["terminal_id"], TerminalLabel(*label)
        )

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Row]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self._writes.flush()
            return
        # A label known at t counts for a transaction at t, so labels go first.
        known: list[TerminalLabelTuple] = self._known.value() or []
        known.extend(self._pending_labels.pop(timestamp))
        for tx in self._pending_tx.pop(timestamp):
            tx |= features.terminal_features(tx["event_ms"], known)
            tx["TX_AMOUNT"] = tx["amount"]
            yield _feature_row(tx)
        start = timestamp - LONGEST_WINDOW_MS - self._allowed_lateness_ms
        self._known.update([label for label in known if label[0] > start])


def _feature_row(tx: dict[str, Any]) -> Row:
    return Row(
        tx["transaction_id"],
        tx["customer_id"],
        tx["terminal_id"],
        tx["event_ms"],
        tx["device_id"],
        *(float(tx[name]) for name in features.MODEL_INPUTS),
        day_partition(tx["event_ms"]),
    )


def _label_row(label: dict[str, Any]) -> Row:
    return Row(
        label["transaction_id"],
        label["customer_id"],
        label["terminal_id"],
        label["transaction_ms"],
        label["label_ms"],
        label["fraud"],
        day_partition(label["label_ms"]),
    )


# --- wiring ----------------------------------------------------------------------


def _kafka_source(
    settings: StreamJobSettings, topic: str, bounded: bool
) -> KafkaSource:
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap)
        .set_topics(topic)
        .set_group_id(settings.consumer_group)
        .set_starting_offsets(KafkaOffsetsInitializer.earliest())
        .set_value_only_deserializer(ByteArraySchema())
        .set_property("isolation.level", "read_committed")
    )
    if bounded:
        builder = builder.set_bounded(KafkaOffsetsInitializer.latest())
    return builder.build()


# Below the broker's transaction.max.timeout.ms (15 minutes by default), and
# far above a checkpoint interval: a transaction stays open from one checkpoint
# to the next.
TRANSACTION_TIMEOUT_MS = 600_000


def _kafka_sink(settings: StreamJobSettings, topic: str) -> KafkaSink:
    """Build an at-least-once sink for reports.

    A dead letter or late event repeated after a restart repeats a report and
    changes no feature.
    """
    return (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap)
        .set_record_serializer(_string_serializer(topic))
        .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
        .build()
    )


def _changelog_sink(settings: StreamJobSettings) -> KafkaSink:
    """Build the transactional sink of online-store changes."""
    return (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap)
        .set_record_serializer(_string_serializer(settings.online_changelog_topic))
        .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
        .set_transactional_id_prefix(f"{settings.consumer_group}-online-changelog")
        .set_property("transaction.timeout.ms", str(TRANSACTION_TIMEOUT_MS))
        .build()
    )


def _string_serializer(topic: str) -> KafkaRecordSerializationSchema:
    return (
        KafkaRecordSerializationSchema.builder()
        .set_topic(topic)
        .set_value_serialization_schema(SimpleStringSchema())
        .build()
    )


def _watermarks(settings: StreamJobSettings) -> WatermarkStrategy:
    # No timestamp assigner: the Kafka record timestamps (set to the event time by
    # producers) drive the watermarks, per partition, without a Python call.
    # NOTE: idleness is measured in processing time. A reader that stalls longer
    # than the timeout on a starved machine counts as idle, and in a replay,
    # where labels run 7 days ahead, the watermark then jumps past the
    # transactions behind it, which go to the late-events topic. Replays on a
    # loaded machine need a timeout far above any stall until the two sources
    # are aligned (Flink watermark alignment).
    return WatermarkStrategy.for_bounded_out_of_orderness(
        Duration.of_millis(settings.out_of_orderness_ms)
    ).with_idleness(Duration.of_millis(settings.idle_timeout_ms))


def build_pipeline(
    env: StreamExecutionEnvironment, settings: StreamJobSettings, bounded: bool
) -> StatementSet:
    """Add the job's operators and sinks to ``env``.

    Returns:
        The statement set of the offline-store sinks, to attach before executing.
    """
    strategy = _watermarks(settings)
    transactions = (
        env.from_source(
            _kafka_source(settings, settings.transactions_topic, bounded),
            strategy,
            "transactions",
        )
        .process(
            ParseRecords(settings.transactions_topic, "transaction"),
            output_type=Types.PICKLED_BYTE_ARRAY(),
        )
        .name("parse transactions")
    )
    labels = (
        env.from_source(
            _kafka_source(settings, settings.labels_topic, bounded), strategy, "labels"
        )
        .process(
            ParseRecords(settings.labels_topic, "label"),
            output_type=Types.PICKLED_BYTE_ARRAY(),
        )
        .name("parse labels")
    )
    transactions.get_side_output(DEAD_LETTERS).union(
        labels.get_side_output(DEAD_LETTERS)
    ).sink_to(_kafka_sink(settings, settings.dead_letter_topic)).name("dead letters")

    with_customer = (
        transactions.key_by(lambda tx: tx["customer_id"])
        .process(CustomerWindows(settings), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("customer windows")
    )
    with_device = (
        with_customer.get_side_output(WITH_DEVICE)
        .key_by(lambda tx: tx["device_id"])
        .process(DeviceWindows(settings), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("device windows")
    )
    feature_rows = (
        with_customer.union(with_device)
        .key_by(lambda tx: tx["terminal_id"])
        .connect(labels.key_by(lambda label: label["terminal_id"]))
        .process(TerminalWindows(settings), output_type=FEATURE_ROW)
        .name("terminal windows")
    )
    label_rows = labels.map(_label_row, output_type=LABEL_ROW)
    with_customer.get_side_output(LATE_EVENTS).union(
        feature_rows.get_side_output(LATE_EVENTS)
    ).sink_to(_kafka_sink(settings, settings.late_events_topic)).name("late events")
    with_customer.get_side_output(ONLINE_CHANGES).union(
        feature_rows.get_side_output(ONLINE_CHANGES)
    ).sink_to(_changelog_sink(settings)).name("online changelog")

    table_env = StreamTableEnvironment.create(env)
    statements = table_env.create_statement_set()
    for name, row_type, stream in (
        ("features", FEATURE_ROW, feature_rows),
        ("labels", LABEL_ROW, label_rows),
    ):
        sql = _offline_sink_sql(table_env, settings, name, row_type, stream)
        statements.add_insert_sql(sql)
    return statements


_SQL_TYPES = {"STRING": "STRING", "LONG": "BIGINT", "DOUBLE": "DOUBLE", "INT": "INT"}


def _offline_sink_sql(
    table_env: StreamTableEnvironment,
    settings: StreamJobSettings,
    name: str,
    row_type: Any,
    stream: Any,
) -> str:
    """Create the Parquet table ``name`` partitioned by day; return its INSERT."""
    columns = ", ".join(
        f"`{field}` {_sql_type(kind)}"
        for field, kind in zip(
            row_type.get_field_names(), row_type.get_field_types(), strict=True
        )
    )
    path = (settings.offline_store / name).resolve().as_uri()
    table_env.execute_sql(
        f"CREATE TABLE offline_{name} ({columns}) PARTITIONED BY (dt) WITH ("
        "'connector' = 'filesystem', 'format' = 'parquet', "
        f"'path' = '{path}', 'sink.partition-commit.policy.kind' = 'success-file')"
    )
    table_env.create_temporary_view(
        f"{name}_stream", table_env.from_data_stream(stream)
    )
    return f"INSERT INTO offline_{name} SELECT * FROM {name}_stream"


def _sql_type(type_info: Any) -> str:
    text = str(type_info).upper()
    for java_name, sql_name in _SQL_TYPES.items():
        if java_name in text:
            return sql_name
    raise ValueError(f"no SQL type for {type_info}")


def make_environment(
    settings: StreamJobSettings,
    restore_from: Path | None = None,
    rest_port: int | None = None,
) -> StreamExecutionEnvironment:
    """Create the execution environment with the connector jars and Python settings.

    Args:
        settings: the job's settings.
        restore_from: a completed checkpoint to resume from, or None.
        rest_port: port of the Flink REST API on 127.0.0.1, or None for Flink's
            default.
    """
    from deploy.stack import flink_jars

    # Thread mode runs the Python operators inside the JVM, 3-4x faster than
    # process mode, but then imports come from PYTHONPATH only.
    site_packages = sysconfig.get_paths()["purelib"]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), site_packages, os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    config = Configuration()
    config.set_string(
        "pipeline.jars", ";".join(p.as_uri() for p in flink_jars(settings))
    )
    config.set_string("python.executable", sys.executable)
    config.set_string("python.execution-mode", "thread")
    config.set_string(
        "execution.checkpointing.interval", f"{settings.checkpoint_interval_ms}ms"
    )
    config.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
    # The default in-memory checkpoint storage caps state at 5 MiB.
    config.set_string("execution.checkpointing.storage", "filesystem")
    config.set_string(
        "execution.checkpointing.dir", settings.checkpoint_dir.resolve().as_uri()
    )
    # A cancelled job can then resume too, not only a crashed one.
    config.set_string(
        "execution.checkpointing.externalized-checkpoint-retention",
        "RETAIN_ON_CANCELLATION",
    )
    if restore_from is not None:
        config.set_string("execution.state-recovery.path", restore_from.as_uri())
    if not submitted_to_cluster():
        # The embedded cluster dies with this process, so the supervisor that
        # restarts it resumes the job with --from-checkpoint latest. A cluster
        # keeps its own restart strategy and REST address.
        config.set_string("restart-strategy.type", "none")
        config.set_string("rest.bind-address", "127.0.0.1")
        config.set_string("rest.address", "127.0.0.1")
    if rest_port is not None:
        config.set_string("rest.port", str(rest_port))
        # The REST API caches metrics this long, and the default is 10 s.
        config.set_string("metrics.fetcher.update-interval", "1000")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(settings.parallelism)
    return env


def latest_checkpoint(checkpoint_dir: Path) -> Path:
    """Return the newest completed checkpoint under ``checkpoint_dir``.

    Checkpoints live in ``<job id>/chk-<n>``; a completed one contains ``_metadata``.

    Raises:
        FileNotFoundError: if there is none.
    """
    completed = list(checkpoint_dir.glob("*/chk-*/_metadata"))
    if not completed:
        raise FileNotFoundError(f"no completed checkpoint under {checkpoint_dir}")
    return max(completed, key=lambda path: path.stat().st_mtime).parent


def run(
    settings: StreamJobSettings,
    bounded: bool,
    restore_from: Path | None = None,
    with_loader: bool = True,
) -> None:
    """Build and run the job; with ``bounded`` it stops at the topics' current end.

    Args:
        settings: the job's settings.
        bounded: stop after the records present at start-up.
        restore_from: a completed checkpoint to resume from, or None.
        with_loader: run an online loader in a thread of this process. In a
            bounded run it applies every committed change before this returns.

    Raises:
        RuntimeError: if the loader stopped on an error.
    """
    ensure_schema(settings.pg_dsn)
    loader, thread = start_in_thread(settings) if with_loader else (None, None)
    rest_port = None
    if submitted_to_cluster():
        log.info("submitted to a Flink cluster, whose reporters export its metrics")
    elif settings.stream_metrics_port:
        rest_port = free_port()
    env = make_environment(settings, restore_from, rest_port)
    build_pipeline(env, settings, bounded).attach_as_datastream()
    job = env.execute_async("fraud-features")
    metrics_server = None
    if rest_port is not None:
        metrics_server = _serve_metrics(settings, rest_port, str(job.get_job_id()))
    try:
        job.get_job_execution_result().result()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
    if loader is None or thread is None:
        return
    loader.drain()
    thread.join()
    if loader.error is not None:
        raise RuntimeError("the online loader stopped") from loader.error


def submitted_to_cluster() -> bool:
    """Return whether ``flink run`` started this process to submit the job.

    The Flink client then runs this script with the gateway's port in the
    environment, and the job goes to that client's cluster.
    """
    return "PYFLINK_GATEWAY_PORT" in os.environ


def _serve_metrics(settings: StreamJobSettings, rest_port: int, job_id: str) -> Any:
    try:
        return job_metrics.serve(
            settings.stream_metrics_port,
            f"http://127.0.0.1:{rest_port}",
            job_id,
            host=settings.stream_metrics_host,
        )
    except OSError as exc:
        # The job is worth more than its metrics, so it runs on without them.
        log.error(
            "serving the job's metrics on %s:%d failed: %s; set "
            "FRAUD_STREAM_METRICS_PORT to a free port, or to 0 to serve none",
            settings.stream_metrics_host,
            settings.stream_metrics_port,
            exc,
        )
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the job from the command line."""
    parser = argparse.ArgumentParser(prog="python -m streaming.features_job")
    parser.add_argument(
        "--bounded",
        action="store_true",
        help="stop after the records present in the topics at start-up",
    )
    parser.add_argument(
        "--from-checkpoint",
        metavar="PATH",
        help="resume from this completed checkpoint, or 'latest' for the newest "
        "one under FRAUD_CHECKPOINT_DIR",
    )
    parser.add_argument(
        "--no-loader",
        action="store_true",
        help="do not run an online loader in this process",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # NOTE: the Kafka connector never ends a bounded source restored from a
    # checkpoint (FLINK-31006), so a resumed job runs unbounded until that is
    # fixed in the connector version of deploy/local/flink-pom.xml.
    if args.bounded and args.from_checkpoint is not None:
        parser.exit(
            2,
            "error: --bounded cannot be combined with --from-checkpoint, because a "
            "restored bounded Kafka source never finishes; resume without --bounded\n",
        )
    settings = StreamJobSettings()
    restore_from = None
    if args.from_checkpoint == "latest":
        try:
            restore_from = latest_checkpoint(settings.checkpoint_dir)
        except FileNotFoundError as exc:
            parser.exit(2, f"error: {exc}\n")
    elif args.from_checkpoint is not None:
        restore_from = Path(args.from_checkpoint)
        if not (restore_from / "_metadata").is_file():
            parser.exit(2, f"error: {restore_from} is not a completed checkpoint\n")
    if restore_from is not None:
        log.info("resuming from checkpoint %s", restore_from)
    run(settings, args.bounded, restore_from, with_loader=not args.no_loader)
    return 0


if __name__ == "__main__":
    sys.exit(main())
