"""Response schemas of the scoring service.

The request body is :class:`fraudcore.schema.TransactionRecord`, shared with the
stream job, so it is not redefined here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Decision = Literal["allow", "block"]
FeatureSource = Literal["redis", "postgres", "default"]
StoreName = Literal["redis", "postgres"]


class ScoreOut(BaseModel):
    """Fraud probability and decision for one transaction."""

    transaction_id: str
    probability: float = Field(ge=0.0, le=1.0)
    decision: Decision
    model_version: str
    feature_source: FeatureSource = Field(
        description=(
            "Store the features were computed from: 'redis', 'postgres' when Redis "
            "missed or failed, or 'default' (empty histories) when both failed."
        )
    )
    features: dict[str, float] | None = Field(
        default=None,
        description="Model inputs by name in model input order, when enabled.",
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
