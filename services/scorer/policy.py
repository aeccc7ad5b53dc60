"""Decision policy of a model version: two thresholds and guardrail rules.

The probability gives ``block`` at or above the block threshold, ``review`` at
or above the review threshold and ``allow`` below it. Guardrail rules, stored as
JSON with the model version in ``model_registry.rules``, compare one model input
with a constant, for example::

    [{"name": "amount_cap", "feature": "TX_AMOUNT", "op": ">=", "value": 5000,
      "decision": "review"}]

The final decision is the most severe of the threshold decision, the decisions
of the rules that hit and, when the features are defaults, the degraded policy.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fraudcore.features import MODEL_INPUTS
from fraudcore.schema import describe_validation_error
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


@dataclass(frozen=True)
class DecisionPolicy:
    """Thresholds and rules that turn a probability and features into a decision."""

    review_threshold: float
    block_threshold: float
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        for name in ("review_threshold", "block_threshold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ModelLoadError(f"{name} must be in [0, 1], got {value!r}")
        if self.review_threshold > self.block_threshold:
            raise ModelLoadError(
                f"review threshold {self.review_threshold} must not exceed "
                f"block threshold {self.block_threshold}"
            )

    def threshold_decision(self, probability: float) -> Decision:
        """Return the decision of the thresholds alone."""
        if probability >= self.block_threshold:
            return "block"
        if probability >= self.review_threshold:
            return "review"
        return "allow"

    def rule_hits(self, features: Mapping[str, float]) -> list[Rule]:
        """Return the rules that hit, in their stored order."""
        return [rule for rule in self.rules if rule.hits(features)]


def most_severe(decisions: Sequence[Decision]) -> Decision:
    """Return the most severe decision; ``allow`` for an empty sequence."""
    return max(decisions, key=SEVERITY.__getitem__, default="allow")
