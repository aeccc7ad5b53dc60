"""The training job with its set-up: ``make train``.

Starts the servers of the local stack that are not reachable, makes sure the
offline store covers every day the prequential folds need, and then runs
:mod:`training.prequential` with the remaining command-line arguments. When the
store lacks a day, the span is replayed into Kafka and the PyFlink feature job
fills a new store from it. That replay uses topics, a Redis key prefix and a
PostgreSQL database of its own, which are removed afterwards, so the online
store that the scorer reads is left as it was. Servers started here are
stopped at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

from deploy import stack
from deploy.demo import run_feature_job, step
from fraudcore.settings import PlatformSettings
from streaming import replay
from training import prequential
from training.dataset import daily_coverage
from training.errors import InputDataError
from training.folds import TEST_FOLDS, VALIDATION_FOLDS, required_span
from training.train import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

log = logging.getLogger(__name__)

REFRESH_DIR = "train-refresh"

# Every partition of a replayed topic has records up to its end, so a partition
# goes quiet only when its reader stalls on a busy machine. With the job's usual
# 10 s idle timeout the watermark then jumps to the labels, which run 7 days
# ahead, and the stalled partition's transactions are dropped as late events.
# NOTE: that cause is inferred from which rows went missing, so it is uncertain.
# The late-events count that the refresh logs confirms or refutes it.
REPLAY_IDLE_TIMEOUT_MS = 3_600_000


def missing_days(offline_store: Path, first: date, last: date) -> list[date]:
    """Return the days of ``[first, last]`` that the offline store lacks.

    A day counts as covered when the store has feature rows and labels of
    transactions on it, and every labelled transaction of it has a feature row.
    """
    try:
        coverage = daily_coverage(offline_store)
    except InputDataError as exc:
        log.info("the offline store is not usable yet: %s", exc)
        coverage = pd.DataFrame(
            columns=["feature_rows", "labels", "labels_without_features"]
        )
    span = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    coverage = coverage.reindex(span, fill_value=0)
    incomplete = coverage[coverage["labels_without_features"] > 0]
    for day, row in incomplete.iterrows():
        log.warning(
            "%s: %d of %d labelled transactions have no feature row",
            day,
            row["labels_without_features"],
            row["labels"],
        )
    lacking = (
        (coverage["feature_rows"] == 0)
        | (coverage["labels"] == 0)
        | (coverage["labels_without_features"] > 0)
    )
    return [day for day, missing in zip(span, lacking, strict=True) if missing]


@contextmanager
def scratch_database(pg_dsn: str, name: str) -> Iterator[str]:
    """Create a PostgreSQL database for one refresh; drop it afterwards."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


def refresh_offline_store(settings: PlatformSettings, first: date, last: date) -> None:
    """Replay ``[first, last]`` and run the feature job into a new offline store.

    The job writes into a staging folder, and only a job that succeeded
    replaces ``settings.offline_store`` with it. The topics, keys, database and
    staging folder of the refresh are removed whether it succeeded or not.

    Raises:
        subprocess.CalledProcessError: If the feature job failed; its log is
            ``logs/features-job.log`` in the state folder.
        confluent_kafka.KafkaException: If the replay could not deliver.
    """
    prefix = f"train-{uuid.uuid4().hex[:8]}"
    scratch = settings.state_dir / REFRESH_DIR / prefix
    job_settings = settings.namespaced(prefix, scratch / "offline")
    source = replay.load_source(
        settings.data_dir / "transactions.parquet", simulate_if_missing=False
    )
    database = prefix.replace("-", "_")
    with scratch_database(settings.pg_dsn, database) as dsn:
        job_settings = job_settings.model_copy(update={"pg_dsn": dsn})
        stack.create_topics(job_settings)
        try:
            with step(f"replaying {first}..{last} into Kafka"):
                result = replay.replay(job_settings, source.frame, first, last)
                print(f"    {result.transactions:,} transactions and their labels")
            with step("running the PyFlink feature job"):
                environment = job_settings.environment() | {
                    "FRAUD_CONSUMER_GROUP": f"{prefix}-features",
                    "FRAUD_CHECKPOINT_DIR": str(scratch / "checkpoints"),
                    "FRAUD_IDLE_TIMEOUT_MS": str(REPLAY_IDLE_TIMEOUT_MS),
                }
                run_feature_job(job_settings, _with_process_environment(environment))
            _report_rejected_events(job_settings)
            _replace_store(scratch / "offline", settings.offline_store)
        finally:
            stack.delete_topics(job_settings, job_settings.topics())
            stack.delete_redis_keys(job_settings)
            shutil.rmtree(scratch, ignore_errors=True)


def _report_rejected_events(settings: PlatformSettings) -> None:
    """Log how many events the job sent to the late-events and dead-letter topics.

    Those events have no offline row, and the topics are deleted with the
    refresh's other topics, so their counts are kept in the log.
    """
    for topic in (settings.late_events_topic, settings.dead_letter_topic):
        count = stack.topic_records(settings, topic)
        if count:
            log.warning("the feature job sent %d events to %s", count, topic)


def _with_process_environment(extra: dict[str, str]) -> dict[str, str]:
    return dict(os.environ) | extra


def _replace_store(staged: Path, target: Path) -> None:
    previous = target.with_name(target.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
    log.info("the offline store at %s now contains the replayed span", target)


def ensure_offline_store(settings: PlatformSettings) -> None:
    """Fill the offline store when it lacks a day of the folds' span."""
    first, last = required_span(VALIDATION_FOLDS + TEST_FOLDS)
    missing = missing_days(settings.offline_store, first, last)
    if not missing:
        print(f"==> the offline store covers {first}..{last}")
        return
    print(
        f"==> the offline store lacks {len(missing)} days of {first}..{last} "
        f"(first {missing[0]}); rebuilding it"
    )
    refresh_offline_store(settings, first, last)
    still_missing = missing_days(settings.offline_store, first, last)
    if still_missing:
        raise InputDataError(
            f"after the replay the offline store still lacks {len(still_missing)} "
            f"days (first {still_missing[0]}); expected every day of {first}..{last}."
        )


def main(argv: list[str] | None = None) -> int:
    """Start what is missing, fill the offline store and run the training job."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other arguments go to python -m training.prequential.",
    )
    parser.add_argument(
        "--skip-store-check",
        action="store_true",
        help="train on the offline store as it is, without checking its days",
    )
    parser.add_argument(
        "--store-only",
        action="store_true",
        help="fill the offline store when it lacks a day, then stop without training",
    )
    args, training_args = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    prequential.quiet_great_expectations()
    settings = PlatformSettings()
    with step("starting the local stack (Kafka, Redis, PostgreSQL)"):
        started_servers = stack.up(settings)
    try:
        if not args.skip_store_check:
            ensure_offline_store(settings)
        if args.store_only:
            return EXIT_OK
        return prequential.main(training_args)
    except InputDataError as exc:
        log.error("bad input: %s", exc)
        return EXIT_BAD_INPUT
    except subprocess.CalledProcessError as exc:
        log.error(
            "the feature job failed with exit code %d; see %s",
            exc.returncode,
            settings.state_dir / "logs" / "features-job.log",
        )
        return EXIT_FAILED
    finally:
        stack.down(settings, started_servers)


if __name__ == "__main__":
    sys.exit(main())
