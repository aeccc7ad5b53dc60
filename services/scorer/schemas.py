"""Request and response schemas of the scoring service.

The body of ``POST /score`` is :class:`fraudcore.schema.TransactionRecord`, shared
with the stream job, so it is not redefined here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fraudcore.schema import Identifier
from fraudcore.timeutil import parse_timestamp_ms

Decision = Literal["allow", "review", "block"]
FeatureSource = Literal["redis", "postgres", "default"]
StoreName = Literal["redis", "postgres"]
LabelSource = Literal["chargeback", "review"]


class Reason(BaseModel):
    """A feature that raised the fraud score, with its tree SHAP contribution."""

    feature: str
    value: float
    contribution: float = Field(
        description="Contribution to the model's log-odds (tree SHAP)."
    )


class ScoreOut(BaseModel):
    """Fraud probability and decision for one transaction."""

    transaction_id: str
    probability: float = Field(ge=0.0, le=1.0)
    decision: Decision
    model_version: str = Field(description="Registry version that decided.")
    shadow_versions: list[str] = Field(
        default_factory=list,
        description=(
            "Registry versions that also score this transaction off the response "
            "path, with no effect on the decision. Their scores go to the "
            "shadow_scores table unless the shadow queue was full."
        ),
    )
    feature_source: FeatureSource = Field(
        description=(
            "Store the features were computed from: 'redis', 'postgres' when Redis "
            "missed or failed, or 'default' (empty histories) when both failed."
        )
    )
    degraded: bool = Field(
        description="True when the features are defaults because both stores failed."
    )
    feature_age_ms: int | None = Field(
        description=(
            "Event time of the transaction minus the newest event time in the "
            "histories used; null when they contain no event."
        )
    )
    segment: int | None = Field(
        default=None,
        description=(
            "Customer segment the model took as its CUSTOMER_SEGMENT input, -1 "
            "for a customer without one; null when the model has no such input."
        ),
    )
    rules: list[str] = Field(description="Names of the guardrail rules that hit.")
    reasons: list[Reason] = Field(
        description=(
            "For review and block: up to three features that raised the score "
            "most. Empty for allow, and when only the degraded policy decided."
        )
    )
    decided_at: str = Field(description="Time of the decision, ISO-8601 UTC.")
    features: dict[str, float] | None = Field(
        default=None,
        description="Model inputs by name in model input order, when enabled.",
    )


class LabelIn(BaseModel):
    """A fraud outcome of a scored transaction: a chargeback or a review result."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    transaction_id: Identifier
    label: Annotated[int, Field(ge=0, le=1)]
    time: str = Field(description="When the outcome became known, ISO-8601.")
    source: LabelSource = "chargeback"

    @field_validator("time")
    @classmethod
    def _check_time(cls, value: str) -> str:
        try:
            parse_timestamp_ms(value)
        except ValueError as exc:
            raise ValueError(f"must be an ISO-8601 timestamp: {exc}") from None
        return value


class LabelOut(BaseModel):
    """The recorded label and whether this request recorded it."""

    transaction_id: str
    label: int
    time: str
    source: LabelSource
    created: bool = Field(
        description="False when the same label had been recorded before."
    )


class ErrorOut(BaseModel):
    """Error body of every failed request."""

    detail: str


class HealthOut(BaseModel):
    """Liveness of the process."""

    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    """Readiness: whether a model is loaded and a feature store responds."""

    status: Literal["ready", "not_ready"]
    model_version: str | None = None
    feature_store: StoreName | None = None
    reason: str | None = None
