"""Tests of the prequential folds: periods, label cut-offs and card removal."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from fraudcore.timeutil import MS_PER_DAY
from tests.training.factories import epoch_ms, prequential_rows, store_frames
from training.errors import InputDataError
from training.evaluation import SplitWindow, utc_day_numbers
from training.folds import (
    TEST_FOLDS,
    VALIDATION_FOLDS,
    Fold,
    build_fold,
    day_start_ms,
    required_span,
    view_at,
)

FOLD = TEST_FOLDS[0]


def _frames(first_day: date, days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    return store_frames(prequential_rows(first_day, days, per_day=40))


def _days(frame: pd.DataFrame) -> set[date]:
    epoch = date(1970, 1, 1)
    numbers = utc_day_numbers(frame["event_ms"]).unique()
    return {epoch + timedelta(days=int(number)) for number in numbers}


def test_folds_follow_published_weeks() -> None:
    assert [f.window.train_start for f in VALIDATION_FOLDS] == [
        date(2018, 6, 20),
        date(2018, 6, 27),
        date(2018, 7, 4),
        date(2018, 7, 11),
    ]
    assert [f.window.train_start for f in TEST_FOLDS] == [
        date(2018, 7, 25),
        date(2018, 8, 1),
        date(2018, 8, 8),
        date(2018, 8, 15),
    ]
    assert TEST_FOLDS[0].window.test_start == date(2018, 8, 8)
    assert TEST_FOLDS[-1].window.test_dates()[-1] == date(2018, 9, 4)


def test_fold_cutoff_is_first_test_day() -> None:
    assert FOLD.cutoff_ms == day_start_ms(date(2018, 8, 8))
    assert FOLD.end_ms == day_start_ms(date(2018, 8, 15))


def test_required_span_includes_feature_history() -> None:
    first, last = required_span(VALIDATION_FOLDS + TEST_FOLDS)
    # 30-day terminal windows that end 7 days before the first training day.
    assert first == date(2018, 6, 20) - timedelta(days=37)
    assert last == date(2018, 9, 4)


def test_build_fold_keeps_periods_apart() -> None:
    features, labels = _frames(date(2018, 7, 20), 30)
    data = build_fold(features, labels, FOLD)

    assert _days(data.train) == set(FOLD.window.train_dates())
    assert _days(data.test) == set(FOLD.window.test_dates())
    assert set(data.train["transaction_id"]).isdisjoint(data.test["transaction_id"])
    assert (data.train["label_ms"] < FOLD.cutoff_ms).all()


def test_build_fold_drops_labels_known_after_cutoff() -> None:
    features, labels = _frames(date(2018, 7, 25), 21)
    last_train_day = features["event_ms"] >= day_start_ms(date(2018, 7, 31))
    train_ids = features.loc[
        last_train_day & (features["event_ms"] < day_start_ms(date(2018, 8, 1))),
        "transaction_id",
    ]
    late, on_time = train_ids.iloc[0], train_ids.iloc[1]
    labels = labels.copy()
    labels.loc[labels["transaction_id"] == late, "label_ms"] = FOLD.cutoff_ms
    labels.loc[labels["transaction_id"] == on_time, "label_ms"] = FOLD.cutoff_ms - 1

    train = build_fold(features, labels, FOLD).train

    assert late not in set(train["transaction_id"])
    assert on_time in set(train["transaction_id"])


def test_build_fold_removes_compromised_cards() -> None:
    features, labels = _frames(date(2018, 7, 25), 21)
    in_train_week = labels["transaction_ms"] < day_start_ms(date(2018, 8, 1))
    fraud_ids = labels.loc[(labels["fraud"] == 1) & in_train_week, "transaction_id"]
    card = features.loc[
        features["transaction_id"] == fraud_ids.iloc[0], "customer_id"
    ].iloc[0]
    # Give the compromised card a transaction on the first test day.
    extra = features.iloc[[0]].assign(
        transaction_id="extra",
        customer_id=card,
        event_ms=epoch_ms(FOLD.window.test_start),
    )
    features = pd.concat([features, extra], ignore_index=True)
    labels = pd.concat(
        [
            labels,
            labels.iloc[[0]].assign(
                transaction_id="extra",
                customer_id=card,
                transaction_ms=extra["event_ms"].iloc[0],
                label_ms=extra["event_ms"].iloc[0] + 7 * MS_PER_DAY,
            ),
        ],
        ignore_index=True,
    )

    test = build_fold(features, labels, FOLD).test

    assert "extra" not in set(test["transaction_id"])
    assert card not in set(test["customer_id"])


def test_build_fold_rejects_empty_test_week() -> None:
    features, labels = _frames(date(2018, 7, 25), 10)

    with pytest.raises(InputDataError, match="test-1: no .* label on 2018-08-08"):
        build_fold(features, labels, FOLD)


def test_build_fold_rejects_one_class() -> None:
    features, labels = _frames(date(2018, 7, 25), 21)
    labels = labels.assign(fraud=0)

    with pytest.raises(InputDataError, match="one class only"):
        build_fold(features, labels, FOLD)


def test_view_at_hides_later_rows() -> None:
    features, labels = _frames(date(2018, 7, 25), 21)
    cutoff = FOLD.cutoff_ms

    seen_features, seen_labels = view_at(features, labels, cutoff)

    assert (seen_features["event_ms"] < cutoff).all()
    assert (seen_labels["label_ms"] < cutoff).all()
    assert len(seen_features) == int((features["event_ms"] < cutoff).sum())
    assert len(seen_labels) == int((labels["label_ms"] < cutoff).sum())


def test_build_fold_of_shorter_weeks() -> None:
    fold = Fold("short", SplitWindow(date(2018, 7, 25), train_days=3, test_days=2))
    features, labels = _frames(date(2018, 7, 25), 21)

    data = build_fold(features, labels, fold)

    assert _days(data.train) == set(fold.window.train_dates())
    assert _days(data.test) == {date(2018, 8, 4), date(2018, 8, 5)}


def test_build_fold_with_gap_shorter_than_delay() -> None:
    # Labels arrive 7 days late, so with a 2-day gap the cut-off on 08-03 has
    # only the labels of the transactions before 07-27.
    fold = Fold("short-gap", SplitWindow(date(2018, 7, 25), gap_days=2))
    features, labels = _frames(date(2018, 7, 25), 21)

    with pytest.raises(
        InputDataError, match="label known at the cut-off on 2018-07-27, 2018-07-28"
    ):
        build_fold(features, labels, fold)
