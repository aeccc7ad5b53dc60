"""Online features (Redis, and PostgreSQL after a Redis miss) equal the offline rows.

Reads the stores the feature job filled in the ``streamed_span`` and
``simulated_span`` fixtures through the scorer's own lookup code, then computes
features with the shared functions.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import redis

from fraudcore.features import MODEL_INPUTS, transaction_features
from fraudcore.store import customer_key, device_key, terminal_key
from services.scorer.clients import create_pg_pool, create_redis
from services.scorer.feature_store import HistoryLookup, HistoryQuery
from services.scorer.metrics import ScorerMetrics
from services.scorer.settings import ScorerSettings

pytestmark = pytest.mark.integration

SAMPLE_SIZE = 2_000
# The job sums amounts exactly, as math.fsum does, so every served feature
# equals its offline value bit for bit.
TOLERANCE = 0.0
LOOKUP_TIMEOUT_SECONDS = 5.0


@pytest.fixture(scope="module")
def sample(streamed_span) -> pd.DataFrame:
    """Offline rows of test-week transactions, ties between them included."""
    path = streamed_span.settings.offline_store / "features"
    offline = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    rows = offline.to_pandas()
    week = rows[(rows["dt"] >= "2018-08-08") & (rows["dt"] <= "2018-08-14")]
    tied = week[week.duplicated(["customer_id", "event_ms"], keep=False)]
    drawn = week.sample(SAMPLE_SIZE, random_state=7)
    return pd.concat([drawn, tied]).drop_duplicates("transaction_id")


def online_features(settings: ScorerSettings, rows: pd.DataFrame):
    async def lookup_all():
        client = create_redis(settings)
        pool = create_pg_pool(settings)
        await pool.open()
        lookup = HistoryLookup(
            client,
            pool,
            settings.redis_prefix,
            LOOKUP_TIMEOUT_SECONDS,
            LOOKUP_TIMEOUT_SECONDS,
            ScorerMetrics(),
        )
        results = []
        try:
            for row in rows.itertuples(index=False):
                device_id = None if pd.isna(row.device_id) else row.device_id
                query = HistoryQuery.for_transaction(
                    row.customer_id, row.terminal_id, row.event_ms, device_id
                )
                found = await lookup.fetch(query)
                histories, source = found.histories, found.source
                features = transaction_features(
                    row.event_ms,
                    row.transaction_id,
                    row.TX_AMOUNT,
                    histories.customer,
                    histories.terminal,
                    customer_id=row.customer_id,
                    terminal_id=row.terminal_id,
                    device_id=device_id,
                    device_history=histories.device,
                )
                results.append((source, [features[name] for name in MODEL_INPUTS]))
        finally:
            await pool.close()
            await client.aclose()
        return results

    return asyncio.run(lookup_all())


def scorer_settings(streamed_span) -> ScorerSettings:
    # Generous timeouts: this test checks which store responds and its values, and
    # a busy machine must not turn a slow Redis read into a fallback.
    return ScorerSettings(
        **streamed_span.settings.model_dump(),
        redis_timeout_seconds=LOOKUP_TIMEOUT_SECONDS,
        pg_timeout_seconds=LOOKUP_TIMEOUT_SECONDS,
    )


def assert_equal_to_offline(results, rows: pd.DataFrame, expected_source: str):
    sources = {source for source, _ in results}
    assert sources == {expected_source}
    served = np.array([values for _, values in results])
    offline = rows[list(MODEL_INPUTS)].to_numpy()
    difference = np.abs(served - offline)
    mismatched = rows["transaction_id"][(difference > TOLERANCE).any(axis=1)]
    assert mismatched.empty, f"features differ for {mismatched.tolist()[:20]}"


def test_online_parity_redis_path(streamed_span, sample):
    results = online_features(scorer_settings(streamed_span), sample)
    assert_equal_to_offline(results, sample, "redis")


def delete_redis_keys(settings: ScorerSettings, rows: pd.DataFrame) -> None:
    prefix = settings.redis_prefix
    keys = [customer_key(prefix, c) for c in rows["customer_id"]]
    keys += [terminal_key(prefix, t) for t in rows["terminal_id"]]
    keys += [device_key(prefix, d) for d in rows["device_id"].dropna()]
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(*set(keys))
    client.close()


def test_online_parity_postgres_fallback(streamed_span, sample):
    settings = scorer_settings(streamed_span)
    delete_redis_keys(settings, sample)

    results = online_features(settings, sample)
    assert_equal_to_offline(results, sample, "postgres")


@pytest.fixture(scope="module")
def simulated_rows(simulated_span) -> pd.DataFrame:
    """Every offline row of the simulated span, with and without a device."""
    path = simulated_span.settings.offline_store / "features"
    offline = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    rows = offline.to_pandas()
    assert rows["device_id"].notna().any()
    assert rows["device_id"].isna().any()
    return rows


def test_online_parity_devices_redis_path(simulated_span, simulated_rows):
    results = online_features(scorer_settings(simulated_span), simulated_rows)
    assert_equal_to_offline(results, simulated_rows, "redis")


def test_online_parity_devices_postgres_fallback(simulated_span, simulated_rows):
    settings = scorer_settings(simulated_span)
    delete_redis_keys(settings, simulated_rows)

    results = online_features(settings, simulated_rows)
    assert_equal_to_offline(results, simulated_rows, "postgres")
