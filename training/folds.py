"""Prequential folds of the handbook's chapter-5 protocol, built from the offline store.

Each fold keeps the chapter-3 layout of :class:`training.evaluation.SplitWindow`:
a 7-day training week, a 7-day gap and a 7-day test week. Four folds a week
apart form a set, and two sets are used:

* validation folds, training on the weeks starting 2018-06-20, 06-27, 07-04 and
  07-11. The hyperparameter search uses only these;
* test folds, training on the weeks starting 2018-07-25, 08-01, 08-08 and 08-15,
  so they test 2018-08-08..09-04.

A fold's model is trained at its cut-off, the start of its first test day. Its
training rows are the training week's transactions whose label was known by
then (``label_ms`` before the cut-off). A label that arrived later is left out,
as it would be in production. The test rows carry the labels known at the end
of the data, and the cards known to be compromised are removed from them by
:func:`training.evaluation.remove_known_compromised`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd

from fraudcore.features import LABEL_DELAY_DAYS, WINDOW_DAYS
from training.dataset import sort_transactions
from training.errors import InputDataError
from training.evaluation import (
    TIME_COLUMN,
    SplitWindow,
    day_number,
    remove_known_compromised,
    utc_day_numbers,
)

log = logging.getLogger(__name__)

FOLD_COUNT = 4
FOLD_STEP_DAYS = 7
FIRST_VALIDATION_TRAIN_START = date(2018, 6, 20)
FIRST_TEST_TRAIN_START = date(2018, 7, 25)

# Days of history the first training day needs: the terminal windows end the
# label delay before the transaction and reach back the longest window from there.
FEATURE_HISTORY_DAYS = max(WINDOW_DAYS) + LABEL_DELAY_DAYS

_LABEL_COLUMNS = ["transaction_id", "label_ms", "fraud"]


@dataclass(frozen=True)
class Fold:
    """One prequential fold: its name, its periods and its cut-off."""

    name: str
    window: SplitWindow

    @property
    def cutoff_ms(self) -> int:
        """Epoch milliseconds of the first test day's start, when the model is fit."""
        return day_start_ms(self.window.test_start)

    @property
    def end_ms(self) -> int:
        """Epoch milliseconds of the end of the last test day (exclusive)."""
        return day_start_ms(self.window.test_dates()[-1] + timedelta(days=1))


@dataclass(frozen=True)
class FoldData:
    """Training and filtered test rows of one fold."""

    fold: Fold
    train: pd.DataFrame
    test: pd.DataFrame


def day_start_ms(day: date) -> int:
    """Return epoch milliseconds of 00:00 UTC on ``day``."""
    return int(datetime.combine(day, time(), tzinfo=UTC).timestamp() * 1000)


def prequential_folds(
    first_train_start: date,
    kind: str,
    count: int = FOLD_COUNT,
    step_days: int = FOLD_STEP_DAYS,
) -> tuple[Fold, ...]:
    """Return ``count`` folds whose training weeks start ``step_days`` apart."""
    return tuple(
        Fold(
            name=f"{kind}-{index + 1}",
            window=SplitWindow(
                train_start=first_train_start + timedelta(days=index * step_days)
            ),
        )
        for index in range(count)
    )


VALIDATION_FOLDS = prequential_folds(FIRST_VALIDATION_TRAIN_START, "validation")
TEST_FOLDS = prequential_folds(FIRST_TEST_TRAIN_START, "test")


def required_span(folds: tuple[Fold, ...]) -> tuple[date, date]:
    """Return the first and last day the offline store must cover for ``folds``.

    The first day lies ``FEATURE_HISTORY_DAYS`` before the earliest training day,
    so that every window of every training row is complete.
    """
    first = min(fold.window.train_start for fold in folds)
    last = max(fold.window.test_dates()[-1] for fold in folds)
    return first - timedelta(days=FEATURE_HISTORY_DAYS), last


def labels_known_at(labels: pd.DataFrame, cutoff_ms: int) -> pd.DataFrame:
    """Return the label rows that became known before ``cutoff_ms``."""
    return labels[labels["label_ms"] < cutoff_ms]


def view_at(
    features: pd.DataFrame, labels: pd.DataFrame, cutoff_ms: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return what the stores contained at ``cutoff_ms``.

    The view has the feature rows of transactions before the cut-off and the
    labels known before it. The hyperparameter search runs on such a view, so
    nothing of the test folds can reach it.
    """
    return features[features[TIME_COLUMN] < cutoff_ms], labels_known_at(
        labels, cutoff_ms
    )


def build_fold(features: pd.DataFrame, labels: pd.DataFrame, fold: Fold) -> FoldData:
    """Build the training and test rows of one fold.

    Parameters
    ----------
    features : pandas.DataFrame of shape (n_transactions, n_feature_columns)
        Feature rows as :func:`training.dataset.load_features` returns them.
    labels : pandas.DataFrame of shape (n_labels, n_label_columns)
        Label rows as :func:`training.dataset.load_labels` returns them, with
        ``label_ms`` the time each label became known.
    fold : Fold

    Returns
    -------
    FoldData
        ``train``: the training week's rows with a label known before the
        cut-off. ``test``: the test week's labelled rows without the cards
        known to be compromised. Both have the feature columns plus
        ``label_ms`` and ``fraud``, in transaction order.

    Raises
    ------
    InputDataError
        If a day of the training or the test period has no labelled
        transactions, or the training rows have only one class.
    """
    window = fold.window
    days = utc_day_numbers(features[TIME_COLUMN])
    in_train = _in_days(days, window.train_start, window.train_days)
    # The gap's labelled rows decide which test cards count as compromised.
    through_test = (days >= day_number(window.train_start)) & (
        features[TIME_COLUMN] < fold.end_ms
    )

    known = labels_known_at(labels, fold.cutoff_ms)
    train = _join(features[in_train], known)
    late = int(in_train.sum()) - len(train)
    if late:
        log.info(
            "%s: %d training transactions have no label known at the cut-off "
            "and are left out",
            fold.name,
            late,
        )
    labelled = _join(features[through_test], labels)
    test_days = utc_day_numbers(labelled[TIME_COLUMN])
    test = labelled[_in_days(test_days, window.test_start, window.test_days)]
    _require_rows(fold, "training", train, window.train_dates())
    _require_rows(fold, "test", test, window.test_dates())
    if train["fraud"].nunique() != 2:
        raise InputDataError(
            f"{fold.name}: the training week {window.train_start} has labels of "
            f"one class only ({sorted(train['fraud'].unique())}); expected both."
        )
    test = remove_known_compromised(test, labelled, window)
    return FoldData(fold, train.reset_index(drop=True), test.reset_index(drop=True))


def _join(features: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    joined = features.merge(
        labels[_LABEL_COLUMNS], on="transaction_id", how="inner", validate="1:1"
    )
    return sort_transactions(joined)


def _in_days(day_numbers: pd.Series, start: date, days: int) -> pd.Series:
    first = day_number(start)
    return (day_numbers >= first) & (day_numbers < first + days)


def _require_rows(
    fold: Fold, period: str, rows: pd.DataFrame, dates: list[date]
) -> None:
    present = set(utc_day_numbers(rows[TIME_COLUMN]).unique())
    missing = [str(day) for day in dates if day_number(day) not in present]
    if missing:
        known = " known at the cut-off" if period == "training" else ""
        raise InputDataError(
            f"{fold.name}: no transactions with a label{known} on "
            f"{', '.join(missing)} of the {period} period {dates[0]}..{dates[-1]}; "
            "expected every day of it in the offline store."
        )
