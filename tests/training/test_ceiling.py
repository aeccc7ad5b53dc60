"""Which frauds the metric bound counts as detectable, and its summary."""

from __future__ import annotations

import pandas as pd
import pytest

from training.ceiling import compromise_age_days, detectable_frauds, summarize

START = pd.Timestamp("2018-08-01 10:00:00")


def raw_rows(rows: list[tuple[int, float, int]]) -> pd.DataFrame:
    """Build ``transactions.parquet`` rows from (terminal, day offset, scenario)."""
    return pd.DataFrame(
        {
            "TERMINAL_ID": [terminal for terminal, _, _ in rows],
            "TX_DATETIME": [START + pd.Timedelta(days=days) for _, days, _ in rows],
            "TX_FRAUD_SCENARIO": [scenario for _, _, scenario in rows],
            "TX_FRAUD": [int(scenario > 0) for _, _, scenario in rows],
        }
    )


def test_age_counts_from_compromise_start() -> None:
    raw = raw_rows(
        [
            (1, 0, 2),
            (1, 3.5, 2),
            (2, 1, 2),
            (1, 8, 2),
            (1, 27, 2),
            # 32 days after the last one: a new compromise of the same terminal.
            (1, 59, 2),
            (1, 62, 2),
        ]
    )

    ages = compromise_age_days(raw).sort_index()

    assert ages.tolist() == [0, 3, 0, 8, 27, 0, 3]


def test_terminal_fraud_detectable_after_delay() -> None:
    raw = raw_rows(
        [
            (1, 0, 2),
            (1, 6.9, 2),
            (1, 7, 2),
            (3, 0, 1),
            (4, 0, 3),
            (5, 0, 0),
        ]
    )

    assert detectable_frauds(raw).tolist() == [False, False, True, True, True, False]


def test_summary_weights_unseen_share() -> None:
    rows = [
        {
            "frauds": 300,
            "unseen_frauds": 30,
            "bound": {"average_precision": 0.8, "card_precision_at_100": 0.3},
            "perfect_card_precision_at_100": 0.4,
        },
        {
            "frauds": 100,
            "unseen_frauds": 50,
            "bound": {"average_precision": 0.6, "card_precision_at_100": 0.2},
            "perfect_card_precision_at_100": 0.5,
        },
    ]

    summary = summarize(rows)

    assert summary == pytest.approx(
        {
            "bound_average_precision": 0.7,
            "bound_card_precision_at_100": 0.25,
            "perfect_card_precision_at_100": 0.45,
            "unseen_fraud_share": 0.2,
        }
    )
