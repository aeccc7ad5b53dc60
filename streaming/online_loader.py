"""Applies the feature job's online-store changelog to Redis and PostgreSQL.

The feature job publishes every online-store write to the changelog topic
through a transactional Kafka sink, whose transactions commit with the job's
checkpoints. The loader reads only committed records (``read_committed``),
writes them in batches, and commits its offsets after each batch. After a
crash of either side, records are applied again from the last committed offset.
The writes are idempotent and commute, so the store ends as if nothing failed.

The job also writes Redis directly as events arrive, which keeps the scorer's
features fresh. Those writes are lost when the job dies between a checkpoint
and their flush, and the loader restores them.
PostgreSQL, the durable copy, is written by the loader only, so it trails the
job by up to one checkpoint interval.

Run with ``python -m streaming.online_loader``; ``python -m
streaming.features_job`` also runs one in a thread unless given ``--no-loader``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from dataclasses import dataclass

import psycopg
import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition
from pydantic_settings import SettingsConfigDict

from fraudcore.settings import PlatformSettings
from streaming.online_writer import OnlineStoreWriter, apply_change, ensure_schema

log = logging.getLogger(__name__)

# Failures of Redis or PostgreSQL after which the loader reconnects and retries.
STORE_FAILURES = (psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError)


class LoaderSettings(PlatformSettings):
    """Settings of the loader, read from ``FRAUD_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore")

    # Consumer group of the loader; empty means "<changelog topic>-loader".
    loader_group: str = ""
    loader_batch_size: int = 5_000
    loader_poll_seconds: float = 0.1
    loader_retry_seconds: float = 5.0

    @property
    def loader_group_id(self) -> str:
        """The loader's consumer group."""
        return self.loader_group or f"{self.online_changelog_topic}-loader"


@dataclass
class LoaderStats:
    """Counts of what a loader applied, for logs and tests."""

    applied: int = 0
    batches: int = 0
    retries: int = 0


class OnlineLoader:
    """Consumes the changelog and writes it to the online store.

    Args:
        settings: servers, changelog topic, key prefix and consumer group.
    """

    def __init__(self, settings: LoaderSettings) -> None:
        self._settings = settings
        self.stats = LoaderStats()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._drain = threading.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand."""
        self._stop.set()

    def drain(self) -> None:
        """Ask :meth:`run` to return once it has applied every committed record."""
        self._drain.set()

    def run(self) -> LoaderStats:
        """Apply changelog batches until stopped, or drained when asked to drain.

        When Redis or PostgreSQL fails, the loader logs it, waits
        ``loader_retry_seconds``, reconnects and applies again from its last
        committed offset.

        Raises:
            ValueError: on a record that is not an online-store change.
            KafkaException: when Kafka reports an error on a record.
        """
        retry_seconds = self._settings.loader_retry_seconds
        while True:
            try:
                self._run_connected()
                break
            except STORE_FAILURES as exc:
                self.stats.retries += 1
                log.warning(
                    "online loader: store write failed, applying again from the "
                    "last committed offset in %.1f s: %s: %s",
                    retry_seconds,
                    type(exc).__name__,
                    exc,
                )
                if self._stop.wait(retry_seconds):
                    break
        log.info(
            "online loader applied %d changes in %d batches",
            self.stats.applied,
            self.stats.batches,
        )
        return self.stats

    def _run_connected(self) -> None:
        settings = self._settings
        ensure_schema(settings.pg_dsn)
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": settings.loader_group_id,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        try:
            writer = OnlineStoreWriter(
                settings.redis_url, settings.pg_dsn, settings.redis_prefix
            )
            try:
                consumer.subscribe([settings.online_changelog_topic])
                while not self._stop.is_set():
                    messages = consumer.consume(
                        settings.loader_batch_size, settings.loader_poll_seconds
                    )
                    if messages:
                        self._apply(consumer, writer, messages)
                    elif self._drain.is_set() and _caught_up(consumer):
                        break
            finally:
                # Changes not yet written are consumed again after a restart,
                # since their offsets were not committed.
                writer.discard()
        finally:
            consumer.close()

    def _apply(self, consumer: Consumer, writer: OnlineStoreWriter, messages) -> None:
        for message in messages:
            if message.error() is not None:
                raise KafkaException(message.error())
            apply_change(writer, message.value())
        writer.flush()
        consumer.commit(asynchronous=False)
        self.stats.applied += len(messages)
        self.stats.batches += 1


def _caught_up(consumer: Consumer) -> bool:
    """Return whether the consumer's position is at the end of each assigned partition.

    Under ``read_committed`` the end is the last stable offset, which equals
    the high watermark once no transaction is open.
    """
    assignment = consumer.assignment()
    if not assignment:
        return False
    for position in consumer.position(assignment):
        _, high = consumer.get_watermark_offsets(
            TopicPartition(position.topic, position.partition), timeout=10
        )
        if position.offset < 0 and high == 0:
            continue
        if position.offset < high:
            return False
    return True


def start_in_thread(settings: LoaderSettings) -> tuple[OnlineLoader, threading.Thread]:
    """Run a loader in a daemon thread; returns it and its thread.

    An exception that ends the loader is logged and kept in its ``error``.
    """
    loader = OnlineLoader(settings)

    def run() -> None:
        try:
            loader.run()
        except Exception as exc:
            log.exception("the online loader stopped")
            loader.error = exc

    thread = threading.Thread(target=run, name="online-loader", daemon=True)
    thread.start()
    return loader, thread


def main(argv: list[str] | None = None) -> int:
    """Run the loader from the command line."""
    parser = argparse.ArgumentParser(prog="python -m streaming.online_loader")
    parser.add_argument(
        "--until-end",
        action="store_true",
        help="stop once every committed change has been applied",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    loader = OnlineLoader(LoaderSettings())
    if args.until_end:
        loader.drain()
    try:
        loader.run()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
