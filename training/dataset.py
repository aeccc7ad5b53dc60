"""Loading of the offline store that the stream job writes.

Layout under the store root, one hive partition per UTC day::

    features/dt=YYYY-MM-DD/<part files>   one row per scored transaction
    labels/dt=YYYY-MM-DD/<part files>     one row per fraud label

Part files are Parquet without a ``.parquet`` suffix. Files whose names start with
``_`` or ``.`` (``_SUCCESS`` markers, temporary files) are skipped.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from fraudcore.features import MODEL_INPUTS
from fraudcore.timeutil import MS_PER_DAY
from training.errors import InputDataError

log = logging.getLogger(__name__)

FEATURES_DIR = "features"
LABELS_DIR = "labels"

ID_COLUMNS = ("transaction_id", "customer_id", "terminal_id")
FEATURE_COLUMNS = (*ID_COLUMNS, "event_ms", *MODEL_INPUTS)
LABEL_COLUMNS = (*ID_COLUMNS, "transaction_ms", "label_ms", "fraud")

_EPOCH = date(1970, 1, 1)

# The dt= directory names only route files; the loader reads days from event_ms,
# so the partition key is read as text and then dropped.
_PARTITIONING = ds.partitioning(pa.schema([("dt", pa.string())]), flavor="hive")


def load_features(offline_store: Path) -> pd.DataFrame:
    """Load the feature rows of the offline store.

    Parameters
    ----------
    offline_store : Path
        Root of the offline store.

    Returns
    -------
    pandas.DataFrame of shape (n_transactions, 4 + len(MODEL_INPUTS))
        ``transaction_id``, ``customer_id``, ``terminal_id`` as str, ``event_ms``
        as int64 and every model input as float64, one row per transaction id.

    Raises
    ------
    InputDataError
        If the folder is missing, contains no rows or lacks a column.
    """
    frame = _read_partitions(Path(offline_store) / FEATURES_DIR, FEATURE_COLUMNS)
    frame = frame.astype({"event_ms": "int64"} | dict.fromkeys(MODEL_INPUTS, "float64"))
    _reject_missing_values(frame, FEATURE_COLUMNS, "features")
    return _drop_duplicate_ids(frame, "features", keep="last")


def load_labels(offline_store: Path) -> pd.DataFrame:
    """Load the label rows of the offline store.

    Parameters
    ----------
    offline_store : Path
        Root of the offline store.

    Returns
    -------
    pandas.DataFrame of shape (n_labels, 6)
        The columns of ``LABEL_COLUMNS``, one row per transaction id. When a
        transaction was labelled twice, the label that became known last is kept.

    Raises
    ------
    InputDataError
        If the folder is missing, contains no rows, lacks a column or has a ``fraud``
        value other than 0 or 1.
    """
    frame = _read_partitions(Path(offline_store) / LABELS_DIR, LABEL_COLUMNS)
    _reject_missing_values(frame, LABEL_COLUMNS, "labels")
    frame = frame.astype({"transaction_ms": "int64", "label_ms": "int64"})
    invalid = ~frame["fraud"].isin((0, 1))
    if invalid.any():
        example = frame.loc[invalid, "fraud"].iloc[0].item()
        raise InputDataError(
            f"label column 'fraud' must be 0 or 1, got {example!r} "
            f"in {int(invalid.sum())} rows."
        )
    frame["fraud"] = frame["fraud"].astype("int64")
    frame = frame.sort_values("label_ms", kind="stable")
    return _drop_duplicate_ids(frame, "labels", keep="last")


def load_labelled_features(offline_store: Path) -> pd.DataFrame:
    """Join the feature rows with their labels on ``transaction_id``.

    Transactions without a label yet (the newest days, because labels arrive
    late) are left out, and so are labels whose transaction has no feature row.

    Parameters
    ----------
    offline_store : Path
        Root of the offline store.

    Returns
    -------
    pandas.DataFrame of shape (n_labelled, 6 + len(MODEL_INPUTS))
        The feature columns plus ``label_ms`` and ``fraud``, in transaction order
        (event time, then transaction id).

    Raises
    ------
    InputDataError
        If either folder is unreadable or no transaction has both a feature row
        and a label.
    """
    features = load_features(offline_store)
    labels = load_labels(offline_store)
    joined = features.merge(
        labels[["transaction_id", "label_ms", "fraud"]],
        on="transaction_id",
        how="inner",
        validate="one_to_one",
    )
    log.info(
        "joined %d feature rows with %d labels into %d labelled transactions",
        len(features),
        len(labels),
        len(joined),
    )
    if joined.empty:
        raise InputDataError(
            f"offline store {offline_store} has no transaction with both a feature "
            "row and a label; expected matching transaction_id values."
        )
    unmatched = len(labels) - len(joined)
    if unmatched:
        log.warning("%d labels have no feature row and are skipped", unmatched)
    return sort_transactions(joined)


def daily_coverage(offline_store: Path) -> pd.DataFrame:
    """Count, per UTC transaction day, the feature rows and the labels of the store.

    Parameters
    ----------
    offline_store : Path
        Root of the offline store.

    Returns
    -------
    pandas.DataFrame of shape (n_days, 3)
        Indexed by ``datetime.date``: ``feature_rows``, ``labels`` and
        ``labels_without_features`` (labelled transactions that have no feature
        row), 0 where a day has none.

    Raises
    ------
    InputDataError
        If either folder is missing, unreadable or empty.
    """
    root = Path(offline_store)
    features = _read_partitions(root / FEATURES_DIR, ("transaction_id", "event_ms"))
    labels = _read_partitions(root / LABELS_DIR, ("transaction_id", "transaction_ms"))
    unmatched = ~labels["transaction_id"].isin(features["transaction_id"])
    counts = pd.DataFrame(
        {
            "feature_rows": _day_counts(features["event_ms"]),
            "labels": _day_counts(labels["transaction_ms"]),
            "labels_without_features": _day_counts(
                labels.loc[unmatched, "transaction_ms"]
            ),
        }
    )
    return counts.fillna(0).astype("int64").sort_index()


def _day_counts(epoch_ms: pd.Series) -> pd.Series:
    counts = pd.Series(epoch_ms.to_numpy(dtype=np.int64) // MS_PER_DAY).value_counts()
    counts.index = [_EPOCH + timedelta(days=int(number)) for number in counts.index]
    return counts


def _read_partitions(folder: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not folder.is_dir():
        raise InputDataError(
            f"offline store folder {folder} does not exist; expected the "
            "stream job's dt=YYYY-MM-DD partitions there."
        )
    try:
        dataset = ds.dataset(
            folder,
            format="parquet",
            partitioning=_PARTITIONING,
            ignore_prefixes=["_", "."],
        )
        missing = [name for name in columns if name not in dataset.schema.names]
        if dataset.files and missing:
            raise InputDataError(
                f"part files under {folder} lack columns {missing}; "
                f"expected {list(columns)}."
            )
        table = dataset.to_table(columns=list(columns)) if dataset.files else None
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(
            f"could not read the Parquet part files under {folder}: {exc}"
        ) from exc
    if table is None or table.num_rows == 0:
        raise InputDataError(
            f"offline store folder {folder} contains no rows; expected Parquet "
            "part files under dt=YYYY-MM-DD partitions."
        )
    log.info(
        "read %d rows from %d files under %s",
        table.num_rows,
        len(dataset.files),
        folder,
    )
    return table.to_pandas()


def _reject_missing_values(
    frame: pd.DataFrame, columns: tuple[str, ...], kind: str
) -> None:
    counts = frame[list(columns)].isna().sum()
    bad = counts[counts > 0]
    if not bad.empty:
        raise InputDataError(
            f"{kind} column {bad.index[0]!r} has {int(bad.iloc[0])} missing "
            "values; expected a value in every row."
        )


def _drop_duplicate_ids(frame: pd.DataFrame, kind: str, keep: str) -> pd.DataFrame:
    # The stream job writes at least once, so a restart can repeat rows.
    duplicated = frame.duplicated("transaction_id", keep=keep)
    if duplicated.any():
        log.warning(
            "dropped %d repeated %s rows of the same transaction_id",
            int(duplicated.sum()),
            kind,
        )
        frame = frame[~duplicated]
    return frame.reset_index(drop=True)


def sort_transactions(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort rows by event time, then transaction id, the same order in every run."""
    # Ids compare by length, then text, so decimal ids sort as numbers.
    keyed = frame.assign(_id_length=frame["transaction_id"].str.len())
    keyed = keyed.sort_values(
        ["event_ms", "_id_length", "transaction_id"], kind="stable"
    )
    return keyed.drop(columns="_id_length").reset_index(drop=True)
