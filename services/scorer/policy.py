"""Decision policy of a model version: two thresholds and guardrail rules.

The probability gives ``block`` at or above the block threshold, ``review`` at
or above the review threshold and ``allow`` below it. Guardrail rules, stored as
JSON with the model version in ``model_registry.rules``, compare one model input
with a constant, for example::

    [{"name": "amount_cap", "feature": "TX_AMOUNT", "op": ">=", "value": 5000,
      "decision": "review"}]

A model trained with customer segments may also keep thresholds per segment in
``model_registry.segment_thresholds``, for example ``{"1": {"review": 0.2,
"block": 0.5}}``. They replace the model's two thresholds for the customers of
that segment. Rules and the degraded policy still apply.

The final decision is the most severe of the threshold decision, the decisions
of the rules that hit and, when the features are defaults, the degraded policy.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fraudcore.features import MODEL_INPUTS
from fraudcore.schema import describe_validation_error
from fraudcore.segments import NO_SEGMENT
from services.scorer.errors import ModelLoadError
from services.scorer.schemas import Decision

SEVERITY: dict[Decision, int] = {"allow": 0, "review": 1, "block": 2}

Comparison = Literal[">", ">=", "<", "<=", "==", "!="]
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class Rule(BaseModel):
    """A guardrail: when ``feature op value`` holds, decide at least ``decision``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    feature: Literal[MODEL_INPUTS]  # type: ignore[valid-type]
    op: Comparison
    value: float = Field(allow_inf_nan=False)
    decision: Literal["review", "block"]

    def hits(self, features: Mapping[str, float]) -> bool:
        """Return whether the rule's comparison holds for ``features``."""
        return COMPARISONS[self.op](features[self.feature], self.value)


RULES_ADAPTER = TypeAdapter(list[Rule])


def parse_rules(raw: Any, version: str) -> tuple[Rule, ...]:
    """Validate the ``rules`` column of a registry row; None means no rules.

    Raises:
        ModelLoadError: if the rules are not a list of valid rules with unique
            names.
    """
    if raw is None:
        return ()
    try:
        rules = RULES_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise ModelLoadError(
            f"model {version!r} has invalid rules: {describe_validation_error(exc)}"
        ) from None
    names = [rule.name for rule in rules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ModelLoadError(
            f"model {version!r} has rules with duplicate names: {duplicates}"
        )
    return tuple(rules)


class SegmentThresholds(BaseModel):
    """Review and block thresholds of the customers of one segment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    review: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    block: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)


SEGMENT_THRESHOLDS_ADAPTER = TypeAdapter(dict[int, SegmentThresholds])


def parse_segment_thresholds(
    raw: Any, version: str, segmented: bool
) -> dict[int, tuple[float, float]]:
    """Validate the ``segment_thresholds`` column; None means none.

    Returns:
        ``(review, block)`` by segment id.

    Raises:
        ModelLoadError: if the model has no segment input, if a key is not a
            segment id (``NO_SEGMENT`` or above), or if a review threshold is
            above its block threshold.
    """
    if raw is None:
        return {}
    if not segmented:
        raise ModelLoadError(
            f"model {version!r} has segment thresholds but no segment input"
        )
    try:
        parsed = SEGMENT_THRESHOLDS_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise ModelLoadError(
            f"model {version!r} has invalid segment thresholds: "
            f"{describe_validation_error(exc)}"
        ) from None
    thresholds = {}
    for segment, pair in parsed.items():
        if segment < NO_SEGMENT:
            raise ModelLoadError(
                f"model {version!r} has thresholds for segment {segment}, "
                f"expected a segment id of at least {NO_SEGMENT}"
            )
        check_threshold_order(pair.review, pair.block, f"segment {segment}")
        thresholds[segment] = (pair.review, pair.block)
    return thresholds


def check_threshold_order(review: float, block: float, scope: str) -> None:
    """Raise ModelLoadError if the review threshold is above the block threshold."""
    if review > block:
        raise ModelLoadError(
            f"review threshold {review} of {scope} must not exceed "
            f"block threshold {block}"
        )


@dataclass(frozen=True)
class DecisionPolicy:
    """Thresholds and rules that turn a probability and features into a decision.

    ``segment_thresholds`` maps a segment id to its ``(review, block)`` pair,
    which replaces the two model thresholds for that segment's customers.
    """

    review_threshold: float
    block_threshold: float
    rules: tuple[Rule, ...] = ()
    segment_thresholds: Mapping[int, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("review_threshold", "block_threshold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ModelLoadError(f"{name} must be in [0, 1], got {value!r}")
        check_threshold_order(self.review_threshold, self.block_threshold, "the model")

    def threshold_decision(
        self, probability: float, segment: int | None = None
    ) -> Decision:
        """Return the decision of the thresholds alone, those of ``segment`` if any."""
        review, block = self.review_threshold, self.block_threshold
        if segment is not None and segment in self.segment_thresholds:
            review, block = self.segment_thresholds[segment]
        if probability >= block:
            return "block"
        if probability >= review:
            return "review"
        return "allow"

    def rule_hits(self, features: Mapping[str, float]) -> list[Rule]:
        """Return the rules that hit, in their stored order."""
        return [rule for rule in self.rules if rule.hits(features)]


def most_severe(decisions: Sequence[Decision]) -> Decision:
    """Return the most severe decision; ``allow`` for an empty sequence."""
    return max(decisions, key=SEVERITY.__getitem__, default="allow")
