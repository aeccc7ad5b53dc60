"""Tests of the segmentation job end to end: CSV mode, profiles and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
import redis

from fraudcore.segments import SEGMENT_PG_SQL, segment_of
from fraudcore.settings import REPO_ROOT, PlatformSettings
from tests.training.factories import store_frames
from tests.training.segmentation.factories import (
    FAST_CONFIG,
    blob_table,
    offline_rows,
)
from training.reference import write_offline_store
from training.segmentation import job, load_segments
from training.segmentation.artifacts import OUTPUT_FILE, REPORT_FILE
from training.segmentation.plots import (
    ANOVA_FILE,
    METRIC_FILES,
    PCA_FILE,
    SIZES_FILE,
)
from training.segmentation.publish import read_profiles_end

FAST_ARGS = ["--k-max", "4"]
# Tests that are not about the sweep itself skip the slower Gaussian mixture.
QUICK_METHODS = ["--methods", "kmeans", "ward"]


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _mixed_table() -> pd.DataFrame:
    table = blob_table(rows=90, centers=3)
    table.insert(0, "row_id", [f"r{i}" for i in range(90)])
    table["colour"] = "red"
    table["constant"] = 1.5
    table["empty"] = np.nan
    table.loc[::30, "x1"] = np.nan
    return table


def _run(
    tmp_path: Path, *args: str, quick: bool = True
) -> tuple[int, dict[str, Any] | None]:
    report_dir = tmp_path / "report"
    methods = QUICK_METHODS if quick else []
    code = job.main([*args, "--report-dir", str(report_dir), *FAST_ARGS, *methods])
    path = report_dir / REPORT_FILE
    report = json.loads(path.read_text()) if path.exists() else None
    return code, report


def test_csv_mode_writes_every_artifact(tmp_path: Path) -> None:
    csv = _write_csv(_mixed_table(), tmp_path / "input.csv")

    code, report = _run(
        tmp_path, "--csv", str(csv), "--id-column", "row_id", quick=False
    )

    assert code == job.EXIT_OK
    assert report is not None
    report_dir = tmp_path / "report"
    for name in [*METRIC_FILES.values(), PCA_FILE, SIZES_FILE, ANOVA_FILE]:
        assert (report_dir / name).stat().st_size > 0, name
    assert report["choice"]["k"] == 3
    assert report["publication"]["published"] is False
    assert len(report["candidates"]) == 9
    assert set(report["run_seconds"]) >= {"load", "sweep", "total"}
    assert report["notes"] == ["No sampling: every step used every row."]


def test_csv_mode_reports_preprocessing(tmp_path: Path) -> None:
    csv = _write_csv(_mixed_table(), tmp_path / "input.csv")

    _, report = _run(tmp_path, "--csv", str(csv), "--id-column", "row_id")

    assert report is not None
    steps = report["preprocessing"]
    assert steps["dropped_non_numeric"] == {"colour": "object"}
    assert steps["dropped_all_missing"] == ["empty"]
    assert steps["dropped_constant"] == {"constant": 1.5}
    assert steps["imputed_with_median"]["x1"]["missing"] == 3
    assert steps["features"] == ["x0", "x1", "x2"]


def test_csv_mode_output_rows(tmp_path: Path) -> None:
    table = _mixed_table()
    csv = _write_csv(table, tmp_path / "input.csv")

    _, report = _run(tmp_path, "--csv", str(csv), "--id-column", "row_id")

    assert report is not None
    output = pd.read_csv(tmp_path / "report" / OUTPUT_FILE)
    assert list(output.columns) == [*table.columns, "cluster"]
    assert output["row_id"].tolist() == table["row_id"].tolist()
    sizes = output["cluster"].value_counts().sort_index()
    assert {str(k): int(v) for k, v in sizes.items()} == report["cluster_sizes"]


def test_csv_mode_names_columns_as_they_come(tmp_path: Path) -> None:
    table = blob_table(rows=60, centers=2)
    table.columns = ["Amount (EUR)", "cluster", "3"]
    csv = _write_csv(table, tmp_path / "input.csv")

    _, report = _run(tmp_path, "--csv", str(csv))

    assert report is not None
    assert report["preprocessing"]["features"] == ["Amount (EUR)", "cluster", "3"]
    assert report["artifacts"]["cluster_column"] == "cluster_1"
    means = report["cluster_means_of_top_features"]["0"]
    assert set(means) <= {"Amount (EUR)", "cluster", "3"}


def test_csv_mode_top_features_and_means(tmp_path: Path) -> None:
    csv = _write_csv(_mixed_table(), tmp_path / "input.csv")

    _, report = _run(tmp_path, "--csv", str(csv), "--id-column", "row_id")

    assert report is not None
    top = report["top_features"]
    assert [row["feature"] for row in top] == sorted(
        ["x0", "x1", "x2"],
        key=lambda n: -next(r["f_value"] for r in top if r["feature"] == n),
    )
    assert all(row["f_value"] > 0 for row in top)
    assert set(report["cluster_means_of_top_features"]) == {"all", "0", "1", "2"}
    assert len(report["pca"]["explained_variance_ratio"]) == 2


def test_csv_mode_is_deterministic(tmp_path: Path) -> None:
    csv = _write_csv(_mixed_table(), tmp_path / "input.csv")

    _, first = _run(tmp_path / "a", "--csv", str(csv), quick=False)
    _, second = _run(tmp_path / "b", "--csv", str(csv), quick=False)

    assert first is not None and second is not None
    assert first["choice"] == second["choice"]
    labels_a = pd.read_csv(tmp_path / "a" / "report" / OUTPUT_FILE)["cluster"]
    labels_b = pd.read_csv(tmp_path / "b" / "report" / OUTPUT_FILE)["cluster"]
    assert labels_a.tolist() == labels_b.tolist()
    # Same input and parameters: same hash part, a new time part.
    assert first["segmentation_version"] != second["segmentation_version"]
    assert first["segmentation_version"][-12:] == second["segmentation_version"][-12:]


def test_csv_mode_duplicate_rows(tmp_path: Path) -> None:
    points = pd.DataFrame({"a": [0.0, 5.0, 0.0], "b": [0.0, 0.0, 5.0]})
    csv = _write_csv(pd.concat([points] * 10, ignore_index=True), tmp_path / "d.csv")

    code, report = _run(tmp_path, "--csv", str(csv))

    assert code == job.EXIT_OK
    assert report is not None
    assert report["choice"]["k"] == 3
    skipped = {(row["method"], row["k"]) for row in report["not_ranked"]}
    assert skipped == {("kmeans", 4), ("ward", 4)}
    reasons = {row["reason"] for row in report["not_ranked"]}
    assert reasons == {"k=4 needs at least 4 distinct rows, the input has 3"}


def test_csv_mode_too_few_rows_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = _write_csv(
        pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 5.0]}), tmp_path / "t.csv"
    )

    code, report = _run(tmp_path, "--csv", str(csv))

    assert code == job.EXIT_BAD_INPUT
    assert report is None
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: no clustering with k=2..4 could be scored on 2")
    assert message.count(". ") == 0
    assert message.endswith(".")


def test_csv_mode_single_point_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    same = pd.DataFrame({"a": [1.0] * 20, "b": [2.0] * 20})
    csv = _write_csv(same, tmp_path / "same.csv")

    code, _ = _run(tmp_path, "--csv", str(csv))

    assert code == job.EXIT_BAD_INPUT
    assert "no numeric column that varies" in capsys.readouterr().err


def test_csv_mode_text_only_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = pd.DataFrame({"name": ["a", "b", "c", "d"], "empty": [np.nan] * 4})
    csv = _write_csv(text, tmp_path / "text.csv")

    code, _ = _run(tmp_path, "--csv", str(csv))

    assert code == job.EXIT_BAD_INPUT
    assert "no numeric column that varies" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("", "is empty"),
    ],
)
def test_csv_mode_unreadable_file_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    message: str,
) -> None:
    csv = tmp_path / "input.csv"
    if content is not None:
        csv.write_text(content)

    code, _ = _run(tmp_path, "--csv", str(csv))

    assert code == job.EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_csv_publish_needs_id_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = _write_csv(blob_table(rows=30), tmp_path / "input.csv")

    code, _ = _run(tmp_path, "--csv", str(csv), "--publish")

    assert code == job.EXIT_BAD_INPUT
    assert "needs --id-column" in capsys.readouterr().err


def test_invalid_k_range_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = _write_csv(blob_table(rows=30), tmp_path / "input.csv")

    code = job.main(["--csv", str(csv), "--k-min", "5", "--k-max", "3"])

    assert code == job.EXIT_BAD_INPUT
    assert "k_min <= k_max" in capsys.readouterr().err


def test_profiles_mode_publishes_offline(tmp_path: Path) -> None:
    store = tmp_path / "offline"
    write_offline_store(*store_frames(offline_rows()), store)

    code, report = _run(tmp_path, "--offline-store", str(store), "--offline-only")

    assert code == job.EXIT_OK
    assert report is not None
    assert report["source"]["kind"] == "customer_profiles"
    assert report["publication"]["published"] is True
    segments = load_segments(store, report["segmentation_version"])
    output = pd.read_csv(tmp_path / "report" / OUTPUT_FILE, dtype={"customer_id": str})
    assert segments["customer_id"].tolist() == output["customer_id"].tolist()
    assert segments["segment"].tolist() == output["cluster"].tolist()
    # Frequent small buyers (even ids) and rare large buyers (odd ids) never
    # share a segment.
    parity = segments["customer_id"].astype(int) % 2
    assert (parity.groupby(segments["segment"]).nunique() == 1).all()


def test_profiles_mode_end_day_leaves_later_rows_out(tmp_path: Path) -> None:
    store = tmp_path / "offline"
    write_offline_store(*store_frames(offline_rows(days=7)), store)

    _, report = _run(
        tmp_path,
        "--offline-store",
        str(store),
        "--end",
        "2018-07-29",
        "--no-publish",
    )

    assert report is not None
    assert report["source"]["end_exclusive"] == "2018-07-29"
    assert report["publication"]["published"] is False
    assert not (store / "segments").exists()


def test_profiles_mode_records_end_day(tmp_path: Path) -> None:
    store = tmp_path / "offline"
    write_offline_store(*store_frames(offline_rows(days=7)), store)

    code, report = _run(
        tmp_path, "--offline-store", str(store), "--end", "2018-07-29", "--offline-only"
    )
    whole_code, whole = _run(tmp_path, "--offline-store", str(store), "--offline-only")

    assert code == job.EXIT_OK
    assert whole_code == job.EXIT_OK
    assert report is not None
    assert whole is not None
    cut = read_profiles_end(store, report["segmentation_version"])
    assert cut == date(2018, 7, 29)
    assert read_profiles_end(store, whole["segmentation_version"]) is None


@pytest.mark.integration
def test_job_publishes_to_every_store(
    tmp_path: Path, test_settings: PlatformSettings, pg_dsn: str
) -> None:
    store = tmp_path / "offline"
    write_offline_store(*store_frames(offline_rows()), store)
    settings = test_settings.model_copy(
        update={"redis_prefix": f"{test_settings.redis_prefix}:job"}
    )
    options = job.JobOptions(
        report_dir=tmp_path / "report",
        offline_store=store,
        config=replace(FAST_CONFIG, methods=("kmeans",)),
        publish=True,
        settings=settings,
    )

    result = job.run(options)

    publication = result.report["publication"]
    assert result.published
    assert publication["postgres_rows"] == 40
    assert publication["redis_rows"] == 40
    offline = load_segments(store, result.version).set_index("customer_id")
    client = redis.Redis.from_url(settings.redis_url)
    with client, psycopg.connect(pg_dsn) as conn:
        for customer_id in ("0", "1", "39"):
            expected = int(offline.loc[customer_id, "segment"])
            online = segment_of(
                client, settings.redis_prefix, customer_id, result.version
            )
            durable = conn.execute(SEGMENT_PG_SQL, (customer_id, result.version))
            assert online == expected
            assert durable.fetchone() == (expected,)


def test_job_reports_failed_publication(tmp_path: Path) -> None:
    store = tmp_path / "offline"
    write_offline_store(*store_frames(offline_rows()), store)
    # Nothing listens on port 9 of the loopback address.
    settings = PlatformSettings(pg_dsn="postgresql://fraud@127.0.0.1:9/fraud")
    options = job.JobOptions(
        report_dir=tmp_path / "report",
        offline_store=store,
        config=replace(FAST_CONFIG, methods=("kmeans",)),
        publish=True,
        settings=settings,
    )

    result = job.run(options)

    publication = json.loads(result.report_path.read_text())["publication"]
    assert not result.published
    assert publication["published"] is False
    assert publication["error"].startswith("OperationalError")
    assert (store / "segments" / f"version={result.version}").is_dir()


def test_module_entry_point_exit_code(tmp_path: Path) -> None:
    csv = _write_csv(pd.DataFrame({"a": [1.0, 2.0]}), tmp_path / "tiny.csv")

    completed = subprocess.run(
        [sys.executable, "-m", "training.segmentation", "--csv", str(csv)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 2
    assert "error: no clustering with k=2..10 could be scored" in completed.stderr
