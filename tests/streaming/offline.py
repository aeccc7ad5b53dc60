"""Readers of the feature job's offline store, shared by the stream tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from streaming.batch_features import batch_features


def read_offline_features(streamed_span) -> pd.DataFrame:
    path = streamed_span.settings.offline_store / "features"
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    return table.to_pandas()


def compare_with_batch(span, names) -> pd.DataFrame:
    """Return the offline rows whose ``names`` differ from the batch reference."""
    expected = batch_features(span.transactions)
    expected["transaction_id"] = expected["TRANSACTION_ID"].astype(str)
    offline = read_offline_features(span)
    merged = expected.merge(
        offline, on="transaction_id", how="outer", suffixes=("_batch", "")
    )
    assert len(merged) == len(expected) == len(offline)
    bad = np.zeros(len(merged), dtype=bool)
    for name in names:
        bad |= ~np.isclose(
            merged[name].to_numpy(float),
            merged[f"{name}_batch"].to_numpy(float),
            rtol=1e-9,
            atol=1e-9,
        )
    return merged.loc[bad, ["transaction_id", *names]]
