"""Offline store built from the handbook's reference features file.

The reference file holds the book's features for 2018-07-25..2018-08-14 under the
book's column names. This module writes the same rows in the stream job's
offline-store layout, so the training job, its tests and the demo can run
without the stream job. The model inputs that the book does not define (the
velocity and device features) come from :mod:`streaming.batch_features` over
the dataset's transactions file. Run ``python -m training.reference --help``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraudcore.features import LABEL_DELAY_DAYS, MAX_LOOKBACK_DAYS, MODEL_INPUTS
from fraudcore.settings import PlatformSettings
from fraudcore.timeutil import MS_PER_DAY
from streaming.batch_features import batch_features
from training.dataset import FEATURE_COLUMNS, FEATURES_DIR, LABEL_COLUMNS, LABELS_DIR

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference-features-2018-07-25-to-2018-08-14.parquet"
TRANSACTIONS_FILE = "transactions.parquet"

# Book column names of the identifiers, the event time and the label.
_BOOK_IDS = {
    "TRANSACTION_ID": "transaction_id",
    "CUSTOMER_ID": "customer_id",
    "TERMINAL_ID": "terminal_id",
}


def reference_to_store_frames(
    reference: pd.DataFrame, transactions: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Convert reference rows to the offline store's feature and label rows.

    The reference file has no label times, so each label is taken to become
    known ``LABEL_DELAY_DAYS`` after its transaction, the delay the book's
    terminal features assume. Naive ``TX_DATETIME`` values are read as UTC.

    Parameters
    ----------
    reference : pandas.DataFrame of shape (n_transactions, n_book_columns)
        Rows of the reference file, with the book's column names.
    transactions : pandas.DataFrame of shape (n_rows, 9), optional
        The dataset's transactions, from which the model inputs missing in
        ``reference`` are computed. They must cover the reference days and the
        ``MAX_LOOKBACK_DAYS`` before them.

    Returns
    -------
    features : pandas.DataFrame of shape (n_transactions, len(FEATURE_COLUMNS))
    labels : pandas.DataFrame of shape (n_transactions, len(LABEL_COLUMNS))

    Raises
    ------
    ValueError
        If ``reference`` lacks model inputs and ``transactions`` is None.
    """
    reference = _with_missing_inputs(reference, transactions)
    event_ms = reference["TX_DATETIME"].astype("datetime64[ms]").astype("int64")
    ids = {
        new: reference[old].astype("int64").astype(str)
        for old, new in _BOOK_IDS.items()
    }
    features = pd.DataFrame(ids | {"event_ms": event_ms})
    for name in MODEL_INPUTS:
        features[name] = reference[name].astype("float64")

    labels = pd.DataFrame(ids)
    labels["transaction_ms"] = event_ms
    labels["label_ms"] = event_ms + LABEL_DELAY_DAYS * MS_PER_DAY
    labels["fraud"] = reference["TX_FRAUD"].astype("int64")
    return features[list(FEATURE_COLUMNS)], labels[list(LABEL_COLUMNS)]


def _with_missing_inputs(
    reference: pd.DataFrame, transactions: pd.DataFrame | None
) -> pd.DataFrame:
    missing = [name for name in MODEL_INPUTS if name not in reference]
    if not missing:
        return reference
    if transactions is None:
        raise ValueError(
            f"reference rows lack the model inputs {missing}; pass the dataset's "
            "transactions to compute them."
        )
    first = reference["TX_DATETIME"].min() - pd.Timedelta(days=MAX_LOOKBACK_DAYS)
    last = reference["TX_DATETIME"].max()
    times = transactions["TX_DATETIME"]
    span = transactions[(times >= first) & (times <= last)]
    computed = batch_features(span).set_index("TRANSACTION_ID")[missing]
    ids = reference["TRANSACTION_ID"]
    absent = ~ids.isin(computed.index)
    if absent.any():
        raise ValueError(
            f"{int(absent.sum())} reference transactions are missing from the "
            f"transactions, such as {ids[absent].iloc[0]!r}; expected the "
            "dataset the reference file was computed from."
        )
    return reference.join(computed, on="TRANSACTION_ID")


def write_offline_store(
    features: pd.DataFrame, labels: pd.DataFrame, offline_store: Path
) -> None:
    """Write feature and label rows as daily partitions with ``_SUCCESS`` markers.

    Feature rows go to the UTC day of ``event_ms`` and labels to the day of
    ``label_ms``, each day as one part file named ``part-00000``.

    Parameters
    ----------
    features : pandas.DataFrame of shape (n_transactions, len(FEATURE_COLUMNS))
    labels : pandas.DataFrame of shape (n_labels, len(LABEL_COLUMNS))
    offline_store : Path
        Root of the store; existing part files of the same days are replaced.
    """
    _write_partitions(
        features, features["event_ms"], Path(offline_store) / FEATURES_DIR
    )
    _write_partitions(labels, labels["label_ms"], Path(offline_store) / LABELS_DIR)


def build_offline_store(
    reference_path: Path, offline_store: Path, transactions_path: Path | None = None
) -> None:
    """Read the reference features file and write it as an offline store.

    Parameters
    ----------
    reference_path : Path
        The reference Parquet file with the book's column names.
    offline_store : Path
        Root of the offline store to write.
    transactions_path : Path, optional
        The dataset's transactions file; by default ``transactions.parquet``
        beside the reference file.
    """
    reference = pd.read_parquet(reference_path)
    if transactions_path is None:
        transactions_path = reference_path.parent / TRANSACTIONS_FILE
    transactions = pd.read_parquet(transactions_path)
    features, labels = reference_to_store_frames(reference, transactions)
    write_offline_store(features, labels, offline_store)
    log.info(
        "wrote %d feature rows and %d labels to %s",
        len(features),
        len(labels),
        offline_store,
    )


def _write_partitions(frame: pd.DataFrame, times_ms: pd.Series, root: Path) -> None:
    days = pd.to_datetime(times_ms, unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    for day, rows in frame.groupby(days.to_numpy(), sort=True):
        folder = root / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(rows, preserve_index=False)
        pq.write_table(table, folder / "part-00000")
        (folder / "_SUCCESS").touch()


def main(argv: Sequence[str] | None = None) -> int:
    """Build an offline store from the reference file; return the exit code."""
    settings = PlatformSettings()
    parser = argparse.ArgumentParser(
        prog="python -m training.reference",
        description="Write the handbook's reference features as an offline store.",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=settings.data_dir / REFERENCE_FILE,
        help="reference features Parquet file (default: %(default)s)",
    )
    parser.add_argument(
        "--offline-store",
        type=Path,
        default=settings.offline_store,
        help="root of the offline store to write (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    build_offline_store(args.reference, args.offline_store)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
