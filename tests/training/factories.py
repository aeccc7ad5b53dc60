"""Builders of small hand-made offline-store rows for the training tests."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from fraudcore.features import LABEL_DELAY_DAYS, MODEL_INPUTS, WINDOW_DAYS
from fraudcore.timeutil import MS_PER_DAY


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
