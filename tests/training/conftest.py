"""Fixtures of the training tests: offline stores and a model fit on the reference."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from fraudcore.settings import PlatformSettings
from tests.training.factories import epoch_ms, prequential_rows, store_frames
from training import model as classifier
from training.dataset import load_labelled_features
from training.evaluation import CHAPTER3_WINDOW, split_train_test
from training.folds import TEST_FOLDS, VALIDATION_FOLDS
from training.reference import REFERENCE_FILE, build_offline_store, write_offline_store

REFERENCE_PATH = PlatformSettings().data_dir / REFERENCE_FILE


@pytest.fixture(scope="session")
def reference_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Offline store written from the handbook's reference features file."""
    root = tmp_path_factory.mktemp("reference") / "offline"
    build_offline_store(REFERENCE_PATH, root)
    return root


@pytest.fixture(scope="session")
def reference_split(reference_store: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chapter-3 training and filtered test rows of the reference store."""
    return split_train_test(load_labelled_features(reference_store), CHAPTER3_WINDOW)


@pytest.fixture(scope="session")
def reference_model(
    reference_split: tuple[pd.DataFrame, pd.DataFrame],
) -> lgb.LGBMClassifier:
    """The job's classifier fit on the reference training week."""
    train, _ = reference_split
    return classifier.fit_classifier(
        classifier.model_matrix(train), train["fraud"].to_numpy()
    )


@pytest.fixture(scope="session")
def reference_session(reference_model: lgb.LGBMClassifier) -> ort.InferenceSession:
    """onnxruntime session on the ONNX export of ``reference_model``."""
    return classifier.onnx_session(classifier.to_onnx(reference_model))


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic offline store of 60 transactions a day over the chapter-3 days.

    Fraud is any amount above 270 plus 1% of the rest, so a model can learn it
    and every day is likely to have both classes.
    """
    rng = np.random.default_rng(7)
    rows: list[dict[str, object]] = []
    for offset in range(21):
        day = CHAPTER3_WINDOW.train_start + timedelta(days=offset)
        for index in range(60):
            amount = float(rng.uniform(0, 300))
            fraud = amount > 270 or rng.random() < 0.01
            rows.append(
                {
                    "transaction_id": str(len(rows)),
                    "customer_id": str(rng.integers(0, 2000)),
                    "terminal_id": str(rng.integers(0, 50)),
                    "event_ms": epoch_ms(day) + index * 60_000,
                    "fraud": int(fraud),
                    "TX_AMOUNT": amount,
                    "CUSTOMER_ID_NB_TX_1DAY_WINDOW": float(rng.integers(1, 5)),
                }
            )
    root = tmp_path_factory.mktemp("small") / "offline"
    write_offline_store(*store_frames(rows), root)
    return root


@pytest.fixture(scope="session")
def prequential_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic feature and label rows over every day of the prequential folds."""
    first = VALIDATION_FOLDS[0].window.train_start
    last = TEST_FOLDS[-1].window.test_dates()[-1]
    return store_frames(prequential_rows(first, (last - first).days + 1))


@pytest.fixture(scope="session")
def prequential_store(
    prequential_frames: tuple[pd.DataFrame, pd.DataFrame],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """Offline store of ``prequential_frames``."""
    root = tmp_path_factory.mktemp("prequential") / "offline"
    write_offline_store(*prequential_frames, root)
    return root
