"""Connection settings shared by every deployable, read from ``FRAUD_*`` variables.

Each deployable extends :class:`PlatformSettings` with its own fields, reads it
once at start-up and passes it down.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class PlatformSettings(BaseSettings):
    """Server addresses, topic and store names, and the calendar features' zone."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"
    pg_dsn: str = "postgresql://fraud:fraud@127.0.0.1:15432/fraud"

    transactions_topic: str = "transactions"
    labels_topic: str = "labels"
    decisions_topic: str = "decisions"
    dead_letter_topic: str = "dead-letters"
    late_events_topic: str = "late-events"
    # Online-store changes of the feature job, committed at its checkpoints.
    online_changelog_topic: str = "online-changelog"

    # Prefix of every Redis key, so that several deployments can share a server.
    redis_prefix: str = "fraud"

    # IANA zone whose day decides the night and weekend features. The stream job
    # and the scorer must use the same zone, and models trained under one zone
    # should be served under it.
    feature_timezone: str = "UTC"

    data_dir: Path = REPO_ROOT.parent / "shared" / "data" / "fraud-handbook"
    state_dir: Path = REPO_ROOT / ".state"
    offline_store: Path = REPO_ROOT / ".state" / "offline"
    model_dir: Path = REPO_ROOT / ".state" / "models"

    @field_validator("feature_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    def namespaced(self, prefix: str, offline_store: Path) -> PlatformSettings:
        """Return a copy whose topics and Redis keys start with ``prefix``.

        Tests and benchmarks use it to share servers without sharing data.
        """
        return self.model_copy(
            update={
                "transactions_topic": f"{prefix}-transactions",
                "labels_topic": f"{prefix}-labels",
                "decisions_topic": f"{prefix}-decisions",
                "dead_letter_topic": f"{prefix}-dead-letters",
                "late_events_topic": f"{prefix}-late-events",
                "online_changelog_topic": f"{prefix}-online-changelog",
                "redis_prefix": prefix,
                "offline_store": offline_store,
            }
        )

    def topics(self) -> list[str]:
        """Return the names of every topic the platform uses."""
        return [
            self.transactions_topic,
            self.labels_topic,
            self.decisions_topic,
            self.dead_letter_topic,
            self.late_events_topic,
            self.online_changelog_topic,
        ]

    def environment(self) -> dict[str, str]:
        """Return the ``FRAUD_*`` variables that reproduce these settings."""
        return {
            f"FRAUD_{name.upper()}": str(value)
            for name, value in self.model_dump().items()
        }

    @property
    def feature_zone(self) -> ZoneInfo:
        """The zone of the calendar features."""
        return ZoneInfo(self.feature_timezone)
