"""Scoring of one transaction: histories, features, model, decision, log."""

from __future__ import annotations

from fraudcore.features import transaction_features
from fraudcore.schema import TransactionRecord
from services.scorer.errors import ModelUnavailable
from services.scorer.feature_store import HistoryQuery
from services.scorer.runtime import Runtime
from services.scorer.schemas import Decision, ScoreOut


def decide(probability: float, threshold: float) -> Decision:
    """Return ``block`` when the probability reaches the threshold, else ``allow``."""
    return "block" if probability >= threshold else "allow"


async def score_transaction(runtime: Runtime, record: TransactionRecord) -> ScoreOut:
    """Compute the features of ``record``, score them and decide.

    Raises:
        ModelUnavailable: if no model has been loaded yet.
    """
    model = runtime.model
    if model is None:
        raise ModelUnavailable(
            "no model is loaded yet, so the transaction was not scored; retry when "
            "GET /readyz returns 200."
        )

    event_ms = record.event_ms
    query = HistoryQuery.for_transaction(
        record.customer_id, record.terminal_id, event_ms
    )
    histories, source = await runtime.histories.fetch(query)
    features = transaction_features(
        event_ms,
        record.transaction_id,
        record.amount,
        histories.customer,
        histories.terminal,
    )

    probability = model.predict(list(features.values()))
    threshold = runtime.threshold(model)
    result = ScoreOut(
        transaction_id=record.transaction_id,
        probability=probability,
        decision=decide(probability, threshold),
        model_version=model.version,
        feature_source=source,
        features=features if runtime.settings.return_features else None,
    )

    metrics = runtime.metrics
    metrics.decisions.labels(
        model_version=model.version, decision=result.decision
    ).inc()
    metrics.feature_sources.labels(source=source).inc()
    runtime.decision_log.write(record, result, threshold)
    return result
