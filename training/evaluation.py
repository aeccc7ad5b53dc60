"""Train/test split and metrics of the handbook's chapter-3 baseline protocol.

The protocol (Le Borgne et al., "Reproducible Machine Learning for Credit Card
Fraud Detection - Practical Handbook", 2022, chapter 3):

* train on 7 days, leave a 7-day gap in which labels are not known yet, and test
  on the next 7 days. Days are UTC calendar days of ``event_ms``;
* remove from the test days the cards already known to be compromised: those
  with a fraud in the training week, plus, for each test day, those with a fraud
  on the day ``gap_days + 1`` days earlier, accumulated day by day;
* report AUC ROC and Average Precision over the test transactions, and Card
  Precision@k averaged over the test days.

The functions take a DataFrame with ``customer_id``, ``event_ms``, ``fraud`` and,
for the metrics, a score column. A customer id is a card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from fraudcore.timeutil import MS_PER_DAY
from training.errors import InputDataError

log = logging.getLogger(__name__)

CARD_COLUMN = "customer_id"
TIME_COLUMN = "event_ms"
LABEL_COLUMN = "fraud"
SCORE_COLUMN = "score"

_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class SplitWindow:
    """Train, gap and test periods in UTC days, starting on ``train_start``."""

    train_start: date
    train_days: int = 7
    gap_days: int = 7
    test_days: int = 7

    @property
    def test_start(self) -> date:
        """First test day."""
        return self.train_start + timedelta(days=self.train_days + self.gap_days)

    def train_dates(self) -> list[date]:
        """Return the training days in order."""
        return _date_range(self.train_start, self.train_days)

    def test_dates(self) -> list[date]:
        """Return the test days in order."""
        return _date_range(self.test_start, self.test_days)


CHAPTER3_WINDOW = SplitWindow(train_start=date(2018, 7, 25))


def utc_day_numbers(event_ms: pd.Series) -> pd.Series:
    """Return the UTC day of each epoch-millisecond time as days since 1970-01-01."""
    return event_ms.astype("int64") // MS_PER_DAY


def day_number(day: date) -> int:
    """Return a calendar day as days since 1970-01-01."""
    return (day - _EPOCH).days


def split_train_test(
    labelled: pd.DataFrame, window: SplitWindow = CHAPTER3_WINDOW
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split labelled transactions into the training week and the filtered test week.

    Parameters
    ----------
    labelled : pandas.DataFrame of shape (n_transactions, n_columns)
        Transactions with at least ``customer_id``, ``event_ms`` and ``fraud``.
        It must cover the gap days too, because their frauds decide which test
        cards count as known to be compromised.
    window : SplitWindow
        The periods; the default is the book's 2018-07-25 split.

    Returns
    -------
    train : pandas.DataFrame of shape (n_train, n_columns)
    test : pandas.DataFrame of shape (n_test, n_columns)
        Test rows without the cards known to be compromised, see
        :func:`remove_known_compromised`.

    Raises
    ------
    InputDataError
        If the training or the test period has no transactions.
    """
    days = utc_day_numbers(labelled[TIME_COLUMN])
    train = labelled[_in_days(days, window.train_start, window.train_days)]
    test = labelled[_in_days(days, window.test_start, window.test_days)]
    for name, rows, dates in (
        ("training", train, window.train_dates()),
        ("test", test, window.test_dates()),
    ):
        if rows.empty:
            raise InputDataError(
                f"no labelled transactions in the {name} period "
                f"{dates[0]}..{dates[-1]}; expected {len(dates)} days of data."
            )
        _warn_missing_days(rows, dates, name)
    return train, remove_known_compromised(test, labelled, window)


def remove_known_compromised(
    test: pd.DataFrame, labelled: pd.DataFrame, window: SplitWindow = CHAPTER3_WINDOW
) -> pd.DataFrame:
    """Remove test transactions of cards already known to be compromised.

    A card counts as known on test day ``d`` when it has a fraud on a day from
    ``window.train_start`` to ``d - gap_days - 1``: the training week plus the
    days whose labels are known by ``d``. Frauds before ``train_start`` are not
    counted, as in the book.

    Parameters
    ----------
    test : pandas.DataFrame of shape (n_test, n_columns)
        Test transactions with ``customer_id`` and ``event_ms``.
    labelled : pandas.DataFrame of shape (n_labelled, n_other_columns)
        Labelled transactions with ``customer_id``, ``event_ms`` and ``fraud``,
        covering the training week and the gap.
    window : SplitWindow
        The periods of the split.

    Returns
    -------
    pandas.DataFrame of shape (n_kept, n_columns)
        The test rows that remain, in their original order.
    """
    is_fraud = labelled[LABEL_COLUMN].to_numpy() == 1
    frauds = pd.DataFrame(
        {
            "card": labelled[CARD_COLUMN].to_numpy()[is_fraud],
            "day": utc_day_numbers(labelled[TIME_COLUMN]).to_numpy()[is_fraud],
        }
    )
    counted = frauds[frauds["day"] >= day_number(window.train_start)]
    first_fraud_day = counted.groupby("card")["day"].min()

    test_days = utc_day_numbers(test[TIME_COLUMN])
    known_since = test[CARD_COLUMN].map(first_fraud_day)
    # A fraud on day f is known from test day f + gap_days + 1 on.
    known = known_since.notna() & (known_since + window.gap_days + 1 <= test_days)
    log.info(
        "removed %d test transactions of %d cards known to be compromised",
        int(known.sum()),
        test.loc[known, CARD_COLUMN].nunique(),
    )
    return test[~known]


def auc_roc(scored: pd.DataFrame, score_column: str = SCORE_COLUMN) -> float:
    """Compute the area under the ROC curve over all rows.

    Raises
    ------
    ValueError
        If the labels do not contain both classes.
    """
    _require_both_classes(scored, "AUC ROC")
    return float(roc_auc_score(scored[LABEL_COLUMN], scored[score_column]))


def average_precision(scored: pd.DataFrame, score_column: str = SCORE_COLUMN) -> float:
    """Compute the Average Precision (area under the precision-recall curve).

    Raises
    ------
    ValueError
        If the labels do not contain both classes.
    """
    _require_both_classes(scored, "Average Precision")
    return float(average_precision_score(scored[LABEL_COLUMN], scored[score_column]))


def daily_card_precision_at_k(
    scored: pd.DataFrame, k: int = 100, score_column: str = SCORE_COLUMN
) -> pd.Series:
    """Compute Card Precision@k for each UTC day, in day order.

    On each day, the cards detected on earlier days are left out. Each remaining
    card gets its highest score of the day, and counts as fraud if any of its
    transactions that day is fraud. The precision is the number of fraud cards
    among the ``k`` highest-scored cards, divided by ``k`` even when fewer than
    ``k`` cards remain. Those fraud cards count as detected from then on. Equal
    scores are ranked by card id, so the result is deterministic.

    Parameters
    ----------
    scored : pandas.DataFrame of shape (n_transactions, n_columns)
        Transactions with ``customer_id``, ``event_ms``, ``fraud`` and the score.
    k : int
        Number of cards a day that investigators can check.
    score_column : str
        Column holding the fraud score; higher means more suspicious.

    Returns
    -------
    pandas.Series of shape (n_days,)
        Precision per day, indexed by ``datetime.date``.
    """
    if k < 1:
        raise ValueError(f"k must be a positive number of cards, got {k}.")
    cards = pd.DataFrame(
        {
            "day": utc_day_numbers(scored[TIME_COLUMN]),
            "card": scored[CARD_COLUMN],
            "score": scored[score_column],
            "fraud": scored[LABEL_COLUMN],
        }
    )
    daily = cards.groupby(["day", "card"], sort=True).max().reset_index()

    detected: set[object] = set()
    precisions: dict[date, float] = {}
    for day, day_cards in daily.groupby("day", sort=True):
        remaining = day_cards[~day_cards["card"].isin(detected)]
        top = remaining.sort_values(
            ["score", "card"], ascending=[False, True], kind="stable"
        ).head(k)
        found = top.loc[top["fraud"] == 1, "card"]
        precisions[_EPOCH + timedelta(days=int(day))] = len(found) / k
        detected.update(found)
    return pd.Series(precisions, name=f"card_precision_at_{k}", dtype="float64")


def card_precision_at_k(
    scored: pd.DataFrame, k: int = 100, score_column: str = SCORE_COLUMN
) -> float:
    """Compute the mean over days of :func:`daily_card_precision_at_k`.

    Raises
    ------
    ValueError
        If ``scored`` is empty or ``k`` is not positive.
    """
    if scored.empty:
        raise ValueError(
            "Card Precision@k needs at least one scored transaction, got none."
        )
    return float(daily_card_precision_at_k(scored, k, score_column).mean())


def evaluate_scores(
    scored: pd.DataFrame, k: int = 100, score_column: str = SCORE_COLUMN
) -> dict[str, float]:
    """Compute the protocol's three metrics on scored test transactions.

    Returns
    -------
    dict
        ``auc_roc``, ``average_precision`` and ``card_precision_at_<k>``.
    """
    return {
        "auc_roc": auc_roc(scored, score_column),
        "average_precision": average_precision(scored, score_column),
        f"card_precision_at_{k}": card_precision_at_k(scored, k, score_column),
    }


def _date_range(start: date, days: int) -> list[date]:
    return [start + timedelta(days=offset) for offset in range(days)]


def _in_days(day_numbers: pd.Series, start: date, days: int) -> pd.Series:
    first = day_number(start)
    return (day_numbers >= first) & (day_numbers < first + days)


def _warn_missing_days(rows: pd.DataFrame, dates: list[date], name: str) -> None:
    present = set(utc_day_numbers(rows[TIME_COLUMN]).unique())
    missing = [str(day) for day in dates if day_number(day) not in present]
    if missing:
        log.warning("the %s period has no transactions on %s", name, ", ".join(missing))


def _require_both_classes(scored: pd.DataFrame, metric: str) -> None:
    classes = np.unique(scored[LABEL_COLUMN].to_numpy())
    if len(classes) != 2:
        raise ValueError(
            f"{metric} needs labels of both classes 0 and 1, got {classes.tolist()}."
        )
