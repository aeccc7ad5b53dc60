"""PyFlink job computing per-transaction features in event time.

Topology::

    transactions ─┐                 ┌─ Redis, as each event arrives
                  ├─ parse records ─┼─ dead letters, late events
    labels ───────┘    (Python)     ├─ online-store changelog (SQL, transactional)
                                    ├─ offline labels/dt=…
                                    └─ SQL windows by customer, device and
                                       terminal ─ offline features/dt=…

``parse records`` validates each record of both topics, sends invalid ones to
the dead-letter topic and events at or behind the watermark to the late-events
topic. It writes every other event to Redis in batches, so that the scorer can
read it at once, and passes it on as a typed row. The windows are Flink SQL
``OVER`` aggregations with Java aggregate functions
(:mod:`streaming.feature_sql`), which emit a transaction's offline row once the
watermark passes its event time. The changelog of online-store writes goes to
Kafka through a transactional sink that commits at checkpoints, and the loader of
:mod:`streaming.online_loader` applies it to PostgreSQL and Redis, so both
stores survive a crash of the job as if it had not happened (see
docs/streaming.md).

The watermarks come from the Kafka record timestamps, which producers set to the
event time, and trail them by the out-of-orderness bound plus the allowed
lateness. Every event within that bound is therefore processed in event-time
order, and a transaction's features never include anything after it, whatever
order Kafka delivered it in.

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
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from pydantic_settings import SettingsConfigDict
from pyflink.common import Configuration, Duration, Row, Types, WatermarkStrategy
from pyflink.common.serialization import ByteArraySchema, SimpleStringSchema
from pyflink.datastream import (
    CoProcessFunction,
    DataStream,
    OutputTag,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)
from pyflink.table import Schema, StatementSet, StreamTableEnvironment
from pyflink.util.java_utils import load_java_class

from fraudcore import features
from fraudcore.features import CustomerEvent, DeviceEvent, TerminalLabel
from fraudcore.schema import LabelRecord, decode_label, decode_transaction
from fraudcore.settings import REPO_ROOT
from fraudcore.timeutil import format_timestamp_ms, parse_timestamp_ms
from streaming import feature_sql, job_metrics
from streaming.job_metrics import free_port
from streaming.online_loader import LoaderSettings, start_in_thread
from streaming.online_writer import OnlineStoreWriter, changelog_query, ensure_schema

log = logging.getLogger(__name__)

# Rows the parser hands to SQL, in the columns that streaming.feature_sql reads.
TRANSACTION_FIELDS = Types.ROW_NAMED(
    list(feature_sql.TRANSACTION_COLUMNS),
    [Types.STRING()] * 4
    + [Types.DOUBLE(), Types.LONG()]
    + [Types.DOUBLE()] * len(features.CALENDAR_FEATURES),
)
LABEL_FIELDS = Types.ROW_NAMED(
    list(feature_sql.LABEL_COLUMNS),
    [Types.STRING()] * 3 + [Types.LONG()] * 2 + [Types.INT()],
)


class StreamJobSettings(LoaderSettings):
    """Settings of the feature job, read from ``FRAUD_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore")

    consumer_group: str = "fraud-features"
    checkpoint_dir: Path = REPO_ROOT / ".state" / "checkpoints"
    # NOTE: above 1, a parsing subtask whose partitions all fall silent keeps
    # the watermark of every window at its last value until they send again,
    # because the windows ignore idleness (see _never_idle). This stays until
    # the windows can follow idle subtasks without dropping rows as late.
    parallelism: int = 1
    checkpoint_interval_ms: int = 10_000
    # Bound on how far out of order events arrive within one Kafka partition.
    out_of_orderness_ms: int = 5_000
    # A partition that sends nothing for this long no longer holds back watermarks.
    idle_timeout_ms: int = 10_000
    # How much further behind the newest event an event may be and still count
    # for every transaction after it. The watermark trails by this much on top
    # of the out-of-orderness, so offline rows are written that much later.
    allowed_lateness_ms: int = 3_600_000
    # Events buffered before the Redis writer flushes a batch; a partial batch
    # is flushed after at most writer_flush_ms of processing time.
    writer_batch_size: int = 1_000
    writer_flush_ms: int = 200
    # Address and port of the job's Prometheus endpoint; port 0 serves none.
    # Containers set the address to 0.0.0.0 so that Prometheus can reach it.
    stream_metrics_host: str = "127.0.0.1"
    stream_metrics_port: int = 9250


# --- parsing -----------------------------------------------------------------

DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
LATE_EVENTS = OutputTag("late-events", Types.STRING())
LABEL_ROWS = OutputTag("label-rows", LABEL_FIELDS)


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


def late_event(kind: str, fields: dict[str, Any], event_ms: int, watermark: int) -> str:
    """Build the late-events record of an event at or behind the watermark."""
    return orjson.dumps(
        {
            "kind": kind,
            "reason": f"event time {format_timestamp_ms(event_ms)} is "
            f"{watermark - event_ms} ms behind the watermark "
            f"{format_timestamp_ms(watermark)}, which trails the newest events "
            "by the out-of-orderness bound plus the allowed lateness",
            "event": fields,
        }
    ).decode()


class _OnlineStoreWrites:
    """Writes an operator's events to Redis in batches, from a thread of its own.

    The operator only queues events. The thread writes a batch as soon as it is
    full and a partial one every ``writer_flush_ms``, so the operator goes on
    parsing while Redis replies, and no timer is needed (a non-keyed operator
    cannot register one). The operator waits when ``MAX_QUEUED_BATCHES`` are
    queued, which passes Redis's pace back to the sources.

    Python operators get no call at checkpoints, so events still queued when
    the job dies are lost from Redis. The changelog, which commits with the
    checkpoints, restores them through the loader.
    """

    MAX_QUEUED_BATCHES = 4

    def __init__(self, settings: StreamJobSettings) -> None:
        self._redis_url = settings.redis_url
        self._prefix = settings.redis_prefix
        self._batch_size = settings.writer_batch_size
        self._flush_seconds = settings.writer_flush_ms / 1000
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def open(self, name: str) -> None:
        # Created here rather than in __init__, because the function is
        # pickled to reach the task, and locks cannot be.
        self._changed = threading.Condition(threading.Lock())
        self._closing = False
        # Two writers: the operator fills one while the thread writes the other.
        self._writers = [
            OnlineStoreWriter(self._redis_url, None, self._prefix) for _ in range(2)
        ]
        self._queued, self._spare = self._writers
        self._thread = threading.Thread(
            target=self._write_batches, name=f"{name} redis writer", daemon=True
        )
        self._thread.start()

    def add_customer_event(self, customer_id: str, event: CustomerEvent) -> None:
        with self._changed:
            self._wait_for_room()
            self._queued.add_customer_event(customer_id, event)
            self._added()

    def add_device_event(self, device_id: str, event: DeviceEvent) -> None:
        with self._changed:
            self._wait_for_room()
            self._queued.add_device_event(device_id, event)
            self._added()

    def add_terminal_label(self, terminal_id: str, label: TerminalLabel) -> None:
        with self._changed:
            self._wait_for_room()
            self._queued.add_terminal_label(terminal_id, label)
            self._added()

    def close(self) -> None:
        """Write what is queued, stop the thread and release the connections."""
        if self._thread is None:
            return
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        # The thread wrote the last batch before it ended, unless it failed.
        for writer in self._writers:
            writer.discard()
        self._raise_failure()

    def _wait_for_room(self) -> None:
        limit = self.MAX_QUEUED_BATCHES * self._batch_size
        while len(self._queued) >= limit and self._error is None:
            self._changed.wait()
        self._raise_failure()

    def _added(self) -> None:
        if len(self._queued) >= self._batch_size:
            self._changed.notify_all()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise RuntimeError("writing a batch to Redis failed") from self._error

    def _write_batches(self) -> None:
        while True:
            with self._changed:
                if not self._closing and len(self._queued) < self._batch_size:
                    self._changed.wait(self._flush_seconds)
                batch, self._queued = self._queued, self._spare
                closing = self._closing
                self._changed.notify_all()
            try:
                batch.flush()
            except Exception as exc:
                # The operator raises it at its next event, which fails the job.
                log.error("writing a batch to Redis failed: %s", exc)
                with self._changed:
                    self._error = exc
                    self._changed.notify_all()
                return
            self._spare = batch
            if closing:
                return


class ParseRecords(CoProcessFunction):
    """Validates raw transactions (input 1) and labels (input 2).

    Invalid records go to the dead-letter side output and events at or behind
    the watermark to the late-events side output. Every other event is written
    to the online store and goes on as a typed row: transactions as the main
    output (:data:`TRANSACTION_FIELDS`), labels to the :data:`LABEL_ROWS` side
    output.

    The ``OVER`` windows downstream drop rows at or behind their watermark
    without a trace, so this check decides which events count, and the others
    reach no store. Both topics meet in this one operator, whose watermark is
    the lower of the two. Labels run ahead of the transactions in a replay, so
    a label partition that goes idle and lets the labels' own watermark jump
    ahead does not make the rest of its labels late.

    Args:
        settings: the job's settings.
    """

    def __init__(self, settings: StreamJobSettings) -> None:
        self._settings = settings
        self._writes = _OnlineStoreWrites(settings)

    def open(self, runtime_context: RuntimeContext) -> None:
        metrics = runtime_context.get_metrics_group()
        self._rejected = metrics.counter("dead_letter_records")
        self._late = metrics.counter("late_events")
        self._zone = ZoneInfo(self._settings.feature_timezone)
        self._writes.open("parse records")

    def close(self) -> None:
        self._writes.close()

    def process_element1(self, value: bytes, ctx: Any) -> Iterator[Any]:
        topic = self._settings.transactions_topic
        record, report = self._check(value, ctx, decode_transaction, topic)
        if report is not None:
            yield report
            return
        event_ms = record.event_ms
        transaction_id, customer_id = record.transaction_id, record.customer_id
        self._writes.add_customer_event(
            customer_id,
            CustomerEvent(event_ms, transaction_id, record.amount, record.terminal_id),
        )
        if record.device_id is not None:
            self._writes.add_device_event(
                record.device_id, DeviceEvent(event_ms, transaction_id, customer_id)
            )
        # The calendar features need the zone, which SQL would read from the
        # JVM's time zone data rather than the shared definition's.
        calendar = features.calendar_features(event_ms, self._zone)
        yield Row(
            transaction_id,
            customer_id,
            record.terminal_id,
            record.device_id,
            record.amount,
            event_ms,
            *(calendar[name] for name in features.CALENDAR_FEATURES),
        )

    def process_element2(self, value: bytes, ctx: Any) -> Iterator[Any]:
        topic = self._settings.labels_topic
        record, report = self._check(value, ctx, decode_label, topic)
        if report is not None:
            yield report
            return
        label_ms = record.event_ms
        self._writes.add_terminal_label(
            record.terminal_id,
            TerminalLabel(label_ms, record.transaction_id, record.fraud),
        )
        row = Row(
            record.transaction_id,
            record.customer_id,
            record.terminal_id,
            parse_timestamp_ms(record.transaction_timestamp),
            label_ms,
            record.fraud,
        )
        yield LABEL_ROWS, row

    def _check(
        self, value: bytes, ctx: Any, decode: Callable[[bytes], Any], topic: str
    ) -> tuple[Any, tuple[OutputTag, str] | None]:
        """Decode a record of ``topic``; returns it, or the report to emit instead.

        The report is a dead letter when the record is invalid, and a late event
        when its time is at or behind the watermark.
        """
        try:
            record = decode(value)
        except ValueError as exc:
            self._rejected.inc()
            return None, (DEAD_LETTERS, dead_letter(topic, value, str(exc)))
        event_ms = record.event_ms
        watermark = ctx.timer_service().current_watermark()
        if event_ms > watermark:
            return record, None
        self._late.inc()
        kind = "label" if isinstance(record, LabelRecord) else "transaction"
        fields = record.model_dump(exclude_none=True)
        return None, (LATE_EVENTS, late_event(kind, fields, event_ms, watermark))


# Java class of the operator that drops the idle status (streaming/java).
NEVER_IDLE = "org.fraudplatform.streaming.NeverIdle"


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
    # NOTE: idleness is measured in processing time. A partition whose reader
    # stalls longer than the timeout on a starved machine counts as idle, the
    # watermark jumps to the other partitions, and the stalled partition's
    # events behind it go to the late-events topic. Replays on a loaded machine
    # need a timeout far above any stall. Flink's watermark alignment would
    # bound the gap, but with the Kafka connector of deploy/local/flink-pom.xml
    # a bounded run failed once a partition finished ("No current assignment
    # for partition").
    bound_ms = settings.out_of_orderness_ms + settings.allowed_lateness_ms
    return WatermarkStrategy.for_bounded_out_of_orderness(
        Duration.of_millis(bound_ms)
    ).with_idleness(Duration.of_millis(settings.idle_timeout_ms))


def build_pipeline(
    env: StreamExecutionEnvironment, settings: StreamJobSettings, bounded: bool
) -> StatementSet:
    """Add the job's operators and sinks to ``env``.

    Returns:
        The statement set of the SQL part (windows, offline store and changelog),
        to attach before executing.
    """
    strategy = _watermarks(settings)
    raw_transactions = env.from_source(
        _kafka_source(settings, settings.transactions_topic, bounded),
        strategy,
        "transactions",
    )
    raw_labels = env.from_source(
        _kafka_source(settings, settings.labels_topic, bounded), strategy, "labels"
    )
    transactions = (
        raw_transactions.connect(raw_labels)
        .process(ParseRecords(settings), output_type=TRANSACTION_FIELDS)
        .name("parse records")
    )
    labels = _never_idle(transactions.get_side_output(LABEL_ROWS))
    for tag, topic, name in (
        (DEAD_LETTERS, settings.dead_letter_topic, "dead letters"),
        (LATE_EVENTS, settings.late_events_topic, "late events"),
    ):
        reports = transactions.get_side_output(tag)
        reports.sink_to(_kafka_sink(settings, topic)).name(name)
    transactions = _never_idle(transactions)

    table_env = StreamTableEnvironment.create(env)
    table_config = table_env.get_config()
    # DATE_FORMAT of a TIMESTAMP_LTZ uses this zone: the offline store's days
    # are UTC days, whatever the machine's zone.
    table_config.set("table.local-time-zone", "UTC")
    # The window accumulators drop rows older than their longest window, but a
    # key's accumulator stays until Flink drops the key's state, after this much
    # processing time without a row: long after its windows emptied.
    table_config.set("table.exec.state.ttl", f"{features.STATE_RETENTION_MS} ms")
    for view, stream, time_column in (
        ("transactions", transactions, "event_ms"),
        ("labels", labels, "label_ms"),
    ):
        table_env.create_temporary_view(
            view, table_env.from_data_stream(stream, _event_time_schema(time_column))
        )
    for name, java_class in feature_sql.FUNCTIONS.items():
        table_env.create_java_temporary_function(name, java_class)
    for statement in feature_sql.feature_views("transactions", "labels"):
        table_env.execute_sql(statement)

    statements = table_env.create_statement_set()
    for name, columns, query in (
        ("features", feature_sql.FEATURE_ROW_COLUMNS, "SELECT * FROM features_rows"),
        (
            "labels",
            feature_sql.LABEL_ROW_COLUMNS,
            feature_sql.label_rows_query("labels"),
        ),
    ):
        _create_offline_table(table_env, settings, name, columns)
        statements.add_insert_sql(f"INSERT INTO offline_{name} {query}")
    _create_changelog_table(table_env, settings)
    statements.add_insert_sql(
        f"INSERT INTO online_changelog {changelog_query('transactions', 'labels')}"
    )
    return statements


def _never_idle(stream: DataStream) -> DataStream:
    """Pass ``stream`` through ``NeverIdle``, which drops the idle status.

    Every path into the windows starts here, so each carries the parsing
    operator's watermark, and no window follows one path's watermark while
    another path still brings rows behind it. The class comment of
    ``NeverIdle`` in streaming/java explains why.
    """
    j_stream = stream._j_data_stream
    operator = load_java_class(NEVER_IDLE).newInstance()
    return DataStream(j_stream.transform("never idle", j_stream.getType(), operator))


def _event_time_schema(time_column: str) -> Schema:
    """Declare ``rowtime`` from an epoch-millisecond column, with the source's
    watermarks.

    The event time comes from the validated record, not from the Kafka
    timestamp, which only drives the watermarks.
    """
    return (
        Schema.new_builder()
        .column_by_expression("rowtime", f"TO_TIMESTAMP_LTZ({time_column}, 3)")
        .watermark("rowtime", "SOURCE_WATERMARK()")
        .build()
    )


def _create_offline_table(
    table_env: StreamTableEnvironment,
    settings: StreamJobSettings,
    name: str,
    columns: tuple[tuple[str, str], ...],
) -> None:
    """Create the Parquet table ``offline_<name>``, partitioned by day."""
    definitions = ", ".join(f"`{column}` {kind}" for column, kind in columns)
    path = (settings.offline_store / name).resolve().as_uri()
    table_env.execute_sql(
        f"CREATE TABLE offline_{name} ({definitions}) PARTITIONED BY (dt) WITH ("
        "'connector' = 'filesystem', 'format' = 'parquet', "
        f"'path' = '{path}', 'sink.partition-commit.policy.kind' = 'success-file')"
    )


def _create_changelog_table(
    table_env: StreamTableEnvironment, settings: StreamJobSettings
) -> None:
    """Create the transactional Kafka table of online-store changes.

    Its transactions commit with the checkpoints, and the loader reads only
    committed records, so each change reaches the stores once per checkpoint
    that completes.
    """
    table_env.execute_sql(
        "CREATE TABLE online_changelog (`change` STRING) WITH ("
        "'connector' = 'kafka', "
        f"'topic' = '{settings.online_changelog_topic}', "
        f"'properties.bootstrap.servers' = '{settings.kafka_bootstrap}', "
        "'format' = 'raw', "
        "'sink.delivery-guarantee' = 'exactly-once', "
        "'sink.transactional-id-prefix' = "
        f"'{settings.consumer_group}-online-changelog', "
        f"'properties.transaction.timeout.ms' = '{TRANSACTION_TIMEOUT_MS}')"
    )


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
