"""The customer segment as a model input of the training jobs.

A training run given a segmentation version joins that version's segments
(offline store, ``segments/version=<v>/part.parquet``) onto its rows by
``customer_id`` and appends ``CUSTOMER_SEGMENT`` to the model inputs. Customers
without a segment in the version get ``NO_SEGMENT``, as in the scorer.

A segment is built from each customer's whole profile span, so it looks ahead
of every transaction inside that span. A version is therefore accepted only when
its profiles stop at or before the first training day of the run, as the
segmentation job's ``--end DAY`` records it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from fraudcore.segments import CUSTOMER_SEGMENT, NO_SEGMENT
from training.errors import InputDataError
from training.segmentation.publish import (
    load_segments,
    offline_versions,
    read_profiles_end,
)

log = logging.getLogger(__name__)

# Value of --segmentation-version that selects the newest version of the store.
LATEST_VERSION = "latest"


@dataclass(frozen=True)
class SegmentInput:
    """One segmentation version, read for training.

    Attributes
    ----------
    version : str
        The segmentation version, as published.
    profiles_end : datetime.date
        UTC day at which the profiles behind the segments stop, not included.
    segments : pandas.DataFrame of shape (n_customers, 2)
        ``customer_id`` (str) and ``segment`` (int).
    """

    version: str
    profiles_end: date
    segments: pd.DataFrame


def load_segment_input(offline_store: Path, requested: str) -> SegmentInput:
    """Read a segmentation version and its profile cut-off from the offline store.

    Parameters
    ----------
    offline_store : Path
    requested : str
        A segmentation version, or ``LATEST_VERSION`` for the newest one.

    Returns
    -------
    SegmentInput

    Raises
    ------
    InputDataError
        If the version is malformed or missing, or was published without a
        profile cut-off.
    """
    version = None if requested == LATEST_VERSION else requested
    frame = load_segments(offline_store, version)
    version = str(frame["segmentation_version"].iloc[0]) if version is None else version
    profiles_end = read_profiles_end(offline_store, version)
    if profiles_end is None:
        raise InputDataError(
            f"segmentation version {version!r} was published without a profile "
            "cut-off, so its segments may look ahead of the training rows; "
            "re-run the segmentation job with --end set to the first training day."
        )
    log.info(
        "read %d segments of version %s (profiles before %s; versions in store: %d)",
        len(frame),
        version,
        profiles_end,
        len(offline_versions(offline_store)),
    )
    return SegmentInput(version, profiles_end, frame[["customer_id", "segment"]])


def check_no_lookahead(segments: SegmentInput, first_training_day: date) -> None:
    """Reject segments whose profiles read transactions of the training rows.

    Raises
    ------
    InputDataError
        If the profiles stop after ``first_training_day``.
    """
    if segments.profiles_end > first_training_day:
        raise InputDataError(
            f"segmentation version {segments.version!r} was built from profiles "
            f"up to {segments.profiles_end} (not included), after the first "
            f"training day {first_training_day}, so it looks ahead; expected "
            f"profiles that stop on or before {first_training_day}."
        )


def add_segment_column(frame: pd.DataFrame, segments: SegmentInput) -> pd.DataFrame:
    """Return ``frame`` with a float ``CUSTOMER_SEGMENT`` column by ``customer_id``.

    Parameters
    ----------
    frame : pandas.DataFrame of shape (n_rows, n_columns)
        Rows with a ``customer_id`` column.
    segments : SegmentInput

    Returns
    -------
    pandas.DataFrame of shape (n_rows, n_columns + 1)
        ``NO_SEGMENT`` where a customer has no segment in the version.
    """
    by_customer = segments.segments.set_index("customer_id")["segment"]
    values = frame["customer_id"].astype(str).map(by_customer).astype("float64")
    missing = int(values.isna().sum())
    if missing:
        log.info(
            "%d of %d rows have no segment in version %s and get %s",
            missing,
            len(frame),
            segments.version,
            NO_SEGMENT,
        )
    return frame.assign(**{CUSTOMER_SEGMENT: values.fillna(NO_SEGMENT)})


def join_segment_version(
    frame: pd.DataFrame,
    offline_store: Path,
    requested: str | None,
    first_training_day: date,
) -> tuple[pd.DataFrame, str | None]:
    """Read a version, check it for look-ahead and add its segments to ``frame``.

    Returns
    -------
    frame : pandas.DataFrame of shape (n_rows, n_columns + 1)
        As :func:`add_segment_column` returns it; ``frame`` itself when
        ``requested`` is None.
    version : str or None
        The version read, ``LATEST_VERSION`` resolved; None when ``requested``
        is None.

    Raises
    ------
    InputDataError
        As :func:`load_segment_input` and :func:`check_no_lookahead` raise it.
    """
    if requested is None:
        return frame, None
    segments = load_segment_input(offline_store, requested)
    check_no_lookahead(segments, first_training_day)
    return add_segment_column(frame, segments), segments.version
