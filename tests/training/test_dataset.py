"""Tests of loading the offline store."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fraudcore.features import MODEL_INPUTS
from tests.training.factories import epoch_ms, store_frames
from training.dataset import (
    FEATURES_DIR,
    LABELS_DIR,
    load_features,
    load_labelled_features,
    load_labels,
)
from training.errors import InputDataError
from training.reference import write_offline_store

DAY = date(2018, 7, 25)


def _row(transaction_id: str, fraud: int = 0, **values: object) -> dict[str, object]:
    return {
        "transaction_id": transaction_id,
        "customer_id": "c1",
        "terminal_id": "t1",
        "event_ms": epoch_ms(DAY),
        "fraud": fraud,
    } | values


def _write(root: Path, rows: list[dict[str, object]]) -> Path:
    write_offline_store(*store_frames(rows), root)
    return root


def test_load_labelled_features_joins_labels(tmp_path: Path) -> None:
    features, labels = store_frames([_row("1", fraud=1), _row("2"), _row("3")])
    # Transaction 3 has no label yet and label 4 has no feature row.
    orphan = labels.iloc[[0]].assign(transaction_id="4")
    write_offline_store(
        features, pd.concat([labels.iloc[:2], orphan]), tmp_path / "store"
    )

    joined = load_labelled_features(tmp_path / "store")

    assert joined["transaction_id"].tolist() == ["1", "2"]
    assert joined["fraud"].tolist() == [1, 0]
    assert set(joined.columns) >= {"label_ms", "event_ms", *MODEL_INPUTS}


def test_load_labelled_features_column_types(tmp_path: Path) -> None:
    joined = load_labelled_features(_write(tmp_path, [_row("1", TX_AMOUNT=5.5)]))

    assert joined["event_ms"].dtype == "int64"
    assert joined["fraud"].dtype == "int64"
    assert all(joined[name].dtype == "float64" for name in MODEL_INPUTS)
    assert joined.loc[0, "TX_AMOUNT"] == 5.5


def test_load_labelled_features_transaction_order(tmp_path: Path) -> None:
    later = epoch_ms(DAY, hour=13)
    rows = [_row("10"), _row("9"), _row("1", event_ms=later)]

    joined = load_labelled_features(_write(tmp_path, rows))

    # Same event time: "9" sorts before "10" as a number would.
    assert joined["transaction_id"].tolist() == ["9", "10", "1"]


def test_load_features_skips_marker_and_hidden_files(tmp_path: Path) -> None:
    root = _write(tmp_path, [_row("1")])
    partition = root / FEATURES_DIR / "dt=2018-07-25"
    (partition / "_SUCCESS").write_text("not parquet")
    (partition / ".part-00001.crc").write_text("not parquet")
    (partition / "_temporary").mkdir()
    (partition / "_temporary" / "part-00009").write_text("not parquet")

    assert load_features(root)["transaction_id"].tolist() == ["1"]


def test_load_features_reads_every_partition(tmp_path: Path) -> None:
    rows = [_row("1"), _row("2", event_ms=epoch_ms(date(2018, 7, 26)))]
    root = _write(tmp_path, rows)

    assert sorted(p.name for p in (root / FEATURES_DIR).iterdir()) == [
        "dt=2018-07-25",
        "dt=2018-07-26",
    ]
    assert sorted(load_features(root)["transaction_id"]) == ["1", "2"]


def test_load_features_drops_repeated_rows(tmp_path: Path) -> None:
    features = load_features(_write(tmp_path, [_row("1"), _row("1"), _row("2")]))

    assert sorted(features["transaction_id"]) == ["1", "2"]


def test_load_labels_keeps_latest_label(tmp_path: Path) -> None:
    features, labels = store_frames([_row("1", fraud=0)])
    revised = labels.assign(label_ms=labels["label_ms"] + 1, fraud=1)
    write_offline_store(features, pd.concat([revised, labels]), tmp_path)

    loaded = load_labels(tmp_path)

    assert loaded["fraud"].tolist() == [1]


def test_load_features_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="features does not exist"):
        load_features(tmp_path / "nowhere")


def test_load_features_marker_only_raises(tmp_path: Path) -> None:
    partition = tmp_path / FEATURES_DIR / "dt=2018-07-25"
    partition.mkdir(parents=True)
    (partition / "_SUCCESS").touch()

    with pytest.raises(InputDataError, match="contains no rows"):
        load_features(tmp_path)


def test_load_features_missing_column_raises(tmp_path: Path) -> None:
    features, _ = store_frames([_row("1")])
    partition = tmp_path / FEATURES_DIR / "dt=2018-07-25"
    partition.mkdir(parents=True)
    table = pa.Table.from_pandas(features.drop(columns="TX_AMOUNT"))
    pq.write_table(table, partition / "part-00000")

    with pytest.raises(InputDataError, match=r"lack columns \['TX_AMOUNT'\]"):
        load_features(tmp_path)


def test_load_features_corrupt_part_file_raises(tmp_path: Path) -> None:
    partition = tmp_path / FEATURES_DIR / "dt=2018-07-25"
    partition.mkdir(parents=True)
    (partition / "part-00000").write_bytes(b"not parquet at all")

    with pytest.raises(InputDataError, match="could not read the Parquet part"):
        load_features(tmp_path)


def test_load_features_missing_value_raises(tmp_path: Path) -> None:
    features, labels = store_frames([_row("1"), _row("2")])
    features.loc[1, "TX_AMOUNT"] = float("nan")
    write_offline_store(features, labels, tmp_path)

    with pytest.raises(InputDataError, match="'TX_AMOUNT' has 1 missing values"):
        load_features(tmp_path)


def test_load_labels_invalid_fraud_raises(tmp_path: Path) -> None:
    root = _write(tmp_path, [_row("1", fraud=2)])

    with pytest.raises(InputDataError, match="must be 0 or 1, got 2 in 1 rows"):
        load_labels(root)


def test_load_labelled_features_no_match_raises(tmp_path: Path) -> None:
    features, labels = store_frames([_row("1")])
    write_offline_store(features, labels.assign(transaction_id="2"), tmp_path)

    with pytest.raises(InputDataError, match="no transaction with both"):
        load_labelled_features(tmp_path)


def test_load_labels_missing_folder_raises(tmp_path: Path) -> None:
    _write(tmp_path, [_row("1")])
    for path in (tmp_path / LABELS_DIR).rglob("*"):
        if path.is_file():
            path.unlink()

    with pytest.raises(InputDataError, match="labels contains no rows"):
        load_labels(tmp_path)
