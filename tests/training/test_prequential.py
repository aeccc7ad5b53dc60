"""Tests of the prequential job: a full run, its report, exit codes, registration."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest

from fraudcore.features import MODEL_INPUTS
from fraudcore.segments import SEGMENTED_MODEL_INPUTS
from fraudcore.settings import PlatformSettings
from tests.training.factories import publish_offline_segments
from training import model as classifier
from training import prequential, report
from training.dataset import FEATURES_DIR
from training.folds import TEST_FOLDS, VALIDATION_FOLDS
from training.registry import file_sha256, get_model

PUBLISHED = PlatformSettings().data_dir / prequential.PUBLISHED_RESULTS_FILE


def _main(store: Path, tmp_path: Path, *extra: str) -> int:
    return prequential.main(
        [
            "--offline-store",
            str(store),
            "--report-dir",
            str(tmp_path / "reports"),
            "--model-dir",
            str(tmp_path / "models"),
            "--trials",
            "2",
            *extra,
        ]
    )


def _report_folder(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "reports").iterdir()
    return folder


@pytest.fixture(scope="module")
def finished_run(
    prequential_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, Path, dict[str, Any]]:
    """Exit code, report folder and metrics of one run without registration."""
    tmp_path = tmp_path_factory.mktemp("run")
    code = _main(prequential_store, tmp_path, "--no-register")
    folder = _report_folder(tmp_path)
    return code, folder, json.loads((folder / report.METRICS_FILE).read_text())


def test_run_succeeds(finished_run: tuple[int, Path, dict[str, Any]]) -> None:
    code, folder, metrics = finished_run

    assert code == prequential.EXIT_OK
    assert metrics["version"] == folder.name
    assert metrics["verified"] is True
    assert metrics["monotonicity_violations"] == 0
    assert metrics["onnx_max_abs_diff"] <= classifier.PARITY_TOLERANCE
    assert metrics["final_model_fold"] == TEST_FOLDS[-1].name


def test_run_reports_every_fold(
    finished_run: tuple[int, Path, dict[str, Any]],
) -> None:
    _, _, metrics = finished_run

    assert [f["fold"] for f in metrics["test_folds"]] == [f.name for f in TEST_FOLDS]
    assert [f["fold"] for f in metrics["validation_folds"]] == [
        f.name for f in VALIDATION_FOLDS
    ]
    for name in prequential.METRIC_NAMES:
        values = [fold[name] for fold in metrics["test_folds"]]
        assert metrics["test_summary"][name]["mean"] == pytest.approx(np.mean(values))
        assert metrics["test_summary"][name]["std"] == pytest.approx(
            np.std(values, ddof=1)
        )
    assert metrics["test_folds"][0]["test"] == ["2018-08-08", "2018-08-14"]
    assert metrics["test_folds"][-1]["test"] == ["2018-08-29", "2018-09-04"]


def test_run_records_search_and_machine(
    finished_run: tuple[int, Path, dict[str, Any]],
) -> None:
    _, _, metrics = finished_run

    assert metrics["search"]["trials"] == 2
    assert len(metrics["search"]["history"]) == 2
    best = metrics["search"]["history"][metrics["search"]["best_trial"]]
    for name, value in best["params"].items():
        assert metrics["hyperparameters"][name] == value
    assert metrics["hyperparameters"]["constraints"] == classifier.MONOTONE_CONSTRAINTS
    assert metrics["machine"]["cores"] >= 1
    assert metrics["machine"]["cpu"]
    assert metrics["training_seconds"]["search"] > 0
    assert metrics["contract_expectations_passed"] > 0
    assert metrics["feature_names"] == list(MODEL_INPUTS)


def test_run_writes_report_and_figures(
    finished_run: tuple[int, Path, dict[str, Any]],
) -> None:
    _, folder, metrics = finished_run

    for name in (
        report.PR_FIGURE,
        report.ROC_FIGURE,
        report.CALIBRATION_FIGURE,
        report.IMPORTANCE_FIGURE,
    ):
        assert (folder / name).read_bytes().startswith(b"\x89PNG")
    text = (folder / report.REPORT_FILE).read_text()
    assert f"# Training report {metrics['version']}" in text
    assert "| test-4 | 2018-08-15..2018-08-21 | 2018-08-29..2018-09-04 |" in text
    assert f"![ROC]({report.ROC_FIGURE})" in text
    assert "Product target on the test-fold means" in text


@pytest.mark.skipif(not PUBLISHED.exists(), reason="published results not available")
def test_report_shows_published_rows(
    finished_run: tuple[int, Path, dict[str, Any]],
) -> None:
    _, folder, metrics = finished_run
    text = (folder / report.REPORT_FILE).read_text()

    (xgboost,) = [
        row
        for row in metrics["published"]
        if row["model"] == "XGBoost"
        and row["selection"] == "best on validation"
        and row["experiment"] == "ch5_prequential_4fold"
    ]
    assert xgboost["auc_roc"] == {"mean": 0.869, "std": 0.01, "parameters": "100/0.3/3"}
    assert xgboost["average_precision"]["mean"] == 0.687
    assert xgboost["card_precision_at_100"]["parameters"] == "25/0.3/3"
    assert (
        "| ch5_prequential_4fold | XGBoost | best on validation | 0.869 ± 0.010 "
        "(100/0.3/3) | 0.687 ± 0.010 (50/0.3/3) | 0.303 ± 0.010 (25/0.3/3) |"
    ) in text
    assert "| ch7_prequential_4fold | LSTM | best on validation | 0.876 ± 0.020 |" in (
        text
    )
    assert "ch3_baseline_single_split" not in text


def test_run_writes_verified_onnx(
    finished_run: tuple[int, Path, dict[str, Any]],
    prequential_frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    _, folder, metrics = finished_run
    model_file = folder.parent.parent / "models" / metrics["version"] / "model.onnx"
    session = classifier.onnx_session(model_file.read_bytes())
    features, _ = prequential_frames

    probability = classifier.onnx_fraud_probability(
        session, classifier.model_matrix(features.head(50))
    )

    assert probability.shape == (50,)
    assert ((probability >= 0) & (probability <= 1)).all()


def test_corrupted_store_fails_contract(
    prequential_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "offline"
    shutil.copytree(prequential_store, store)
    day = store / FEATURES_DIR / "dt=2018-07-26"
    (part,) = day.glob("part-*")
    frame = pd.read_parquet(part)
    frame.loc[frame.index[:4], "TERMINAL_ID_RISK_7DAY_WINDOW"] = 7.0
    frame.to_parquet(part, index=False)

    code = _main(store, tmp_path, "--no-register")

    assert code == prequential.EXIT_CONTRACT
    assert "the data contract failed, nothing was fit" in caplog.text
    assert "training set test-1" in caplog.text
    assert "'TERMINAL_ID_RISK_7DAY_WINDOW'" in caplog.text
    assert "4 of" in caplog.text
    assert not (tmp_path / "models").exists()
    assert not (tmp_path / "reports").exists()


def test_store_without_test_days_is_bad_input(
    prequential_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "offline"
    shutil.copytree(prequential_store, store)
    for folder in (store / FEATURES_DIR).glob("dt=2018-09-0*"):
        shutil.rmtree(folder)

    assert _main(store, tmp_path, "--no-register") == prequential.EXIT_BAD_INPUT
    assert "test-4: no transactions with a label on 2018-09-01" in caplog.text


def test_monotonicity_violation_fails_run(
    prequential_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def violating(*args: object, **kwargs: object) -> classifier.MonotonicityReport:
        return classifier.MonotonicityReport({"TX_AMOUNT": 3}, {"TX_AMOUNT": 100})

    monkeypatch.setattr(classifier, "count_monotonicity_violations", violating)

    code = _main(prequential_store, tmp_path, "--no-register")

    assert code == prequential.EXIT_FAILED
    metrics = json.loads((_report_folder(tmp_path) / report.METRICS_FILE).read_text())
    assert metrics["verified"] is False
    assert "3 violations" in metrics["verification_error"]


@pytest.mark.integration
def test_run_registers_final_model(
    prequential_store: Path,
    tmp_path: Path,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAUD_PG_DSN", pg_dsn)

    code = _main(prequential_store, tmp_path)

    assert code == prequential.EXIT_OK
    metrics = json.loads((_report_folder(tmp_path) / report.METRICS_FILE).read_text())
    with psycopg.connect(pg_dsn) as conn:
        record = get_model(conn, metrics["version"])
    assert record.stage == "candidate"
    assert record.feature_names == MODEL_INPUTS
    assert record.threshold == pytest.approx(metrics["block_threshold"])
    assert record.artifact_sha256 == file_sha256(Path(record.artifact_path))
    assert record.metrics["test_summary"] == metrics["test_summary"]


def test_run_with_segments_uses_them_everywhere(
    prequential_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "offline"
    shutil.copytree(prequential_store, store)
    first_day = VALIDATION_FOLDS[0].window.train_start
    created = datetime(2018, 6, 19, tzinfo=UTC)
    segments = {str(customer): customer % 4 for customer in range(3000)}
    version = publish_offline_segments(store, segments, created, first_day)

    code = _main(store, tmp_path, "--no-register", "--segmentation-version", "latest")

    assert code == prequential.EXIT_OK
    folder = _report_folder(tmp_path)
    metrics = json.loads((folder / report.METRICS_FILE).read_text())
    assert metrics["segmentation_version"] == version
    assert metrics["feature_names"] == list(SEGMENTED_MODEL_INPUTS)
    assert metrics["hyperparameters"]["inputs"] == list(SEGMENTED_MODEL_INPUTS)
    assert metrics["verified"] is True
    assert (folder / report.IMPORTANCE_FIGURE).is_file()


def test_run_with_lookahead_segments_is_bad_input(
    prequential_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "offline"
    shutil.copytree(prequential_store, store)
    # The profiles reach the first validation fold's training week.
    profiles_end = VALIDATION_FOLDS[0].window.train_start + timedelta(days=1)
    created = datetime(2018, 6, 21, tzinfo=UTC)
    publish_offline_segments(store, {"0": 1}, created, profiles_end)

    code = _main(store, tmp_path, "--no-register", "--segmentation-version", "latest")

    assert code == prequential.EXIT_BAD_INPUT
    assert "looks ahead" in caplog.text
