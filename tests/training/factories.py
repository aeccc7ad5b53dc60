"""Builders of small hand-made offline-store rows for the training tests."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from fraudcore.features import LABEL_DELAY_DAYS, MODEL_INPUTS, WINDOW_DAYS
from fraudcore.timeutil import MS_PER_DAY
from training.segmentation.publish import (
    segment_rows,
    segmentation_version,
    write_offline_segments,
)


def epoch_ms(day: date, hour: int = 12) -> int:
    """Return epoch milliseconds of ``hour`` o'clock UTC on ``day``."""
    moment = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def store_frames(
    rows: list[dict[str, object]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build feature and label rows from dicts with ids, ``event_ms`` and ``fraud``.

    Model inputs default to 0.0; labels become known ``LABEL_DELAY_DAYS`` later.
    """
    frame = pd.DataFrame(rows)
    for name in MODEL_INPUTS:
        if name not in frame:
            frame[name] = 0.0
    frame = frame.astype(dict.fromkeys(MODEL_INPUTS, "float64"))
    features = frame[
        ["transaction_id", "customer_id", "terminal_id", "event_ms", *MODEL_INPUTS]
    ]
    labels = frame[["transaction_id", "customer_id", "terminal_id"]].assign(
        transaction_ms=frame["event_ms"],
        label_ms=frame["event_ms"] + LABEL_DELAY_DAYS * MS_PER_DAY,
        fraud=frame["fraud"].astype("int64"),
    )
    return features, labels


def prequential_rows(
    first_day: date, days: int, per_day: int = 120, seed: int = 0
) -> list[dict[str, object]]:
    """Build ``per_day`` transactions a day for ``days`` days from ``first_day``.

    Fraud is any amount above 292 plus 0.5% of the rest (about 3% in all), so
    a model can learn it and the fraud rate is within the contract's limits.
    The terminal risk rises with fraud, the customer mean amounts equal the
    amount and the flags are 0 or 1, so the rows pass the data contract. Ids
    are ``<day offset>-<index>``.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        for index in range(per_day):
            amount = float(rng.uniform(1, 300))
            fraud = amount > 292 or rng.random() < 0.005
            rows.append(
                {
                    "transaction_id": f"{offset}-{index}",
                    "customer_id": str(rng.integers(0, 3000)),
                    "terminal_id": str(rng.integers(0, 100)),
                    "event_ms": epoch_ms(day) + index * 60_000,
                    "fraud": int(fraud),
                    "TX_AMOUNT": amount,
                    "TX_DURING_NIGHT": float(index % 4 == 0),
                    "CUSTOMER_ID_NB_TX_1DAY_WINDOW": float(rng.integers(1, 5)),
                    **{
                        f"CUSTOMER_ID_AVG_AMOUNT_{days}DAY_WINDOW": amount
                        for days in WINDOW_DAYS
                    },
                    "TERMINAL_ID_RISK_7DAY_WINDOW": float(
                        rng.uniform(0.3, 1.0) if fraud else rng.uniform(0, 0.5)
                    ),
                }
            )
    return rows


def segment_of_customer(customer: int) -> int:
    """Return the segment that :func:`segmented_rows` gives a customer number."""
    return customer % 3


def segmented_rows(
    first_day: date, days: int, per_day: int = 60, customers: int = 300, seed: int = 3
) -> list[dict[str, object]]:
    """Build transactions whose fraud depends on the customer's segment.

    Fraud is any amount above 285, plus 15% of the transactions of segment-2
    customers (:func:`segment_of_customer`), which no other input reveals. Ids of
    customers are their numbers in decimal text.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        for index in range(per_day):
            customer = int(rng.integers(0, customers))
            amount = float(rng.uniform(0, 300))
            risky = segment_of_customer(customer) == 2 and rng.random() < 0.15
            rows.append(
                {
                    "transaction_id": f"{offset}-{index}",
                    "customer_id": str(customer),
                    "terminal_id": str(rng.integers(0, 50)),
                    "event_ms": epoch_ms(day) + index * 60_000,
                    "fraud": int(amount > 285 or risky),
                    "TX_AMOUNT": amount,
                }
            )
    return rows


def segment_version_rows(
    segments: dict[str, int], created_at: datetime
) -> pd.DataFrame:
    """Build one new segmentation version's rows from customer ids to segments."""
    ids = pd.Series(list(segments), dtype="string")
    version = segmentation_version(
        pd.DataFrame({"customer_id": ids}), {"segments": segments}, created_at
    )
    return segment_rows(ids, list(segments.values()), version, created_at)


def publish_offline_segments(
    offline_store: Path,
    segments: dict[str, int],
    created_at: datetime,
    profiles_end: date | None,
) -> str:
    """Write a new segmentation version to the offline store; return the version."""
    rows = segment_version_rows(segments, created_at)
    write_offline_segments(offline_store, rows, profiles_end)
    return str(rows["segmentation_version"].iloc[0])
