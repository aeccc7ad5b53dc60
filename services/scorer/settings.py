"""Settings of the scoring service, read once from ``FRAUD_*`` variables at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from fraudcore.settings import PlatformSettings


class ScorerSettings(PlatformSettings):
    """Server, model, feature-store and logging options of the scorer."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65_535)
    workers: int = Field(default=1, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Registry version to serve. None serves the newest row with stage 'production'.
    model_version: str | None = None
    # Probability at or above which a transaction is blocked. None uses the
    # threshold stored with the model in the registry.
    block_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # Seconds between attempts to load the model when the registry or the
    # artifact is not available at start-up.
    model_retry_seconds: float = Field(default=5.0, gt=0)

    # Adds the computed features to every response, for comparison with the
    # offline rows. Off in production because it enlarges each response.
    return_features: bool = False
    # Requests with a larger body are rejected with 413.
    max_body_bytes: int = Field(default=16_384, gt=0)

    # Maximum seconds for the Redis round trip before the scorer falls back to
    # PostgreSQL. Covers connecting as well.
    redis_timeout_seconds: float = Field(default=0.05, gt=0)
    # Maximum seconds for a PostgreSQL fallback query, including the wait for a
    # pooled connection, before the scorer uses default features.
    pg_timeout_seconds: float = Field(default=0.2, gt=0)
    pg_pool_min_size: int = Field(default=1, ge=0)
    pg_pool_max_size: int = Field(default=4, ge=1)

    # Key of the HMAC that replaces customer and terminal ids in logs. Without
    # it, a random key is drawn at start-up, so hashes match only within one
    # process.
    log_hash_key: SecretStr | None = None
