"""Thresholds, guardrail rules and the policy built from a registry row."""

from __future__ import annotations

import pytest

from fraudcore.features import MODEL_INPUTS
from services.scorer.errors import ModelLoadError
from services.scorer.model import ScoringModel
from services.scorer.policy import (
    DecisionPolicy,
    most_severe,
    parse_rules,
    parse_segment_thresholds,
)
from services.scorer.registry import ServedModel
from services.scorer.runtime import build_policy
from services.scorer.settings import ScorerSettings

AMOUNT_CAP = {
    "name": "amount_cap",
    "feature": "TX_AMOUNT",
    "op": ">=",
    "value": 5000,
    "decision": "review",
}
NIGHT_BLOCK = {
    "name": "night_block",
    "feature": "TX_DURING_NIGHT",
    "op": "==",
    "value": 1,
    "decision": "block",
}


def features(**changes: float) -> dict[str, float]:
    return {name: 0.0 for name in MODEL_INPUTS} | changes


@pytest.mark.parametrize(
    ("probability", "decision"),
    [
        (0.0, "allow"),
        (0.29, "allow"),
        (0.3, "review"),
        (0.69, "review"),
        (0.7, "block"),
    ],
)
def test_thresholds_split_three_ways(probability: float, decision: str) -> None:
    policy = DecisionPolicy(review_threshold=0.3, block_threshold=0.7)

    assert policy.threshold_decision(probability) == decision


def test_review_above_block_rejected() -> None:
    with pytest.raises(ModelLoadError, match="must not exceed block threshold"):
        DecisionPolicy(review_threshold=0.8, block_threshold=0.7)


def test_rules_hit_by_comparison() -> None:
    rules = parse_rules([AMOUNT_CAP, NIGHT_BLOCK], "v1")
    policy = DecisionPolicy(0.3, 0.7, rules)

    assert policy.rule_hits(features(TX_AMOUNT=4999.99)) == []
    hits = policy.rule_hits(features(TX_AMOUNT=5000.0, TX_DURING_NIGHT=1.0))
    assert [rule.name for rule in hits] == ["amount_cap", "night_block"]


def test_no_rules_column_means_no_rules() -> None:
    assert parse_rules(None, "v1") == ()


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"name": "x"}, "invalid rules"),
        ([AMOUNT_CAP | {"feature": "COUNTRY"}], "field '0.feature'"),
        ([AMOUNT_CAP | {"op": "~"}], "field '0.op'"),
        ([AMOUNT_CAP | {"decision": "allow"}], "field '0.decision'"),
        ([AMOUNT_CAP | {"value": float("nan")}], "field '0.value'"),
        ([AMOUNT_CAP | {"extra": 1}], "field '0.extra'"),
        ([AMOUNT_CAP, AMOUNT_CAP], "duplicate names: \\['amount_cap'\\]"),
    ],
)
def test_invalid_rules_rejected(rules: object, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        parse_rules(rules, "v1")


def test_most_severe_decision_wins() -> None:
    assert most_severe([]) == "allow"
    assert most_severe(["allow", "review"]) == "review"
    assert most_severe(["block", "review", "allow"]) == "block"


def served(scoring_model: ScoringModel, review: float | None) -> ServedModel:
    return ServedModel(scoring_model, review, (), None)


def test_policy_derives_review_from_threshold(scoring_model: ScoringModel) -> None:
    policy = build_policy(served(scoring_model, None), ScorerSettings())

    assert policy.block_threshold == scoring_model.threshold
    assert policy.review_threshold == pytest.approx(0.5 * scoring_model.threshold)


def test_policy_uses_row_review_threshold(scoring_model: ScoringModel) -> None:
    policy = build_policy(served(scoring_model, 0.2), ScorerSettings())

    assert policy.review_threshold == 0.2


def test_settings_override_both_thresholds(scoring_model: ScoringModel) -> None:
    settings = ScorerSettings(review_threshold=0.1, block_threshold=0.9)

    policy = build_policy(served(scoring_model, 0.2), settings)

    assert (policy.review_threshold, policy.block_threshold) == (0.1, 0.9)


def test_settings_reject_review_above_block() -> None:
    with pytest.raises(ValueError, match="must not exceed FRAUD_BLOCK_THRESHOLD"):
        ScorerSettings(review_threshold=0.9, block_threshold=0.1)


def test_segment_thresholds_replace_model_pair() -> None:
    policy = DecisionPolicy(0.3, 0.6, (), {2: (0.1, 0.2)})

    assert policy.threshold_decision(0.15, 2) == "review"
    assert policy.threshold_decision(0.25, 2) == "block"
    assert policy.threshold_decision(0.25, 1) == "allow"
    assert policy.threshold_decision(0.25) == "allow"


def test_segment_thresholds_parse_by_id() -> None:
    raw = {"2": {"review": 0.1, "block": 0.2}, "-1": {"review": 0.5, "block": 0.5}}

    assert parse_segment_thresholds(raw, "v1", segmented=True) == {
        2: (0.1, 0.2),
        -1: (0.5, 0.5),
    }
    assert parse_segment_thresholds(None, "v1", segmented=False) == {}


@pytest.mark.parametrize(
    ("raw", "segmented", "message"),
    [
        ({"1": {"review": 0.1, "block": 0.2}}, False, "no segment input"),
        ({"1": {"review": 0.3, "block": 0.2}}, True, "must not exceed"),
        ({"x": {"review": 0.1, "block": 0.2}}, True, "invalid segment thresholds"),
        ({"-2": {"review": 0.1, "block": 0.2}}, True, "at least -1"),
        ({"1": {"review": 0.1, "block": 1.5}}, True, "invalid segment thresholds"),
        ({"1": {"review": 0.1}}, True, "invalid segment thresholds"),
        ({"1": {"review": 0.1, "block": 0.2, "x": 1}}, True, "invalid segment"),
    ],
)
def test_segment_thresholds_invalid(raw, segmented: bool, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        parse_segment_thresholds(raw, "v1", segmented)
