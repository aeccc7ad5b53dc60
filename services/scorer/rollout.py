"""The served models by stage, canary routing and the registry watcher.

The scorer reads the registry's stages every ``registry_poll_seconds`` rather
than waiting for LISTEN/NOTIFY. A listener needs a dedicated connection per
worker, and a notification sent while that connection is down is lost, so a poll
would be needed as well. One indexed query per worker and interval costs
nothing next to the request load, and a change is served within one interval.

A new version is loaded and verified (sha256, feature names, input shape, a smoke
prediction) before the :class:`Rollout` that contains it replaces the current
one in a single assignment. A request reads the rollout once, so it is decided
by one consistent set of models. A version that fails a check is logged,
counted and not loaded again until its row changes, and the models already
served stay.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraudcore.registry import CANARY_STAGE, PRODUCTION_STAGE, SHADOW_STAGE
from services.scorer.errors import ModelLoadError
from services.scorer.metrics import ScorerMetrics
from services.scorer.policy import DecisionPolicy
from services.scorer.registry import (
    RegistryRow,
    ServedModel,
    fetch_served_rows,
    load_model_from_row,
)

logger = logging.getLogger(__name__)

BUCKET_BYTES = 8
BUCKET_SCALE = float(1 << (8 * BUCKET_BYTES))


def customer_bucket(customer_id: str) -> float:
    """Map a customer id to [0, 1) by its sha256, the same in every process.

    A customer whose bucket is below the canary share is decided by the canary,
    so a customer stays with one model while the share stays the same, and
    raising the share only adds customers.
    """
    digest = hashlib.sha256(customer_id.encode()).digest()
    return int.from_bytes(digest[:BUCKET_BYTES], "big") / BUCKET_SCALE


@dataclass(frozen=True)
class Deployed:
    """A loaded model version with its decision policy and registry stage."""

    served: ServedModel
    policy: DecisionPolicy
    stage: str
    key: tuple[Any, ...] = ()

    @property
    def version(self) -> str:
        """Registry version of the model."""
        return self.served.version


@dataclass(frozen=True)
class Rollout:
    """The models that decide and shadow requests.

    Attributes:
        production: Decides every request that the canary does not.
        canary: Decides for ``canary_share`` of customers, and shadows the rest.
        canary_share: Fraction of customers in [0, 1] decided by the canary.
        shadows: Score every request off the response path; they never decide.
    """

    production: Deployed
    canary: Deployed | None = None
    canary_share: float = 0.0
    shadows: tuple[Deployed, ...] = ()
    _shadows_of_production: tuple[Deployed, ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        extra = () if self.canary is None else (self.canary,)
        object.__setattr__(self, "_shadows_of_production", self.shadows + extra)

    def route(self, customer_id: str) -> tuple[Deployed, tuple[Deployed, ...]]:
        """Return the model that decides for ``customer_id`` and the shadows."""
        canary = self.canary
        if canary is not None and customer_bucket(customer_id) < self.canary_share:
            return canary, self.shadows
        return self.production, self._shadows_of_production

    def models(self) -> list[Deployed]:
        """Return every served model, production first."""
        extra = [] if self.canary is None else [self.canary]
        return [self.production, *extra, *self.shadows]

    def describe(self) -> str:
        """Return a one-line summary for the log."""
        text = f"production {self.production.version}"
        if self.canary is not None:
            text += f", canary {self.canary.version} at {self.canary_share:.2%}"
        if self.shadows:
            text += f", shadows {', '.join(m.version for m in self.shadows)}"
        return text

    def signature(self) -> tuple[Any, ...]:
        """Return what identifies the served set, to tell whether a swap changed it."""
        return tuple((m.stage, m.key or m.version) for m in self.models()) + (
            self.canary_share,
        )


class RolloutLoader:
    """Builds rollouts from the registry's rows and remembers rejected artifacts.

    Args:
        model_dir: Folder that relative artifact paths are resolved in.
        metrics: Counts rejected loads.
        policy_of: Builds a model's decision policy; raises ModelLoadError when
            the model's thresholds are inconsistent.
    """

    def __init__(
        self,
        model_dir: Path,
        metrics: ScorerMetrics,
        policy_of: Any,
    ) -> None:
        self._model_dir = model_dir
        self._metrics = metrics
        self._policy_of = policy_of
        self._rejected: set[tuple[Any, ...]] = set()

    async def build(
        self, rows: Iterable[RegistryRow], current: Rollout | None
    ) -> Rollout | None:
        """Return the rollout for ``rows``, reusing the models of ``current``.

        A production version that cannot be loaded leaves ``current``'s
        production serving. None when there is no production model at all.
        """
        loaded = {} if current is None else {m.key: m for m in current.models()}
        by_stage: dict[str, list[RegistryRow]] = {}
        for row in rows:
            by_stage.setdefault(row.stage, []).append(row)

        production = None
        for row in by_stage.get(PRODUCTION_STAGE, [])[:1]:
            production = await self._obtain(row, loaded)
        if production is None:
            if current is None:
                return None
            production = current.production
            if by_stage.get(PRODUCTION_STAGE):
                logger.error(
                    "the registry's production model was not loaded; keeping %s",
                    production.version,
                )
            else:
                logger.warning(
                    "the registry has no production model; keeping %s",
                    production.version,
                )

        canary, share = None, 0.0
        for row in by_stage.get(CANARY_STAGE, [])[:1]:
            canary = await self._obtain(row, loaded)
            share = (row.canary_share or 0.0) / 100.0
        shadows = []
        for row in by_stage.get(SHADOW_STAGE, []):
            shadow = await self._obtain(row, loaded)
            if shadow is not None and shadow.version != production.version:
                shadows.append(shadow)
        if canary is not None and canary.version == production.version:
            canary, share = None, 0.0
        return Rollout(production, canary, share if canary else 0.0, tuple(shadows))

    async def _obtain(
        self, row: RegistryRow, loaded: dict[tuple[Any, ...], Deployed]
    ) -> Deployed | None:
        key = row.artifact_key()
        found = loaded.get(key)
        if found is not None:
            return Deployed(found.served, found.policy, row.stage, key)
        if key in self._rejected:
            return None
        try:
            served = await load_model_from_row(row, self._model_dir)
            policy = self._policy_of(served)
        except ModelLoadError as exc:
            self._rejected.add(key)
            self._metrics.rejected_loads.labels(stage=row.stage).inc()
            logger.error(
                "rejected model %s (%s): %s; it is not loaded again until its "
                "registry row changes",
                row.version,
                row.stage,
                exc.detail,
            )
            return None
        return Deployed(served, policy, row.stage, key)


async def refresh(
    pg_dsn: str, loader: RolloutLoader, current: Rollout | None, migrate: bool
) -> Rollout | None:
    """Read the registry and return the rollout that its stages define.

    Raises:
        ModelLoadError: if the registry cannot be read.
    """
    rows = await fetch_served_rows(pg_dsn, migrate)
    return await loader.build(rows, current)


def count_models(rollout: Rollout, metrics: ScorerMetrics) -> None:
    """Set the gauge of served models by stage."""
    counts = {PRODUCTION_STAGE: 1, CANARY_STAGE: 0, SHADOW_STAGE: len(rollout.shadows)}
    if rollout.canary is not None:
        counts[CANARY_STAGE] = 1
    for stage, count in counts.items():
        metrics.active_models.labels(stage=stage).set(count)
