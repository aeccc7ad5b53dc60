"""The feature job submitted with ``flink run`` to a standalone Flink cluster.

The cluster (a job manager and a task manager on 127.0.0.1) is started from the
PyFlink package's scripts by :mod:`deploy.flink_cluster`, with its files in this
test's own folder, and stopped by PID afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from deploy import flink_cluster, stack
from fraudcore.features import MODEL_INPUTS
from fraudcore.settings import PlatformSettings
from fraudcore.store import customer_key
from streaming import replay
from streaming.job_metrics import free_port
from streaming.simulator import add_device_ids, simulate_transactions
from tests.conftest import StreamedSpan, created_database, settings_environment
from tests.streaming.offline import compare_with_batch, read_offline_features

pytestmark = pytest.mark.integration

SUBMIT_TIMEOUT_SECONDS = 900


@pytest.fixture(scope="module")
def submitted_span(
    test_settings: PlatformSettings,
    run_id: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StreamedSpan]:
    state = tmp_path_factory.mktemp("cluster")
    prefix = f"{test_settings.redis_prefix}-cluster"
    with created_database(test_settings, f"fraud_test_{run_id}_cluster") as dsn:
        settings = test_settings.namespaced(prefix, state / "offline").model_copy(
            update={"pg_dsn": dsn, "state_dir": state}
        )
        stack.create_topics(settings)
        cluster = flink_cluster.up(settings, free_port(), free_port())
        try:
            frame = simulate_transactions(
                n_customers=30, n_terminals=40, n_days=10, seed=9, radius=30.0
            )
            frame = add_device_ids(frame, seed=9)
            days = frame["TX_DATETIME"].dt.date
            result = replay.replay(settings, frame, days.min(), days.max())
            environment = settings_environment(settings) | {
                "FRAUD_CONSUMER_GROUP": f"{prefix}-features",
                "FRAUD_CHECKPOINT_DIR": str(state / "checkpoints"),
            }
            code = flink_cluster.submit(
                cluster, ["--bounded"], environment, SUBMIT_TIMEOUT_SECONDS
            )
            assert code == 0, f"flink run exited with {code}; see {state / 'flink'}"
            yield StreamedSpan(settings, frame, result.transactions)
        finally:
            flink_cluster.down(settings)
            stack.delete_topics(settings, settings.topics())
            stack.delete_redis_keys(settings)


def test_cluster_job_writes_every_transaction(submitted_span):
    offline = read_offline_features(submitted_span)
    assert offline["transaction_id"].is_unique
    assert len(offline) == submitted_span.replayed


def test_cluster_job_matches_batch_reference(submitted_span):
    differing = compare_with_batch(submitted_span, MODEL_INPUTS)
    assert differing.empty, differing.head(20)


def test_cluster_job_fills_online_store(submitted_span):
    settings = submitted_span.settings
    customer = str(submitted_span.transactions["CUSTOMER_ID"].iloc[0])
    client = redis.Redis.from_url(settings.redis_url)
    assert client.zcard(customer_key(settings.redis_prefix, customer)) > 0
