"""The feature job's offline rows against reference features.

The baseline features are compared with the handbook's reference file, and every
model input with the pandas batch reference. Runs the real job on the real Kafka
broker (see the ``streamed_span`` and ``simulated_span`` fixtures).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudcore.features import (
    BASELINE_FEATURES,
    DEVICE_FEATURES,
    MODEL_INPUTS,
    NO_DEVICE_COUNT,
    VELOCITY_FEATURES,
)
from tests.streaming.offline import compare_with_batch, read_offline_features

pytestmark = pytest.mark.integration

REFERENCE_FILE = "reference-features-2018-07-25-to-2018-08-14.parquet"


def same_second_ties(transactions: pd.DataFrame) -> set[str]:
    """Transactions sharing their second with another one of the same customer."""
    tied = transactions.duplicated(["CUSTOMER_ID", "TX_DATETIME"], keep=False)
    return set(transactions.loc[tied, "TRANSACTION_ID"].astype(str))


@pytest.fixture(scope="module")
def compared(streamed_span) -> pd.DataFrame:
    reference = pd.read_parquet(streamed_span.settings.data_dir / REFERENCE_FILE)
    reference["transaction_id"] = reference["TRANSACTION_ID"].astype(str)
    offline = read_offline_features(streamed_span)
    days = offline["dt"].astype(str)
    offline = offline[(days >= "2018-07-25") & (days <= "2018-08-14")]
    return reference.merge(
        offline,
        on="transaction_id",
        how="outer",
        suffixes=("_ref", ""),
        indicator=True,
    )


def test_features_job_writes_one_row_per_transaction(streamed_span, compared):
    offline = read_offline_features(streamed_span)
    assert offline["transaction_id"].is_unique
    assert len(offline) == streamed_span.replayed
    assert (compared["_merge"] == "both").all(), compared["_merge"].value_counts()


def test_features_job_matches_reference_except_ties(streamed_span, compared):
    ties = same_second_ties(streamed_span.transactions)
    differing: dict[str, list[str]] = {}
    for name in BASELINE_FEATURES:
        expected = compared[f"{name}_ref"].to_numpy(dtype=float)
        actual = compared[name].to_numpy(dtype=float)
        bad = ~np.isclose(actual, expected, rtol=1e-9, atol=1e-9)
        for transaction_id in compared.loc[bad, "transaction_id"]:
            differing.setdefault(transaction_id, []).append(name)

    unexplained = {tx: names for tx, names in differing.items() if tx not in ties}
    print(
        f"\n{len(differing)} rows differ, all with same-second ties: "
        f"{sorted(differing)}"
    )
    assert not unexplained, f"rows differing without a same-second tie: {unexplained}"
    assert len(differing) <= 50


def test_features_job_matches_reference_amounts(compared):
    np.testing.assert_array_equal(compared["TX_AMOUNT"], compared["TX_AMOUNT_ref"])


def test_features_job_velocity_matches_batch(streamed_span):
    # Both count same-millisecond transactions as peers, so ties must match too.
    differing = compare_with_batch(streamed_span, VELOCITY_FEATURES)
    assert differing.empty, differing.head(20)


def test_features_job_no_device_defaults(streamed_span):
    offline = read_offline_features(streamed_span)
    assert offline["device_id"].isna().all()
    assert (offline[list(DEVICE_FEATURES)] == NO_DEVICE_COUNT).all(axis=None)


def test_features_job_simulated_matches_batch(simulated_span):
    differing = compare_with_batch(simulated_span, MODEL_INPUTS)
    assert differing.empty, differing.head(20)


def test_features_job_simulated_covers_devices(simulated_span):
    offline = read_offline_features(simulated_span)
    with_device = offline["device_id"].notna()
    assert with_device.any()
    assert not with_device.all()
    assert offline["DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW"].max() > 1
    assert offline["DEVICE_ID_NB_TX_1DAY_WINDOW"].max() > 1
