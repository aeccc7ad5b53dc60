"""Tests of the training CLI: a full run, exit codes and the registration."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import onnx
import psycopg
import pytest

from fraudcore.features import MODEL_INPUTS
from fraudcore.settings import REPO_ROOT
from tests.training.factories import epoch_ms, store_frames
from training import train
from training.dataset import FEATURES_DIR, LABELS_DIR
from training.evaluation import CHAPTER3_WINDOW
from training.reference import write_offline_store
from training.registry import file_sha256, get_model


def _main(store: Path, tmp_path: Path, *extra: str) -> int:
    return train.main(
        [
            "--offline-store",
            str(store),
            "--report-dir",
            str(tmp_path / "reports"),
            "--model-dir",
            str(tmp_path / "models"),
            *extra,
        ]
    )


def _report(tmp_path: Path) -> dict:
    (path,) = (tmp_path / "reports").glob(f"*/{train.METRICS_FILE}")
    return json.loads(path.read_text())


def _store_of_days(root: Path, first_day: int, days: int, fraud: bool) -> Path:
    rows = []
    for offset in range(first_day, first_day + days):
        day = CHAPTER3_WINDOW.train_start + timedelta(days=offset)
        for index in range(4):
            rows.append(
                {
                    "transaction_id": f"{offset}-{index}",
                    "customer_id": f"c{index}",
                    "terminal_id": "t1",
                    "event_ms": epoch_ms(day),
                    "fraud": int(fraud and index == 0),
                }
            )
    write_offline_store(*store_frames(rows), root)
    return root


def test_main_reference_store_writes_report(
    reference_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _main(reference_store, tmp_path, "--no-register")

    version = capsys.readouterr().out.strip()
    report = _report(tmp_path)
    artifact = tmp_path / "models" / version / train.ONNX_FILE
    assert code == train.EXIT_OK
    assert report["version"] == version
    assert report["verified"] is True
    assert report["onnx_max_abs_diff"] <= 1e-5
    assert report["monotonicity_violations"] == 0
    assert report["train_rows"] == 67_240
    assert report["test_rows"] == 58_264
    assert report["training_seconds"] > 0
    assert 0.0 < report["block_threshold"] < 1.0
    for metric in ("auc_roc", "average_precision", "card_precision_at_100"):
        assert 0.0 < report[metric] <= 1.0
    assert version.endswith(file_sha256(artifact)[:8])
    onnx.checker.check_model(onnx.load(artifact))


def test_main_small_store_exits_0(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _main(small_store, tmp_path, "--no-register")

    assert code == train.EXIT_OK
    assert capsys.readouterr().out.strip() == _report(tmp_path)["version"]


def test_main_missing_store_exits_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = _main(tmp_path / "nowhere", tmp_path, "--no-register")

    assert code == train.EXIT_BAD_INPUT
    assert "features does not exist" in caplog.text


def test_main_empty_store_exits_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for folder in (FEATURES_DIR, LABELS_DIR):
        partition = tmp_path / "store" / folder / "dt=2018-07-25"
        partition.mkdir(parents=True)
        (partition / "_SUCCESS").touch()

    code = _main(tmp_path / "store", tmp_path, "--no-register")

    assert code == train.EXIT_BAD_INPUT
    assert "contains no rows" in caplog.text


def test_main_missing_test_week_exits_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store_of_days(tmp_path / "store", first_day=0, days=7, fraud=True)

    code = _main(store, tmp_path, "--no-register")

    assert code == train.EXIT_BAD_INPUT
    assert "no labelled transactions in the test period" in caplog.text
    assert not (tmp_path / "models").exists()


def test_main_training_week_without_fraud_exits_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store_of_days(tmp_path / "store", first_day=0, days=21, fraud=False)

    code = _main(store, tmp_path, "--no-register")

    assert code == train.EXIT_BAD_INPUT
    assert "training labels must contain both classes" in caplog.text


def test_main_other_train_start_without_data_exits_2(
    small_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = _main(small_store, tmp_path, "--no-register", "--train-start", "2019-01-01")

    assert code == train.EXIT_BAD_INPUT
    assert "training period 2019-01-01..2019-01-07" in caplog.text


def test_main_parity_failure_exits_1(
    small_store: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = train.classifier.to_onnx
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 300, size=(500, len(MODEL_INPUTS))).astype(np.float32)
    y = (x[:, 0] > 150).astype(np.int64)
    other = train.classifier.fit_classifier(x, y, train.classifier.ModelConfig(5))

    def export_other_model(model: object, inputs: object) -> onnx.ModelProto:
        return exported(other)

    monkeypatch.setattr(train.classifier, "to_onnx", export_other_model)

    code = _main(small_store, tmp_path, "--no-register")

    report = _report(tmp_path)
    assert code == train.EXIT_FAILED
    assert "must agree within 1e-05" in caplog.text
    assert report["verified"] is False
    assert report["onnx_max_abs_diff"] > 1e-5


def test_cli_bad_input_exit_code(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "--offline-store",
            str(tmp_path / "nowhere"),
            "--report-dir",
            str(tmp_path / "reports"),
            "--model-dir",
            str(tmp_path / "models"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert "does not exist" in completed.stderr


@pytest.mark.integration
def test_main_registers_candidate_model(
    small_store: Path,
    tmp_path: Path,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FRAUD_PG_DSN", pg_dsn)

    code = _main(small_store, tmp_path)

    version = capsys.readouterr().out.strip()
    with psycopg.connect(pg_dsn) as conn:
        record = get_model(conn, version)
    report = _report(tmp_path)
    assert code == train.EXIT_OK
    assert record.stage == "candidate"
    assert record.feature_names == MODEL_INPUTS
    assert record.threshold == report["block_threshold"]
    assert record.metrics == report
    assert record.artifact_sha256 == file_sha256(Path(record.artifact_path))


def test_main_unreachable_registry_exits_1(
    small_store: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Port 9 (discard) on the loopback interface: nothing listens there.
    monkeypatch.setenv("FRAUD_PG_DSN", "postgresql://fraud@127.0.0.1:9/fraud")

    code = _main(small_store, tmp_path)

    assert code == train.EXIT_FAILED
    assert "registering the model failed" in caplog.text
    assert _report(tmp_path)["verified"] is True
