"""Promotion guard: compare a challenger's shadow scores with production's decisions.

The scorer records the score of every shadow (and canary) model in
``shadow_scores`` and the deciding model's score in ``scored_transactions``.
The guard pairs both on the transactions that have a label in
``transaction_labels`` and compares their average precision, which suits the
rare positive class better than AUC ROC. A transaction with several labels
(chargeback and review) counts as fraud when any of them is fraud.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from sklearn.metrics import average_precision_score

from training.registry import PromotionRejected

log = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.02
DEFAULT_MIN_LABELLED = 200
DEFAULT_MIN_FRAUDS = 5

PAIRED_SCORES_SQL = """
SELECT s.probability, d.probability, l.fraud
FROM shadow_scores s
JOIN scored_transactions d
    ON d.transaction_id = s.transaction_id AND d.model_version = %(production)s
JOIN (
    SELECT transaction_id, max(fraud) AS fraud
    FROM transaction_labels GROUP BY transaction_id
) l ON l.transaction_id = s.transaction_id
WHERE s.model_version = %(challenger)s
"""


@dataclass(frozen=True)
class ShadowComparison:
    """Average precision of both models on the same labelled transactions."""

    labelled: int
    frauds: int
    challenger_ap: float | None
    production_ap: float | None


@dataclass(frozen=True)
class ShadowGuard:
    """Reject a challenger worse than production by more than ``margin`` in AP.

    Attributes:
        margin: Maximum drop in average precision (absolute, 0 to 1) accepted.
        min_labelled: Minimum labelled transactions with both scores.
        min_frauds: Minimum frauds among them, since average precision over a
            handful of positives is mostly noise.
    """

    margin: float = DEFAULT_MARGIN
    min_labelled: int = DEFAULT_MIN_LABELLED
    min_frauds: int = DEFAULT_MIN_FRAUDS

    def __call__(
        self, conn: psycopg.Connection[Any], challenger: str, production: str | None
    ) -> None:
        """Raise PromotionRejected unless ``challenger`` may replace ``production``.

        With no production version there is nothing to compare, and the
        promotion passes.
        """
        if production is None:
            log.info("no production model to compare %s with", challenger)
            return
        found = compare_shadow(conn, challenger, production)
        if found.labelled < self.min_labelled or found.frauds < self.min_frauds:
            raise PromotionRejected(
                f"only {found.labelled} labelled shadow results ({found.frauds} "
                f"frauds) pair {challenger!r} with production {production!r}, and "
                f"the guard needs at least {self.min_labelled} with "
                f"{self.min_frauds} frauds; shadow it longer or use --force"
            )
        assert found.challenger_ap is not None and found.production_ap is not None
        if found.challenger_ap < found.production_ap - self.margin:
            raise PromotionRejected(
                f"average precision of {challenger!r} is {found.challenger_ap:.4f} "
                f"on {found.labelled} labelled shadow transactions, below "
                f"production {production!r} at {found.production_ap:.4f} by more "
                f"than the margin {self.margin:g}; use --force to promote anyway"
            )
        log.info(
            "guard passed: %s AP %.4f vs production %s AP %.4f on %d labelled",
            challenger,
            found.challenger_ap,
            production,
            found.production_ap,
            found.labelled,
        )


def compare_shadow(
    conn: psycopg.Connection[Any], challenger: str, production: str
) -> ShadowComparison:
    """Compute both models' average precision on their paired labelled scores.

    Missing tables (a scorer never ran against this database) count as no scores.
    """
    try:
        with conn.transaction():
            rows = conn.execute(
                PAIRED_SCORES_SQL, {"challenger": challenger, "production": production}
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        rows = []
    if not rows:
        return ShadowComparison(0, 0, None, None)
    scores = np.asarray(rows, dtype=np.float64)
    labels = scores[:, 2].astype(np.int64)
    frauds = int(labels.sum())
    if frauds == 0:
        return ShadowComparison(len(rows), 0, None, None)
    return ShadowComparison(
        labelled=len(rows),
        frauds=frauds,
        challenger_ap=float(average_precision_score(labels, scores[:, 0])),
        production_ap=float(average_precision_score(labels, scores[:, 1])),
    )
