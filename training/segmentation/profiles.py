"""Customer profiles: one row of behavioural features per customer.

The profiles are built from the offline store's feature rows (one row per
transaction). Every profile column describes the customer over the whole span
of rows read. A segment built from that span looks ahead of any transaction
inside it, so a model that uses the segment as an input should be trained on
profiles cut off before its training window (``end`` below).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd

from fraudcore.timeutil import MS_PER_DAY
from training.dataset import load_features
from training.errors import InputDataError

log = logging.getLogger(__name__)

ID_COLUMN = "customer_id"

# Profile columns and what each measures, written to the report as well.
PROFILE_COLUMNS = {
    "transactions_per_day": "transactions divided by the days covered by the rows",
    "active_day_share": "share of the covered days with at least one transaction",
    "amount_mean": "mean TX_AMOUNT",
    "amount_std": "sample standard deviation of TX_AMOUNT (missing with 1 row)",
    "amount_median": "median TX_AMOUNT",
    "amount_max": "largest TX_AMOUNT",
    "night_share": "share of transactions at night (TX_DURING_NIGHT)",
    "weekend_share": "share of transactions on a weekend (TX_DURING_WEEKEND)",
    "distinct_terminals": "number of distinct terminals used",
    "mean_hours_between_transactions": (
        "mean gap between consecutive transactions in hours (missing with 1 row)"
    ),
}


def build_customer_profiles(features: pd.DataFrame) -> pd.DataFrame:
    """Aggregate transaction rows into one profile row per customer.

    Parameters
    ----------
    features : pandas.DataFrame of shape (n_transactions, n_columns)
        Offline-store rows with at least ``customer_id``, ``terminal_id``,
        ``event_ms``, ``TX_AMOUNT``, ``TX_DURING_NIGHT`` and ``TX_DURING_WEEKEND``.

    Returns
    -------
    pandas.DataFrame of shape (n_customers, 1 + len(PROFILE_COLUMNS))
        ``customer_id`` then the profile columns, ordered by customer id (by
        length, then text, so decimal ids sort as numbers).

    Raises
    ------
    InputDataError
        If there are no rows.
    """
    if features.empty:
        raise InputDataError(
            "the offline store has no feature rows in the requested span; "
            "expected at least one transaction."
        )
    days = pd.to_datetime(features["event_ms"], unit="ms", utc=True).dt.floor("D")
    covered_days = days.nunique()
    ordered = features.assign(_day=days).sort_values(
        [ID_COLUMN, "event_ms"], kind="stable"
    )
    gaps_hours = ordered.groupby(ID_COLUMN)["event_ms"].diff() / (MS_PER_DAY / 24)
    grouped = ordered.assign(_gap_hours=gaps_hours).groupby(ID_COLUMN, sort=False)

    profiles = pd.DataFrame(
        {
            "transactions_per_day": grouped.size() / covered_days,
            "active_day_share": grouped["_day"].nunique() / covered_days,
            "amount_mean": grouped["TX_AMOUNT"].mean(),
            "amount_std": grouped["TX_AMOUNT"].std(),
            "amount_median": grouped["TX_AMOUNT"].median(),
            "amount_max": grouped["TX_AMOUNT"].max(),
            "night_share": grouped["TX_DURING_NIGHT"].mean(),
            "weekend_share": grouped["TX_DURING_WEEKEND"].mean(),
            "distinct_terminals": grouped["terminal_id"].nunique().astype("float64"),
            "mean_hours_between_transactions": grouped["_gap_hours"].mean(),
        }
    )
    profiles = profiles.rename_axis(ID_COLUMN).reset_index()
    return _sort_by_id(profiles)


def load_customer_profiles(
    offline_store: Path, start: date | None = None, end: date | None = None
) -> pd.DataFrame:
    """Read the offline store and build the customer profiles of a span of days.

    Parameters
    ----------
    offline_store : Path
        Root of the offline store.
    start, end : datetime.date or None
        First UTC day read and the UTC day where reading stops (not read).
        None reads from the first or to the last row.

    Returns
    -------
    pandas.DataFrame of shape (n_customers, 1 + len(PROFILE_COLUMNS))
        As :func:`build_customer_profiles` returns it.

    Raises
    ------
    InputDataError
        If the store is unreadable or has no rows in the span.
    """
    features = load_features(offline_store)
    keep = pd.Series(True, index=features.index)
    if start is not None:
        keep &= features["event_ms"] >= _day_start_ms(start)
    if end is not None:
        keep &= features["event_ms"] < _day_start_ms(end)
    selected = features[keep]
    log.info(
        "building customer profiles from %d of %d feature rows (start %s, end %s)",
        len(selected),
        len(features),
        start,
        end,
    )
    return build_customer_profiles(selected)


def _day_start_ms(day: date) -> int:
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _sort_by_id(frame: pd.DataFrame) -> pd.DataFrame:
    ids = frame[ID_COLUMN].astype(str)
    keyed = frame.assign(**{ID_COLUMN: ids, "_id_length": ids.str.len()})
    keyed = keyed.sort_values(["_id_length", ID_COLUMN], kind="stable")
    return keyed.drop(columns="_id_length").reset_index(drop=True)
