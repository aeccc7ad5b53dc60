"""Decision log and throttled warnings of the scoring service.

Handlers and formats are set only by the entry point (:mod:`services.scorer.__main__`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson

from fraudcore.schema import TransactionRecord

# The entry point gives this logger a bare "%(message)s" format, so that each
# decision is one JSON object per line.
decision_logger = logging.getLogger("services.scorer.decisions")
logger = logging.getLogger(__name__)

PSEUDONYM_HEX_CHARS = 16
LOGGED_FIELDS = (
    "probability",
    "decision",
    "model_version",
    "shadow_versions",
    "feature_source",
    "degraded",
    "feature_age_ms",
    "segment",
    "rules",
    "reasons",
    "decided_at",
)


class DecisionLog:
    """Writes one JSON object per scoring decision, with pseudonymous ids.

    Customer, terminal and device ids are replaced by a truncated HMAC-SHA256 under
    a secret key. A plain hash would not hide them, because the id space is small
    enough to hash in full. The transaction id is logged as sent, so that a
    decision can be joined with the transaction.
    """

    def __init__(self, key: bytes | None) -> None:
        if key is None:
            logger.warning(
                "FRAUD_LOG_HASH_KEY is not set; using a random key, so id hashes "
                "in the decision log match only within this process"
            )
            key = secrets.token_bytes(32)
        self._key = key

    def pseudonym(self, identifier: str) -> str:
        """Return the keyed hash that replaces ``identifier`` in logs."""
        digest = hmac.new(self._key, identifier.encode(), hashlib.sha256)
        return digest.hexdigest()[:PSEUDONYM_HEX_CHARS]

    def write(self, record: TransactionRecord, response: Mapping[str, Any]) -> None:
        """Log a new decision at INFO under the ``score_decision`` event.

        ``response`` contains the fields of :class:`~services.scorer.schemas.ScoreOut`.
        """
        if not decision_logger.isEnabledFor(logging.INFO):
            return
        entry = {
            "event": "score_decision",
            "transaction_id": record.transaction_id,
            "customer": self.pseudonym(record.customer_id),
            "terminal": self.pseudonym(record.terminal_id),
            "device": None
            if record.device_id is None
            else self.pseudonym(record.device_id),
            "timestamp": record.timestamp,
        }
        entry |= {name: response[name] for name in LOGGED_FIELDS}
        decision_logger.info("%s", orjson.dumps(entry).decode())


class ThrottledWarning:
    """Logs a warning at most once per interval and counts the repeats it dropped.

    During an outage every request fails the same way, and one line per request
    would flood the log.
    """

    def __init__(self, target: logging.Logger, interval_seconds: float = 10.0) -> None:
        self._logger = target
        self._interval = interval_seconds
        self._next_allowed = 0.0
        self._dropped = 0

    def warn(self, message: str, *args: object) -> None:
        """Log ``message % args`` unless a warning was logged within the interval."""
        now = time.monotonic()
        if now < self._next_allowed:
            self._dropped += 1
            return
        if self._dropped:
            message += " (%d similar warnings dropped)"
            args = (*args, self._dropped)
        self._logger.warning(message, *args)
        self._next_allowed = now + self._interval
        self._dropped = 0
