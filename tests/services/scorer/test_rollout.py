"""Canary routing, the rollout loader and the shadow queue, without servers."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from fraudcore.features import MODEL_INPUTS
from services.scorer.metrics import ScorerMetrics
from services.scorer.policy import DecisionPolicy
from services.scorer.registry import RegistryRow, ServedModel
from services.scorer.rollout import Deployed, Rollout, RolloutLoader, customer_bucket
from services.scorer.shadow import ShadowScorer
from tests.services.scorer.conftest import train_onnx_model

CUSTOMERS = [f"customer-{i}" for i in range(10_000)]


def deployed(served: ServedModel, version: str, stage: str) -> Deployed:
    """Return ``served`` under another version, as the loader would deploy it."""
    model = served.model.__class__(
        version, served.model.threshold, served.model.session,
        served.model.input_name, served.model.output_name,
    )  # fmt: skip
    policy = DecisionPolicy(0.25, 0.5, ())
    return Deployed(ServedModel(model, None, (), None), policy, stage, (version,))


@pytest.fixture
def models(served_model: ServedModel) -> dict[str, Deployed]:
    """Production v1, canary v2 and shadow v3, all the same test model."""
    return {
        "v1": deployed(served_model, "v1", "production"),
        "v2": deployed(served_model, "v2", "canary"),
        "v3": deployed(served_model, "v3", "shadow"),
    }


def test_customer_bucket_is_sha256_fraction() -> None:
    digest = hashlib.sha256(b"customer-1").digest()
    expected = int.from_bytes(digest[:8], "big") / 2**64

    assert customer_bucket("customer-1") == expected
    assert all(0.0 <= customer_bucket(c) < 1.0 for c in CUSTOMERS[:100])


@pytest.mark.parametrize("share", [0.01, 0.05, 0.25, 0.5, 0.9])
def test_canary_share_within_two_points(
    models: dict[str, Deployed], share: float
) -> None:
    rollout = Rollout(models["v1"], models["v2"], share)

    canary = sum(rollout.route(c)[0].version == "v2" for c in CUSTOMERS)

    assert abs(canary / len(CUSTOMERS) - share) <= 0.02


def test_canary_routing_is_sticky(models: dict[str, Deployed]) -> None:
    first = Rollout(models["v1"], models["v2"], 0.2)
    again = Rollout(models["v1"], models["v2"], 0.2)
    wider = Rollout(models["v1"], models["v2"], 0.4)

    routed = {c: first.route(c)[0].version for c in CUSTOMERS}

    assert routed == {c: first.route(c)[0].version for c in CUSTOMERS}
    assert routed == {c: again.route(c)[0].version for c in CUSTOMERS}
    # Raising the share keeps every canary customer on the canary.
    for customer, version in routed.items():
        if version == "v2":
            assert wider.route(customer)[0].version == "v2"


def test_full_canary_share_decides_everyone(models: dict[str, Deployed]) -> None:
    rollout = Rollout(models["v1"], models["v2"], 1.0)

    assert {rollout.route(c)[0].version for c in CUSTOMERS} == {"v2"}


def test_route_names_the_shadows(models: dict[str, Deployed]) -> None:
    rollout = Rollout(models["v1"], models["v2"], 0.5, (models["v3"],))
    by_production = next(c for c in CUSTOMERS if customer_bucket(c) >= 0.5)
    by_canary = next(c for c in CUSTOMERS if customer_bucket(c) < 0.5)

    decider, shadows = rollout.route(by_production)
    assert decider.version == "v1"
    assert [m.version for m in shadows] == ["v3", "v2"]
    decider, shadows = rollout.route(by_canary)
    assert decider.version == "v2"
    assert [m.version for m in shadows] == ["v3"]


# --- loader ----------------------------------------------------------------


def write_row(
    folder: Path, version: str, artifact: bytes, stage: str, **changes: object
) -> RegistryRow:
    """Write ``artifact`` and return a registry row for it."""
    path = folder / f"{version}.onnx"
    path.write_bytes(artifact)
    fields: dict[str, object] = {
        "version": version,
        "artifact_path": path.name,
        "artifact_sha256": hashlib.sha256(artifact).hexdigest(),
        "feature_names": list(MODEL_INPUTS),
        "threshold": 0.5,
        "stage": stage,
    }
    return RegistryRow(**(fields | changes))  # type: ignore[arg-type]


def new_loader(folder: Path, metrics: ScorerMetrics) -> RolloutLoader:
    return RolloutLoader(folder, metrics, lambda s: DecisionPolicy(0.25, 0.5, ()))


def rejected(metrics: ScorerMetrics, stage: str) -> float:
    value = metrics.registry.get_sample_value(
        "fraud_score_model_rejected_loads_total", {"stage": stage}
    )
    return 0.0 if value is None else value


def test_loader_builds_every_stage(tmp_path: Path, onnx_artifact: bytes) -> None:
    rows = [
        write_row(tmp_path, "v1", onnx_artifact, "production"),
        write_row(tmp_path, "v2", onnx_artifact, "canary", canary_share=12.5),
        write_row(tmp_path, "v3", onnx_artifact, "shadow"),
    ]
    loader = new_loader(tmp_path, ScorerMetrics())

    rollout = asyncio.run(loader.build(rows, None))

    assert rollout is not None
    assert rollout.production.version == "v1"
    assert rollout.canary is not None
    assert rollout.canary.version == "v2"
    assert rollout.canary_share == 0.125
    assert [m.version for m in rollout.shadows] == ["v3"]


def test_loader_reuses_unchanged_models(tmp_path: Path, onnx_artifact: bytes) -> None:
    rows = [write_row(tmp_path, "v1", onnx_artifact, "production")]
    loader = new_loader(tmp_path, ScorerMetrics())
    first = asyncio.run(loader.build(rows, None))
    assert first is not None
    (tmp_path / "v1.onnx").unlink()

    again = asyncio.run(loader.build(rows, first))

    assert again is not None
    assert again.production.served is first.production.served
    assert again.signature() == first.signature()


@pytest.mark.parametrize("defect", ["sha256", "inputs", "feature_names"])
def test_loader_rejects_bad_production(
    tmp_path: Path, onnx_artifact: bytes, defect: str
) -> None:
    metrics = ScorerMetrics()
    loader = new_loader(tmp_path, metrics)
    current = asyncio.run(
        loader.build([write_row(tmp_path, "v1", onnx_artifact, "production")], None)
    )
    assert current is not None
    if defect == "sha256":
        bad = write_row(tmp_path, "v2", onnx_artifact, "production",
                        artifact_sha256="ab" * 32)  # fmt: skip
    elif defect == "inputs":
        bad = write_row(tmp_path, "v2", train_onnx_model(width=5), "production")
    else:
        names = list(reversed(MODEL_INPUTS))
        bad = write_row(tmp_path, "v2", onnx_artifact, "production",
                        feature_names=names)  # fmt: skip

    unchanged = asyncio.run(loader.build([bad], current))
    again = asyncio.run(loader.build([bad], unchanged))

    assert unchanged is not None and again is not None
    assert unchanged.production.version == "v1"
    assert again.production.version == "v1"
    # Rejected once, then not loaded again while the row is unchanged.
    assert rejected(metrics, "production") == 1.0


def test_loader_skips_bad_shadow(tmp_path: Path, onnx_artifact: bytes) -> None:
    metrics = ScorerMetrics()
    rows = [
        write_row(tmp_path, "v1", onnx_artifact, "production"),
        write_row(tmp_path, "v3", onnx_artifact, "shadow", artifact_sha256="0" * 64),
    ]

    rollout = asyncio.run(new_loader(tmp_path, metrics).build(rows, None))

    assert rollout is not None
    assert rollout.shadows == ()
    assert rejected(metrics, "shadow") == 1.0


def test_loader_without_production(tmp_path: Path, onnx_artifact: bytes) -> None:
    rows = [write_row(tmp_path, "v3", onnx_artifact, "shadow")]

    assert asyncio.run(new_loader(tmp_path, ScorerMetrics()).build(rows, None)) is None


# --- shadow queue ------------------------------------------------------------


def test_full_shadow_queue_drops_and_counts(models: dict[str, Deployed]) -> None:
    metrics = ScorerMetrics()

    async def fill() -> None:
        scorer = ShadowScorer(None, 3, metrics)  # type: ignore[arg-type]
        for i in range(5):
            scorer.submit(f"tx-{i}", [0.0] * len(MODEL_INPUTS), (models["v3"],))

    asyncio.run(fill())

    dropped = metrics.registry.get_sample_value(
        "fraud_score_shadow_scores_total", {"outcome": "dropped"}
    )
    assert dropped == 2.0
