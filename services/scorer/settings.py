"""Settings of the scoring service, read once from ``FRAUD_*`` variables at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from fraudcore.settings import PlatformSettings
from services.scorer.redis_client import RedisAddress

# Smallest lag limit worth setting: uvloop's clock counts whole milliseconds,
# so a limit below 2 ms would reject requests on an idle loop.
MIN_LOOP_LAG_MS = 2.0

DecisionName = Literal["allow", "review", "block"]


class ScorerSettings(PlatformSettings):
    """Server, model, feature-store, events, security and logging options."""

    # The Redis URL and the PostgreSQL DSN may contain passwords, which a
    # settings error would otherwise print.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65_535)
    workers: int = Field(default=1, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Registry version to serve alone, without canary or shadow models and
    # without following the registry. None follows the registry: the
    # 'production' version decides, a 'canary' version decides for its share of
    # customers, and 'shadow' versions score off the response path.
    model_version: str | None = None
    # Seconds between reads of the registry's stages, so a promotion or rollback
    # is served within this interval without a restart.
    registry_poll_seconds: float = Field(default=5.0, gt=0)
    # Requests waiting for their shadow scores. Further requests get none, and
    # the dropped scores are counted.
    shadow_queue_size: int = Field(default=10_000, gt=0)
    # Probability at or above which a transaction is blocked. None uses the
    # threshold stored with the model in the registry.
    block_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # Probability at or above which a transaction goes to review. None uses the
    # model row's review_threshold, or default_review_ratio times its threshold
    # when the row has none.
    review_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    default_review_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    # Least severe decision when both feature stores failed and the features are
    # defaults. A more severe decision of the model or a rule is kept.
    degraded_decision: DecisionName = "review"
    # Seconds between attempts to load the model when the registry or the
    # artifact is not available at start-up.
    model_retry_seconds: float = Field(default=5.0, gt=0)

    # Adds the computed features to every response, for comparison with the
    # offline rows. Off in production because it enlarges each response.
    return_features: bool = False
    # Requests with a larger body are rejected with 413.
    max_body_bytes: int = Field(default=16_384, gt=0)

    # Time budget of one POST /score request from its arrival, in milliseconds.
    # The feature lookup may use the budget less a quarter, which is kept for the
    # idempotency record and the response.
    request_deadline_ms: float = Field(default=10.0, gt=0)
    # Maximum number of POST /score requests one worker handles at once. More are
    # rejected with 503 and Retry-After (services/scorer/admission.py); 0 admits all.
    # The default bounds the queue of a worker at about 64 ms of CPU, and it shed
    # nothing at 500 req/s in docs/benchmarks.md. Lower values shed sooner.
    max_requests_in_progress: int = Field(default=64, ge=0)
    # POST /score requests are also rejected with 503 while the event loop runs
    # more than this many milliseconds late (services/scorer/event_loop.py).
    # 0 ignores the lag. Off by default, because loading a new model version in
    # a background thread lagged the loop by more than 10 ms in the hot-swap
    # test, and a limit that low rejected requests there.
    max_loop_lag_ms: float = Field(default=0.0, ge=0)
    # Maximum seconds for the Redis round trip before the scorer falls back to
    # PostgreSQL. Covers connecting as well.
    redis_timeout_seconds: float = Field(default=0.005, gt=0)
    # Maximum seconds of any PostgreSQL query, outside requests too (readiness,
    # labels, API keys). Within a request the deadline may cut it shorter.
    pg_timeout_seconds: float = Field(default=0.2, gt=0)
    pg_pool_min_size: int = Field(default=1, ge=0)
    pg_pool_max_size: int = Field(default=4, ge=1)

    # How long Redis keeps a decision for idempotent replays and label lookups.
    idempotency_ttl_seconds: int = Field(default=86_400, gt=0)
    # Decisions waiting for their durable copy in PostgreSQL; more are dropped
    # from that copy (and counted), never from the response or Kafka.
    decision_buffer_rows: int = Field(default=100_000, gt=0)

    # Maximum messages in the Kafka producer's queue, which keeps them while the
    # broker is unreachable. Further messages are dropped, counted and logged.
    kafka_buffer_messages: int = Field(default=100_000, gt=0)
    # Seconds to wait at shutdown for the Kafka backlog, and again for the
    # decisions not yet written to PostgreSQL.
    flush_timeout_seconds: float = Field(default=10.0, ge=0)

    # Requests to /score and /labels need a valid X-API-Key header.
    require_api_key: bool = True
    # Seconds between reloads of the API keys from PostgreSQL, so a revoked key
    # is rejected within this interval.
    api_key_refresh_seconds: float = Field(default=5.0, gt=0)

    # Key of the HMAC that replaces customer and terminal ids in logs. Without
    # it, a random key is drawn at start-up, so hashes match only within one
    # process.
    log_hash_key: SecretStr | None = None
    # Folder of prometheus_client's multiprocess files when workers > 1. None
    # uses a fresh temporary folder.
    metrics_dir: Path | None = None

    # Adds POST /noop, which reads the body and returns {}: a yardstick of the
    # framework's own cost in benchmarks. Off in production.
    noop_route: bool = False

    @field_validator("redis_url")
    @classmethod
    def _supported_redis_url(cls, value: str) -> str:
        RedisAddress.from_url(value)
        return value

    @field_validator("max_loop_lag_ms")
    @classmethod
    def _lag_above_clock_resolution(cls, value: float) -> float:
        if 0 < value < MIN_LOOP_LAG_MS:
            raise ValueError(
                f"must be 0 (off) or at least {MIN_LOOP_LAG_MS} ms, because the "
                f"event loop's clock counts whole milliseconds; got {value}"
            )
        return value

    @model_validator(mode="after")
    def _check_thresholds(self) -> ScorerSettings:
        review, block = self.review_threshold, self.block_threshold
        if review is not None and block is not None and review > block:
            raise ValueError(
                f"FRAUD_REVIEW_THRESHOLD ({review}) must not exceed "
                f"FRAUD_BLOCK_THRESHOLD ({block})"
            )
        return self
