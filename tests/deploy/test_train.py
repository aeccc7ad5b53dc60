"""Tests of make train's set-up: the offline store's coverage and its refresh."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest

from deploy import train
from fraudcore.settings import PlatformSettings
from tests.training.factories import prequential_rows, store_frames
from training.dataset import load_labelled_features
from training.reference import write_offline_store


def _store(root: Path, first: date, days: int) -> Path:
    write_offline_store(*store_frames(prequential_rows(first, days, per_day=5)), root)
    return root


def test_missing_days_of_covered_store(tmp_path: Path) -> None:
    store = _store(tmp_path / "offline", date(2018, 7, 1), 10)

    assert train.missing_days(store, date(2018, 7, 1), date(2018, 7, 10)) == []


def test_missing_days_lists_uncovered_days(tmp_path: Path) -> None:
    store = _store(tmp_path / "offline", date(2018, 7, 3), 5)

    missing = train.missing_days(store, date(2018, 7, 1), date(2018, 7, 9))

    assert missing == [
        date(2018, 7, 1),
        date(2018, 7, 2),
        date(2018, 7, 8),
        date(2018, 7, 9),
    ]


def test_missing_days_needs_labels(tmp_path: Path) -> None:
    features, labels = store_frames(prequential_rows(date(2018, 7, 1), 4, per_day=5))
    last_day = labels["transaction_ms"] >= labels["transaction_ms"].max() - 3_600_000
    store = tmp_path / "offline"
    write_offline_store(features, labels[~last_day], store)

    missing = train.missing_days(store, date(2018, 7, 1), date(2018, 7, 4))

    assert missing == [date(2018, 7, 4)]


def test_missing_days_finds_dropped_feature_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The feature job writes no row for an event it rejects as late, while the
    # event's label still reaches the store.
    features, labels = store_frames(prequential_rows(date(2018, 7, 1), 3, per_day=5))
    dropped = features["transaction_id"].isin(["1-0", "1-3"])
    store = tmp_path / "offline"
    write_offline_store(features[~dropped], labels, store)

    missing = train.missing_days(store, date(2018, 7, 1), date(2018, 7, 3))

    assert missing == [date(2018, 7, 2)]
    assert "2018-07-02: 2 of 5 labelled transactions have no feature row" in (
        caplog.text
    )


def test_missing_days_of_absent_store(tmp_path: Path) -> None:
    missing = train.missing_days(tmp_path / "none", date(2018, 7, 1), date(2018, 7, 2))

    assert missing == [date(2018, 7, 1), date(2018, 7, 2)]


def _scratch_names(settings: PlatformSettings) -> tuple[set[str], set[str], set[str]]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topics = {t for t in admin.list_topics(timeout=10).topics if t.startswith("train-")}
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'train\\_%'"
        ).fetchall()
    refresh = settings.state_dir / train.REFRESH_DIR
    folders = {p.name for p in refresh.iterdir()} if refresh.exists() else set()
    return topics, {row[0] for row in rows}, folders


@pytest.mark.integration
@pytest.mark.slow
def test_refresh_fills_store_and_cleans_up(
    test_settings: PlatformSettings, tmp_path: Path
) -> None:
    path = test_settings.data_dir / "transactions.parquet"
    if not path.exists():
        pytest.skip(f"the dataset {path} is not available")
    settings = test_settings.model_copy(update={"offline_store": tmp_path / "offline"})
    first = date(2018, 7, 1)
    last = first + timedelta(days=1)
    before = _scratch_names(settings)

    train.refresh_offline_store(settings, first, last)

    assert train.missing_days(settings.offline_store, first, last) == []
    labelled = load_labelled_features(settings.offline_store)
    assert labelled["transaction_id"].is_unique
    assert len(labelled) > 15_000
    # Other runs may come and go meanwhile, so only new names count.
    topics, databases, folders = _scratch_names(settings)
    assert topics <= before[0]
    assert databases <= before[1]
    assert folders <= before[2]
