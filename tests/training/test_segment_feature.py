"""Tests of the customer segment as a training input: join, look-ahead, registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lightgbm as lgb
import onnx
import pandas as pd
import psycopg
import pytest

from fraudcore.features import MODEL_INPUTS
from fraudcore.segments import CUSTOMER_SEGMENT, NO_SEGMENT, SEGMENTED_MODEL_INPUTS
from fraudcore.settings import PlatformSettings
from tests.conftest import created_database
from tests.training.factories import (
    publish_offline_segments,
    segment_of_customer,
    segmented_rows,
    store_frames,
)
from training import train
from training.errors import InputDataError
from training.evaluation import CHAPTER3_WINDOW
from training.reference import write_offline_store
from training.segment_feature import (
    LATEST_VERSION,
    add_segment_column,
    check_no_lookahead,
    load_segment_input,
)

FIRST_DAY = CHAPTER3_WINDOW.train_start
CUSTOMERS = 300
CREATED = datetime(2018, 7, 24, 23, 0, tzinfo=UTC)


def true_segments(customers: range) -> dict[str, int]:
    return {str(c): segment_of_customer(c) for c in customers}


@pytest.fixture(scope="module")
def segmented_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Offline store over the chapter-3 days whose fraud depends on the segment."""
    root = tmp_path_factory.mktemp("segmented") / "offline"
    write_offline_store(*store_frames(segmented_rows(FIRST_DAY, 21)), root)
    return root


@pytest.fixture(scope="module")
def versions(segmented_store: Path) -> dict[str, str]:
    """Published versions: the true segments, a later shuffle, one without cut-off.

    The last 10 customers are left out of ``true`` so that they get no segment.
    """
    true = publish_offline_segments(
        segmented_store, true_segments(range(CUSTOMERS - 10)), CREATED, FIRST_DAY
    )
    uncut = publish_offline_segments(
        segmented_store, {"0": 1}, CREATED + timedelta(hours=1), None
    )
    shuffled = {str(c): (c + 1) % 3 for c in range(CUSTOMERS)}
    newer = publish_offline_segments(
        segmented_store, shuffled, CREATED + timedelta(hours=2), FIRST_DAY
    )
    return {"true": true, "uncut": uncut, "newer": newer}


@pytest.fixture(scope="module")
def registry_dsn(base_settings: PlatformSettings, run_id: str) -> Iterator[str]:
    """A database of this module's own, so its models are the only ones there."""
    with created_database(base_settings, f"fraud_segment_train_{run_id}") as dsn:
        yield dsn


def test_add_segment_column_defaults_missing(
    segmented_store: Path, versions: dict[str, str]
) -> None:
    segments = load_segment_input(segmented_store, versions["true"])
    frame = pd.DataFrame({"customer_id": ["0", "2", "5", "299", "unknown"]})

    joined = add_segment_column(frame, segments)

    assert joined[CUSTOMER_SEGMENT].dtype == "float64"
    assert joined[CUSTOMER_SEGMENT].tolist() == [0.0, 2.0, 2.0, NO_SEGMENT, NO_SEGMENT]


def test_load_segment_input_latest_is_newest(
    segmented_store: Path, versions: dict[str, str]
) -> None:
    segments = load_segment_input(segmented_store, LATEST_VERSION)

    assert segments.version == versions["newer"]
    assert segments.profiles_end == FIRST_DAY
    assert len(segments.segments) == CUSTOMERS


def test_load_segment_input_without_cutoff_raises(
    segmented_store: Path, versions: dict[str, str]
) -> None:
    with pytest.raises(InputDataError, match="without a profile cut-off"):
        load_segment_input(segmented_store, versions["uncut"])


def test_load_segment_input_unknown_version_raises(
    segmented_store: Path, versions: dict[str, str]
) -> None:
    with pytest.raises(InputDataError, match="is not in"):
        load_segment_input(segmented_store, "20990101T000000.000Z-0123456789ab")
    with pytest.raises(InputDataError, match="must look like"):
        load_segment_input(segmented_store, "newest")


def test_check_no_lookahead_rejects_later_profiles(
    segmented_store: Path, versions: dict[str, str]
) -> None:
    segments = load_segment_input(segmented_store, versions["true"])

    check_no_lookahead(segments, FIRST_DAY)
    check_no_lookahead(segments, FIRST_DAY + timedelta(days=3))
    with pytest.raises(InputDataError, match="looks ahead"):
        check_no_lookahead(segments, FIRST_DAY - timedelta(days=1))


def _run(store: Path, tmp_path: Path, version: str | None) -> train.JobResult:
    options = train.JobOptions(
        offline_store=store,
        report_dir=tmp_path / "reports",
        model_dir=tmp_path / "models",
        segmentation_version=version,
    )
    return train.run(options)


def test_run_with_segments_adds_input(
    segmented_store: Path, versions: dict[str, str], tmp_path: Path
) -> None:
    result = _run(segmented_store, tmp_path, versions["true"])

    metrics = result.metrics
    assert metrics["verified"] is True
    assert metrics["feature_names"] == list(SEGMENTED_MODEL_INPUTS)
    assert metrics["segmentation_version"] == versions["true"]
    assert tuple(metrics["model"]["inputs"]) == SEGMENTED_MODEL_INPUTS
    assert CUSTOMER_SEGMENT not in metrics["monotonicity_steps_by_feature"]
    exported = onnx.load(result.artifact_path)
    width = exported.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    assert width == len(SEGMENTED_MODEL_INPUTS)
    names = {p.key: p.value for p in exported.metadata_props}["feature_names"]
    assert json.loads(names) == list(SEGMENTED_MODEL_INPUTS)
    booster = lgb.Booster(model_file=str(result.artifact_path.parent / "lightgbm.txt"))
    gain = booster.feature_importance(importance_type="gain")
    assert gain[SEGMENTED_MODEL_INPUTS.index(CUSTOMER_SEGMENT)] > 0


def test_run_with_segments_beats_without(
    segmented_store: Path, versions: dict[str, str], tmp_path: Path
) -> None:
    with_segment = _run(segmented_store, tmp_path / "with", versions["true"])
    without = _run(segmented_store, tmp_path / "without", None)

    assert without.metrics["feature_names"] == list(MODEL_INPUTS)
    assert without.metrics["segmentation_version"] is None
    average_precision = with_segment.metrics["average_precision"]
    assert average_precision > without.metrics["average_precision"] + 0.05


def test_main_lookahead_segments_exit_2(
    segmented_store: Path,
    versions: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    later_start = FIRST_DAY - timedelta(days=1)
    args = ["--offline-store", str(segmented_store), "--no-register"]
    args += ["--report-dir", str(tmp_path / "r"), "--model-dir", str(tmp_path / "m")]
    args += ["--train-start", later_start.isoformat()]

    code = train.main([*args, "--segmentation-version", versions["true"]])

    assert code == train.EXIT_BAD_INPUT
    assert "looks ahead" in caplog.text
    assert not (tmp_path / "m").exists()


@pytest.mark.integration
def test_main_registers_segmentation_version(
    segmented_store: Path,
    versions: dict[str, str],
    tmp_path: Path,
    registry_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FRAUD_PG_DSN", registry_dsn)
    args = ["--offline-store", str(segmented_store)]
    args += ["--report-dir", str(tmp_path / "r"), "--model-dir", str(tmp_path / "m")]

    code = train.main([*args, "--segmentation-version", versions["true"]])

    version = capsys.readouterr().out.strip()
    with psycopg.connect(registry_dsn) as conn:
        row = conn.execute(
            "SELECT feature_names, segmentation_version FROM model_registry "
            "WHERE version = %s",
            (version,),
        ).fetchone()
    assert code == train.EXIT_OK
    assert row is not None
    assert row[0] == list(SEGMENTED_MODEL_INPUTS)
    assert row[1] == versions["true"]
