"""Upper bound of the test metrics that any honest model can reach on the handbook data.

The simulator's compromised terminals (fraud scenario 2) turn every transaction
of a terminal into fraud for 28 days, with ordinary amounts and customers. Until
the first of those frauds is labelled, 7 days later, nothing that a model may
see distinguishes such a transaction from a genuine one. The bound gives every other
fraud a score above every genuine transaction, which no model reaches, and
ranks the unseen frauds at random among the genuine ones:

* detectable: scenario 1 and 3 frauds, and scenario 2 frauds at least
  ``LABEL_DELAY_DAYS`` after the start of their terminal's compromise;
* score 1 for a detectable fraud, 0 otherwise, plus a small random term that
  breaks ties at random.

The fraud-scenario column is read here only to mark the unseen frauds. It is
never a model input. The folds, the removal of known-compromised cards and the
metrics are the training job's own. ``python -m training.ceiling`` writes
``reports/training/ceiling.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraudcore.features import LABEL_DELAY_DAYS
from fraudcore.settings import REPO_ROOT, PlatformSettings
from training.evaluation import (
    SCORE_COLUMN,
    evaluate_scores,
    split_train_test,
)
from training.folds import TEST_FOLDS

COMPROMISE_DAYS = 28
TERMINAL_SCENARIO = 2
REPORT_PATH = REPO_ROOT / "reports" / "training" / "ceiling.json"


def compromise_age_days(raw: pd.DataFrame) -> pd.Series:
    """Return the days since the compromise began, for each scenario-2 fraud.

    A compromise begins with a scenario-2 fraud that follows no other scenario-2
    fraud of the same terminal within ``COMPROMISE_DAYS``.

    Parameters
    ----------
    raw : pandas.DataFrame
        Rows of ``transactions.parquet`` with ``TERMINAL_ID``, ``TX_DATETIME``
        and ``TX_FRAUD_SCENARIO``.

    Returns
    -------
    pandas.Series
        Whole days, indexed like the scenario-2 rows of ``raw``.
    """
    frauds = raw.loc[raw["TX_FRAUD_SCENARIO"] == TERMINAL_SCENARIO]
    frauds = frauds.sort_values(["TERMINAL_ID", "TX_DATETIME"], kind="stable")
    gap = frauds.groupby("TERMINAL_ID")["TX_DATETIME"].diff()
    begins = gap.isna() | (gap > pd.Timedelta(days=COMPROMISE_DAYS))
    start = frauds["TX_DATETIME"].where(begins).groupby(frauds["TERMINAL_ID"]).ffill()
    return (frauds["TX_DATETIME"] - start).dt.days


def detectable_frauds(raw: pd.DataFrame) -> pd.Series:
    """Return True for each fraud that labels known at its time could reveal."""
    detectable = raw["TX_FRAUD"] == 1
    age = compromise_age_days(raw)
    detectable.loc[age.index] = age >= LABEL_DELAY_DAYS
    return detectable


def transactions_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """Return the columns that the evaluation code expects, with ``detectable``."""
    return pd.DataFrame(
        {
            "transaction_id": raw["TRANSACTION_ID"],
            "customer_id": raw["CUSTOMER_ID"],
            "event_ms": raw["TX_DATETIME"].astype("datetime64[ms]").astype("int64"),
            "fraud": raw["TX_FRAUD"],
            "detectable": detectable_frauds(raw),
        }
    )


def fold_bounds(transactions: pd.DataFrame, seed: int = 0) -> list[dict[str, Any]]:
    """Return the bound and the perfect ranking's metrics for each test fold."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in TEST_FOLDS:
        _, test = split_train_test(transactions, fold.window)
        frauds = test.loc[test["fraud"] == 1]
        perfect = test.assign(**{SCORE_COLUMN: test["fraud"].astype(float)})
        bound = test.assign(
            **{
                SCORE_COLUMN: test["detectable"].astype(float)
                + rng.uniform(0.0, 1e-3, len(test))
            }
        )
        rows.append(
            {
                "fold": fold.name,
                "test_start": str(fold.window.test_start),
                "frauds": len(frauds),
                "unseen_frauds": int((~frauds["detectable"]).sum()),
                "bound": evaluate_scores(bound),
                "perfect_card_precision_at_100": evaluate_scores(perfect)[
                    "card_precision_at_100"
                ],
            }
        )
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Return the mean over folds of the bound's metrics and of the unseen share."""
    frame = pd.DataFrame([row["bound"] for row in rows])
    summary = {f"bound_{name}": float(frame[name].mean()) for name in frame}
    summary["perfect_card_precision_at_100"] = float(
        np.mean([row["perfect_card_precision_at_100"] for row in rows])
    )
    summary["unseen_fraud_share"] = float(
        sum(row["unseen_frauds"] for row in rows) / sum(row["frauds"] for row in rows)
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Compute the bound on the test folds and write it as JSON."""
    settings = PlatformSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--transactions",
        type=Path,
        default=settings.data_dir / "transactions.parquet",
        help="the handbook's transactions.parquet",
    )
    parser.add_argument("--output", type=Path, default=REPORT_PATH)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    columns = ["TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_DATETIME"]
    columns += ["TX_FRAUD", "TX_FRAUD_SCENARIO"]
    try:
        raw = pd.read_parquet(args.transactions, columns=columns)
    except (OSError, ValueError) as exc:
        print(
            f"failed to read {args.transactions}: {exc}; pass --transactions "
            "with the path of the handbook's transactions.parquet.",
            file=sys.stderr,
        )
        return 2
    rows = fold_bounds(transactions_frame(raw))
    report = {"folds": rows, "summary": summarize(rows)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
