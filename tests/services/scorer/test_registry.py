"""Loading the served model from the model_registry table."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fraudcore.features import MODEL_INPUTS
from fraudcore.segments import CUSTOMER_SEGMENT, SEGMENTED_MODEL_INPUTS
from services.scorer.errors import ModelLoadError
from services.scorer.registry import (
    RegistryRow,
    check_feature_names,
    check_sha256,
    load_registered_model,
    resolve_artifact_path,
)
from tests.services.scorer.conftest import closed_port, register_model


def make_row(**changes: object) -> RegistryRow:
    fields: dict[str, object] = {
        "version": "v1",
        "artifact_path": "v1.onnx",
        "artifact_sha256": "0" * 64,
        "feature_names": list(MODEL_INPUTS),
        "threshold": 0.5,
    }
    return RegistryRow(**(fields | changes))  # type: ignore[arg-type]


def test_feature_names_must_match_model_inputs() -> None:
    check_feature_names(make_row())
    swapped = list(MODEL_INPUTS)
    swapped[1], swapped[2] = swapped[2], swapped[1]

    with pytest.raises(ModelLoadError, match="was trained on features"):
        check_feature_names(make_row(feature_names=swapped))
    with pytest.raises(ModelLoadError, match="was trained on features"):
        check_feature_names(make_row(feature_names=list(MODEL_INPUTS)[:-1]))
    with pytest.raises(ModelLoadError, match="was trained on features"):
        check_feature_names(make_row(feature_names={"names": list(MODEL_INPUTS)}))


def test_feature_names_with_segment_need_version() -> None:
    segmented = list(SEGMENTED_MODEL_INPUTS)
    version = "20240101T000000.000Z-00000000000a"
    check_feature_names(make_row(feature_names=segmented, segmentation_version=version))

    with pytest.raises(ModelLoadError, match="for segmentation version None"):
        check_feature_names(make_row(feature_names=segmented))
    with pytest.raises(ModelLoadError, match="was trained on features"):
        check_feature_names(make_row(segmentation_version=version))
    with pytest.raises(ModelLoadError, match="was trained on features"):
        check_feature_names(
            make_row(
                feature_names=[CUSTOMER_SEGMENT, *MODEL_INPUTS],
                segmentation_version=version,
            )
        )


def test_sha256_must_match_artifact() -> None:
    digest = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    check_sha256(make_row(artifact_sha256=digest), b"foo")
    check_sha256(make_row(artifact_sha256=digest.upper()), b"foo")

    with pytest.raises(ModelLoadError, match="has sha256 2c26b46b"):
        check_sha256(make_row(), b"foo")


def test_relative_artifact_path_resolved_in_model_dir(tmp_path: Path) -> None:
    assert resolve_artifact_path("m.onnx", tmp_path) == tmp_path / "m.onnx"
    assert resolve_artifact_path("/abs/m.onnx", tmp_path) == Path("/abs/m.onnx")


def test_unreachable_registry_raises_load_error(tmp_path: Path) -> None:
    dsn = f"postgresql://fraud:fraud@127.0.0.1:{closed_port()}/fraud"

    with pytest.raises(ModelLoadError, match="from model_registry failed"):
        asyncio.run(load_registered_model(dsn, "v1", tmp_path))


@pytest.mark.integration
def test_load_pinned_version(
    store_dsn: str, tmp_path: Path, onnx_artifact: bytes, registered_versions: list[str]
) -> None:
    pinned = register_model(store_dsn, tmp_path, onnx_artifact, threshold=0.37)
    registered_versions.append(pinned.version)

    served = asyncio.run(load_registered_model(store_dsn, pinned.version, tmp_path))

    assert served.version == pinned.version
    assert served.model.threshold == 0.37
    assert served.model.output_name == "probabilities"
    assert served.review_threshold is None
    assert served.rules == ()
    assert served.explainer is None


@pytest.mark.integration
def test_load_production_row(
    store_dsn: str, tmp_path: Path, onnx_artifact: bytes, registered_versions: list[str]
) -> None:
    rows = [("production", "0 seconds"), ("candidate", "1 day"), ("shadow", "2 days")]
    versions = {}
    for stage, offset in rows:
        row = register_model(
            store_dsn, tmp_path, onnx_artifact, stage=stage, created_offset=offset
        )
        registered_versions.append(row.version)
        versions[stage] = row.version

    model = asyncio.run(load_registered_model(store_dsn, None, tmp_path))

    assert model.version == versions["production"]


@pytest.mark.integration
def test_missing_version_raises_load_error(store_dsn: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model_registry has no row for 'absent'"):
        asyncio.run(load_registered_model(store_dsn, "absent", tmp_path))


@pytest.mark.integration
def test_tampered_artifact_rejected(
    store_dsn: str, tmp_path: Path, onnx_artifact: bytes, registered_versions: list[str]
) -> None:
    row = register_model(store_dsn, tmp_path, onnx_artifact, sha256="ab" * 32)
    registered_versions.append(row.version)

    with pytest.raises(ModelLoadError, match="expected abab"):
        asyncio.run(load_registered_model(store_dsn, row.version, tmp_path))


@pytest.mark.integration
def test_feature_mismatch_rejected(
    store_dsn: str, tmp_path: Path, onnx_artifact: bytes, registered_versions: list[str]
) -> None:
    names = list(reversed(MODEL_INPUTS))
    row = register_model(store_dsn, tmp_path, onnx_artifact, feature_names=names)
    registered_versions.append(row.version)

    with pytest.raises(ModelLoadError, match="was trained on features"):
        asyncio.run(load_registered_model(store_dsn, row.version, tmp_path))


@pytest.mark.integration
def test_missing_artifact_rejected(
    store_dsn: str, tmp_path: Path, onnx_artifact: bytes, registered_versions: list[str]
) -> None:
    row = register_model(store_dsn, tmp_path, onnx_artifact)
    registered_versions.append(row.version)
    (tmp_path / f"{row.version}.onnx").unlink()

    with pytest.raises(ModelLoadError, match="reading artifact of model"):
        asyncio.run(load_registered_model(store_dsn, row.version, tmp_path))
