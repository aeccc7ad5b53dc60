"""Tests of the chapter-3 split, the compromised-card filter and the metrics."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
import pytest

from training.errors import InputDataError
from training.evaluation import (
    CHAPTER3_WINDOW,
    SplitWindow,
    auc_roc,
    average_precision,
    card_precision_at_k,
    daily_card_precision_at_k,
    evaluate_scores,
    remove_known_compromised,
    split_train_test,
)


def _ms(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _frame(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    """Build transactions from (card, ISO time in UTC, fraud, score) tuples."""
    return pd.DataFrame(
        {
            "transaction_id": [str(index) for index in range(len(rows))],
            "customer_id": [card for card, _, _, _ in rows],
            "event_ms": [_ms(moment) for _, moment, _, _ in rows],
            "fraud": [fraud for _, _, fraud, _ in rows],
            "score": [score for _, _, _, score in rows],
        }
    )


def test_split_window_chapter3_dates() -> None:
    assert CHAPTER3_WINDOW.train_dates()[0] == date(2018, 7, 25)
    assert CHAPTER3_WINDOW.train_dates()[-1] == date(2018, 7, 31)
    assert CHAPTER3_WINDOW.test_dates()[0] == date(2018, 8, 8)
    assert CHAPTER3_WINDOW.test_dates()[-1] == date(2018, 8, 14)


def test_split_train_test_utc_day_boundaries() -> None:
    labelled = _frame(
        [
            ("a", "2018-07-24T23:59:59.999", 0, 0.0),
            ("a", "2018-07-25T00:00:00", 0, 0.0),
            ("a", "2018-07-31T23:59:59.999", 0, 0.0),
            ("a", "2018-08-01T00:00:00", 0, 0.0),
            ("a", "2018-08-07T23:59:59.999", 0, 0.0),
            ("a", "2018-08-08T00:00:00", 0, 0.0),
            ("a", "2018-08-14T23:59:59.999", 0, 0.0),
            ("a", "2018-08-15T00:00:00", 0, 0.0),
        ]
    )

    train, test = split_train_test(labelled)

    assert train["transaction_id"].tolist() == ["1", "2"]
    assert test["transaction_id"].tolist() == ["5", "6"]


def test_split_train_test_other_window() -> None:
    window = SplitWindow(train_start=date(2018, 8, 1), gap_days=2, test_days=1)
    labelled = _frame(
        [
            ("a", "2018-08-01T10:00:00", 0, 0.0),
            ("a", "2018-08-09T10:00:00", 0, 0.0),
            ("a", "2018-08-10T10:00:00", 0, 0.0),
            ("a", "2018-08-11T10:00:00", 0, 0.0),
        ]
    )

    train, test = split_train_test(labelled, window)

    assert train["transaction_id"].tolist() == ["0"]
    assert test["transaction_id"].tolist() == ["2"]


def test_split_train_test_missing_test_week_raises() -> None:
    labelled = _frame([("a", "2018-07-26T10:00:00", 0, 0.0)])

    with pytest.raises(InputDataError, match="test period 2018-08-08..2018-08-14"):
        split_train_test(labelled)


def test_split_train_test_missing_training_week_raises() -> None:
    labelled = _frame([("a", "2018-08-09T10:00:00", 0, 0.0)])

    with pytest.raises(InputDataError, match="training period 2018-07-25"):
        split_train_test(labelled)


def test_remove_known_compromised_training_week_fraud() -> None:
    labelled = _frame(
        [
            ("a", "2018-07-27T10:00:00", 1, 0.0),
            ("a", "2018-08-08T10:00:00", 0, 0.0),
            ("a", "2018-08-14T10:00:00", 1, 0.0),
            ("b", "2018-08-08T10:00:00", 0, 0.0),
        ]
    )

    _, test = split_train_test(labelled)

    assert test["customer_id"].tolist() == ["b"]


def test_remove_known_compromised_day_by_day() -> None:
    labelled = _frame(
        [
            # A fraud on 08-03 is known 8 days later, from test day 08-11 on.
            ("b", "2018-08-03T10:00:00", 1, 0.0),
            ("b", "2018-08-10T23:00:00", 0, 0.0),
            ("b", "2018-08-11T01:00:00", 0, 0.0),
            # A fraud on the last gap day would be known on 08-15: never here.
            ("c", "2018-08-07T10:00:00", 1, 0.0),
            ("c", "2018-08-14T10:00:00", 0, 0.0),
            # A fraud in a test day is not known during the test week.
            ("d", "2018-08-08T10:00:00", 1, 0.0),
            ("d", "2018-08-14T10:00:00", 0, 0.0),
            # Frauds before the training week are not counted.
            ("e", "2018-07-24T10:00:00", 1, 0.0),
            ("e", "2018-08-08T10:00:00", 0, 0.0),
            ("f", "2018-07-25T10:00:00", 0, 0.0),
        ]
    )
    test = labelled[labelled["event_ms"] >= _ms("2018-08-08T00:00:00")]

    kept = remove_known_compromised(test, labelled, CHAPTER3_WINDOW)

    assert kept["transaction_id"].tolist() == ["1", "4", "5", "6", "8"]


def test_remove_known_compromised_keeps_genuine_gap_cards() -> None:
    labelled = _frame(
        [
            ("a", "2018-08-02T10:00:00", 0, 0.0),
            ("a", "2018-08-12T10:00:00", 0, 0.0),
        ]
    )

    kept = remove_known_compromised(labelled.iloc[[1]], labelled)

    assert kept["transaction_id"].tolist() == ["1"]


def test_card_precision_detected_card_leaves_ranking() -> None:
    scored = _frame(
        [
            ("a", "2018-08-08T10:00:00", 1, 0.9),
            ("b", "2018-08-08T10:00:00", 0, 0.5),
            # On day 2 card a would again rank first, but it was detected.
            ("a", "2018-08-09T10:00:00", 1, 0.99),
            ("b", "2018-08-09T10:00:00", 0, 0.5),
            ("c", "2018-08-09T10:00:00", 1, 0.4),
        ]
    )

    daily = daily_card_precision_at_k(scored, k=1)

    assert daily.to_dict() == {date(2018, 8, 8): 1.0, date(2018, 8, 9): 0.0}
    assert card_precision_at_k(scored, k=1) == 0.5


def test_card_precision_undetected_card_stays() -> None:
    scored = _frame(
        [
            # Card a is ranked below k on day 1, so it is not detected.
            ("b", "2018-08-08T10:00:00", 0, 0.9),
            ("a", "2018-08-08T10:00:00", 1, 0.5),
            ("a", "2018-08-09T10:00:00", 1, 0.9),
            ("b", "2018-08-09T10:00:00", 0, 0.5),
        ]
    )

    daily = daily_card_precision_at_k(scored, k=1)

    assert daily.tolist() == [0.0, 1.0]


def test_card_precision_max_score_and_any_fraud() -> None:
    scored = _frame(
        [
            # Card a: its genuine transaction has the top score, another is fraud.
            ("a", "2018-08-08T09:00:00", 0, 0.95),
            ("a", "2018-08-08T10:00:00", 1, 0.10),
            ("b", "2018-08-08T10:00:00", 1, 0.90),
        ]
    )

    assert card_precision_at_k(scored, k=1) == 1.0
    assert daily_card_precision_at_k(scored, k=2).tolist() == [1.0]


def test_card_precision_divides_by_k() -> None:
    scored = _frame(
        [
            ("a", "2018-08-08T10:00:00", 1, 0.9),
            ("b", "2018-08-08T10:00:00", 1, 0.8),
            ("c", "2018-08-08T10:00:00", 0, 0.7),
        ]
    )

    assert card_precision_at_k(scored, k=100) == pytest.approx(0.02)


def test_card_precision_ties_ranked_by_card_id() -> None:
    scored = _frame(
        [
            ("b", "2018-08-08T10:00:00", 1, 0.5),
            ("a", "2018-08-08T10:00:00", 0, 0.5),
        ]
    )

    assert card_precision_at_k(scored, k=1) == 0.0


def test_card_precision_days_are_utc() -> None:
    scored = _frame(
        [
            ("a", "2018-08-08T23:59:59", 1, 0.9),
            ("b", "2018-08-09T00:00:00", 1, 0.9),
        ]
    )

    assert list(daily_card_precision_at_k(scored, k=1).index) == [
        date(2018, 8, 8),
        date(2018, 8, 9),
    ]


def test_card_precision_nonpositive_k_raises() -> None:
    scored = _frame([("a", "2018-08-08T10:00:00", 1, 0.9)])

    with pytest.raises(ValueError, match="k must be a positive number of cards, got 0"):
        card_precision_at_k(scored, k=0)


def test_card_precision_empty_input_raises() -> None:
    with pytest.raises(ValueError, match="at least one scored transaction"):
        card_precision_at_k(_frame([]), k=1)


def test_auc_roc_and_average_precision_perfect_ranking() -> None:
    scored = _frame(
        [
            ("a", "2018-08-08T10:00:00", 1, 0.9),
            ("b", "2018-08-08T10:00:00", 0, 0.1),
            ("c", "2018-08-08T10:00:00", 0, 0.2),
        ]
    )

    assert auc_roc(scored) == 1.0
    assert average_precision(scored) == 1.0


def test_auc_roc_single_class_raises() -> None:
    scored = _frame([("a", "2018-08-08T10:00:00", 0, 0.9)])

    with pytest.raises(ValueError, match=r"both classes 0 and 1, got \[0\]"):
        auc_roc(scored)


def test_evaluate_scores_other_score_column() -> None:
    scored = _frame(
        [
            ("a", "2018-08-08T10:00:00", 1, 0.0),
            ("b", "2018-08-08T10:00:00", 0, 0.0),
        ]
    ).assign(probability=[0.8, 0.3])

    metrics = evaluate_scores(scored, k=1, score_column="probability")

    assert metrics == {
        "auc_roc": 1.0,
        "average_precision": 1.0,
        "card_precision_at_1": 1.0,
    }
