"""Builders of small hand-made offline-store rows for the training tests."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd

from fraudcore.features import LABEL_DELAY_DAYS, MODEL_INPUTS
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
