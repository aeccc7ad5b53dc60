"""Scoring of one transaction: histories, features, model, decision, claim, events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from fraudcore.features import counts_event, transaction_features
from fraudcore.schema import TransactionRecord
from fraudcore.segments import CUSTOMER_SEGMENT, NO_SEGMENT
from fraudcore.timeutil import format_timestamp_ms, parse_timestamp_ms
from services.scorer.errors import IdempotencyConflict
from services.scorer.feature_store import (
    LOOKBACK_MS,
    Histories,
    HistoryQuery,
    Lookup,
)
from services.scorer.idempotency import (
    ClaimUnavailable,
    Pending,
    StoredDecision,
    request_digest,
)
from services.scorer.policy import DecisionPolicy, most_severe
from services.scorer.registry import ServedModel
from services.scorer.rollout import Deployed
from services.scorer.runtime import Runtime
from services.scorer.schemas import Decision, FeatureSource

# Share of the request deadline that the feature lookup may use. The rest is
# kept for inference, the idempotency claim and the response.
FEATURE_BUDGET_SHARE = 0.75


@dataclass(frozen=True)
class Verdict:
    """The decision on one transaction and what led to it."""

    probability: float
    decision: Decision
    rules: list[str]
    reasons: list[dict[str, Any]]


def feature_age_ms(
    event_ms: int, transaction_id: str, histories: Histories
) -> int | None:
    """Return ``event_ms`` minus the newest event time that the features used.

    The events used are the customer's and the device's transactions up to
    ``event_ms``, other than this one, and the terminal's labels known at
    ``event_ms``, all within the longest window. None when there are none. The
    histories are sorted by time, as Redis and the PostgreSQL queries return
    them, so the scans from the end stop early.
    """
    start = event_ms - LOOKBACK_MS
    newest = None
    for events in (histories.customer, histories.device):
        found = _newest_counted(events, start, event_ms, transaction_id)
        if found is not None:
            newest = found if newest is None else max(newest, found)
    for label in reversed(histories.terminal):
        if label[0] <= start:
            break
        if label[0] <= event_ms:
            newest = label[0] if newest is None else max(newest, label[0])
            break
    return None if newest is None else event_ms - newest


def _newest_counted(
    events: Sequence[tuple[Any, ...]], start: int, event_ms: int, transaction_id: str
) -> int | None:
    for event in reversed(events):
        if event[0] <= start:
            return None
        if counts_event(event_ms, transaction_id, event):
            return int(event[0])
    return None


async def judge(
    runtime: Runtime,
    served: ServedModel,
    policy: DecisionPolicy,
    features: dict[str, float],
    degraded: bool,
    segment: int | None = None,
) -> Verdict:
    """Score the features and combine thresholds, rules and the degraded policy.

    ``segment`` selects the thresholds of the customer's segment, when the
    policy has some for it.
    """
    stages = runtime.metrics.stage_duration
    started = time.perf_counter()
    probability = served.model.predict(list(features.values()))
    hits = policy.rule_hits(features)
    candidates: list[Decision] = [policy.threshold_decision(probability, segment)]
    candidates += [rule.decision for rule in hits]
    model_decision = most_severe(candidates)
    if degraded:
        candidates.append(runtime.settings.degraded_decision)
    decision = most_severe(candidates)
    inferred = time.perf_counter()
    runtime.metrics.child(stages, "inference").observe(inferred - started)

    # Reasons explain the score. A review or block that only the degraded policy
    # made has none, which also keeps an outage from adding the cost of
    # contributions to every request.
    reasons: list[dict[str, Any]] = []
    explainer = served.explainer
    if model_decision != "allow" and explainer is not None:
        if explainer.tables is not None:
            # The tables take about 0.1 ms, less than a hand-off to the thread.
            found = explainer.reasons(features)
        else:
            found = await asyncio.get_running_loop().run_in_executor(
                runtime.explain_executor, explainer.reasons, features
            )
        reasons = [reason.model_dump() for reason in found]
        elapsed = time.perf_counter() - inferred
        runtime.metrics.child(stages, "explain").observe(elapsed)
    return Verdict(probability, decision, [rule.name for rule in hits], reasons)


def replay(previous: StoredDecision, digest: str, runtime: Runtime) -> bytes:
    """Return the stored response of a repeated request.

    Raises:
        IdempotencyConflict: if the stored decision was made for another body.
    """
    if previous.request_sha256 != digest:
        raise conflict(previous.transaction_id)
    runtime.metrics.replays.inc()
    return previous.response


def conflict(transaction_id: str) -> IdempotencyConflict:
    """Build the error of a transaction id sent again with another body."""
    return IdempotencyConflict(
        f"transaction {transaction_id!r} was already scored with a different "
        "body; send the same body or a new transaction_id."
    )


async def resolve_claimed(
    runtime: Runtime, transaction_id: str, stored: bytes, digest: str, deadline: float
) -> bytes | None:
    """Resolve a request whose transaction id another request claimed in Redis.

    Returns:
        The stored response, or None when the other request's claim is stale and
        no decision was stored, so this request may decide.

    Raises:
        IdempotencyConflict: if the other request had another body, or is still
            deciding at ``deadline``.
    """
    pending = Pending.parse(stored)
    if pending is None:
        return replay(StoredDecision.from_redis(stored), digest, runtime)
    if pending.digest != digest:
        raise conflict(transaction_id)
    if pending.is_stale(time.time_ns() // 1_000_000):
        try:
            durable = await runtime.decisions.find_durable(transaction_id)
        except ClaimUnavailable:
            durable = None
        return None if durable is None else replay(durable, digest, runtime)
    decided = await runtime.decisions.wait_for_decision(transaction_id, deadline)
    if decided is None:
        raise IdempotencyConflict(
            f"transaction {transaction_id!r} is still being scored by an earlier "
            "request; retry with the same body."
        )
    return replay(StoredDecision.from_redis(decided), digest, runtime)


async def score_transaction(
    runtime: Runtime, record: TransactionRecord, arrived: float
) -> bytes:
    """Score ``record`` and return the JSON response body.

    Args:
        runtime: The process state.
        record: The validated transaction.
        arrived: ``loop.time()`` when the request arrived; the deadline counts
            from it.

    Raises:
        ModelUnavailable: if no model has been loaded yet.
        IdempotencyConflict: if the transaction id was scored with another body.
    """
    decider, shadows = runtime.serving().route(record.customer_id)
    shadows = runtime.shadow.compatible(decider, shadows)
    budget = runtime.settings.request_deadline_ms / 1000
    digest = request_digest(record)
    started = time.perf_counter()

    lookup = await runtime.histories.fetch(
        HistoryQuery.for_transaction(
            record.customer_id,
            record.terminal_id,
            record.event_ms,
            record.device_id,
            decider.served.segmentation_version,
        ),
        deadline=arrived + budget * FEATURE_BUDGET_SHARE,
        claim=runtime.decisions.claim_request(record.transaction_id, digest),
    )
    stages = runtime.metrics.stage_duration
    metrics = runtime.metrics
    metrics.child(stages, "feature_fetch").observe(time.perf_counter() - started)
    if lookup.redis_responded and lookup.stored_decision is not None:
        answer = await resolve_claimed(
            runtime, record.transaction_id, lookup.stored_decision, digest,
            arrived + budget,
        )  # fmt: skip
        if answer is not None:
            return answer

    response, stored, features = await decide(
        runtime, decider, shadows, record, lookup, digest
    )
    if lookup.redis_responded:
        runtime.decisions.store(stored)
    else:
        previous = await claim_in_postgres(runtime, stored, arrived + budget)
        if previous is not None:
            return replay(previous, digest, runtime)

    announce(runtime, record, response)
    if shadows:
        runtime.shadow.submit(record.transaction_id, features, shadows)
    metrics.child(stages, "total").observe(time.perf_counter() - started)
    return stored.response


async def claim_in_postgres(
    runtime: Runtime, stored: StoredDecision, deadline: float
) -> StoredDecision | None:
    """Claim in PostgreSQL; an unavailable claim is counted and scored anyway."""
    budget = deadline - asyncio.get_running_loop().time()
    try:
        return await runtime.decisions.claim_in_postgres(stored, budget)
    except ClaimUnavailable:
        runtime.metrics.errors.labels(kind="idempotency_unavailable").inc()
        return None


async def decide(
    runtime: Runtime,
    decider: Deployed,
    shadows: tuple[Deployed, ...],
    record: TransactionRecord,
    lookup: Lookup,
    digest: str,
) -> tuple[dict[str, Any], StoredDecision, list[float]]:
    """Compute features, score and decide.

    Returns:
        The response, its stored record and the features in model input order,
        for the shadow models.
    """
    served = decider.served
    histories = lookup.histories
    event_ms = record.event_ms
    features = transaction_features(
        event_ms,
        record.transaction_id,
        record.amount,
        histories.customer,
        histories.terminal,
        runtime.settings.feature_zone,
        customer_id=record.customer_id,
        terminal_id=record.terminal_id,
        device_id=record.device_id,
        device_history=histories.device,
    )
    segment = None
    if served.segmentation_version is not None:
        segment = NO_SEGMENT if histories.segment is None else histories.segment
        features[CUSTOMER_SEGMENT] = float(segment)
    degraded = lookup.source == "default"
    verdict = await judge(runtime, served, decider.policy, features, degraded, segment)
    decided_ms = time.time_ns() // 1_000_000
    response = build_response(record, served, verdict, lookup.source, decided_ms)
    response["segment"] = segment
    shadow_versions = tuple(model.version for model in shadows)
    response["shadow_versions"] = list(shadow_versions)
    response["feature_age_ms"] = feature_age_ms(
        event_ms, record.transaction_id, histories
    )
    if runtime.settings.return_features:
        response["features"] = features
    stored = StoredDecision(
        transaction_id=record.transaction_id,
        request_sha256=digest,
        customer_id=record.customer_id,
        terminal_id=record.terminal_id,
        transaction_ms=event_ms,
        model_version=served.version,
        probability=verdict.probability,
        decision=verdict.decision,
        response=orjson.dumps(response),
        decided_at=response["decided_at"],
        shadow_versions=shadow_versions,
    )
    return response, stored, list(features.values())


def build_response(
    record: TransactionRecord,
    served: ServedModel,
    verdict: Verdict,
    source: FeatureSource,
    decided_ms: int,
) -> dict[str, Any]:
    """Build the response fields in the order of :class:`ScoreOut`.

    ``feature_age_ms`` and ``segment`` are left None and ``shadow_versions``
    empty for the caller to fill in.
    """
    response: dict[str, Any] = {
        "transaction_id": record.transaction_id,
        "probability": verdict.probability,
        "decision": verdict.decision,
        "model_version": served.version,
        "shadow_versions": [],
        "feature_source": source,
        "degraded": source == "default",
        "feature_age_ms": None,
        "segment": None,
        "rules": verdict.rules,
        "reasons": verdict.reasons,
        "decided_at": format_timestamp_ms(decided_ms),
    }
    return response


DECISION_EVENT_FIELDS = (
    "transaction_id",
    "model_version",
    "probability",
    "decision",
    "rules",
    "reasons",
    "feature_source",
    "degraded",
    "decided_at",
)


def announce(
    runtime: Runtime, record: TransactionRecord, response: dict[str, Any]
) -> None:
    """Count, log and publish a new decision."""
    metrics = runtime.metrics
    metrics.child(
        metrics.decisions, response["model_version"], response["decision"]
    ).inc()
    metrics.child(metrics.feature_sources, response["feature_source"]).inc()
    if response["degraded"]:
        metrics.degraded.inc()
    runtime.decision_log.write(record, response)

    event = {name: response[name] for name in DECISION_EVENT_FIELDS}
    runtime.events.publish_transaction(record)
    decided_ms = parse_timestamp_ms(response["decided_at"])
    runtime.events.publish_decision(
        record.transaction_id, orjson.dumps(event), decided_ms
    )
